"""The rendered plugin exposes its telemetry and labels its node: metrics port, scrape
annotations, pod-resources mount, node-label RBAC (least: nodes get, patch), the
Prometheus Operator PodMonitor, `render dashboard`, and the bootstrap options."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from test_alerts import promtool

from gpunode.bootstrap.core.kube.cluster_plan import ClusterSettings, NodeTarget, plan_node
from gpunode.bootstrap.core.kube.telemetry import PANELS, grafana_dashboard

DEBIAN_LIB = "/usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.535.261.03"


def render(*args: str) -> tuple[int, list[dict[str, Any]], str]:
    result = subprocess.run(
        [sys.executable, "-m", "gpunode.bootstrap.cli.main", "render", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    docs = [d for d in yaml.safe_load_all(result.stdout) if d] if result.returncode == 0 else []
    return result.returncode, docs, result.stderr


def kinds(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in docs}


def container(ds: dict[str, Any]) -> dict[str, Any]:
    (only,) = ds["spec"]["template"]["spec"]["containers"]
    return dict(only)


def env_names(ds: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(ds)["env"]}


def test_default_render_exposes_metrics_and_labels_its_node_with_least_rbac() -> None:
    code, docs, err = render("--lib-path", DEBIAN_LIB, "--prometheus-operator")
    assert code == 0, err
    objects = kinds(docs)
    ds = objects["DaemonSet"]
    pod = ds["spec"]["template"]
    assert container(ds)["ports"] == [{"name": "metrics", "containerPort": 9400, "protocol": "TCP"}]
    assert pod["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "9400",
        "prometheus.io/path": "/metrics",
    }
    env = env_names(ds)
    assert env["GPUNODE_METRICS_ADDR"] == ":9400" and env["GPUNODE_NODE_LABELS"] == "node"
    assert env["GPUNODE_NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["pod-resources"]["hostPath"]["path"] == "/var/lib/kubelet/pod-resources"
    # The account the pod runs as is bound to nodes get, patch: nothing more.
    assert pod["spec"]["serviceAccountName"] == objects["ServiceAccount"]["metadata"]["name"]
    assert pod["spec"]["automountServiceAccountToken"] is True
    assert objects["ClusterRole"]["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]}]
    binding = objects["ClusterRoleBinding"]
    assert binding["roleRef"]["name"] == objects["ClusterRole"]["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": pod["spec"]["serviceAccountName"], "namespace": "kube-system"}
    ]
    # The PodMonitor selects these pods by a label they carry, on the port they declare.
    monitor = objects["PodMonitor"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["kube-system"]}


def test_metrics_off_a_port_of_its_own_nfd_labels_and_no_labels() -> None:
    code, docs, _ = render("--lib-path", DEBIAN_LIB, "--metrics-addr", "off", "--node-labels", "off")
    ds = kinds(docs)["DaemonSet"]
    assert code == 0 and "ports" not in container(ds)
    assert "annotations" not in ds["spec"]["template"]["metadata"]
    assert "GPUNODE_METRICS_ADDR" not in env_names(ds) and env_names(ds)["GPUNODE_NODE_LABELS"] == "off"
    assert [d["kind"] for d in docs] == ["RuntimeClass", "DaemonSet"]
    assert ds["spec"]["template"]["spec"]["automountServiceAccountToken"] is False

    code, docs, _ = render("--lib-path", DEBIAN_LIB, "--metrics-addr", "127.0.0.1:9500", "--node-labels", "nfd")
    ds = kinds(docs)["DaemonSet"]
    assert container(ds)["ports"][0]["containerPort"] == 9500
    volumes = {v["name"]: v["hostPath"] for v in ds["spec"]["template"]["spec"]["volumes"]}
    assert volumes["nfd-features"] == {"path": "/etc/kubernetes/node-feature-discovery/features.d", "type": "Directory"}
    assert "ClusterRole" not in kinds(docs)

    code, docs, err = render("--lib-path", DEBIAN_LIB, "--metrics-addr", "off", "--prometheus-operator")
    assert code == 2 and "metrics, and they are off" in err
    code, docs, err = render("--lib-path", DEBIAN_LIB, "--metrics-addr", "nine")
    assert code == 2 and "is not a listen address" in err


def test_bootstrap_settings_reach_the_node_plan() -> None:
    target = NodeTarget("gpu01", "gpu01", "535.261.03", DEBIAN_LIB, "/var/lib/kubelet", ("0000:07:00.0",))
    plan = plan_node(target, ClusterSettings(metrics_addr=":9600", node_labels="nfd"))
    assert plan.deployment is not None
    assert plan.deployment.effective_metrics_addr == ":9600" and plan.deployment.node_labels == "nfd"
    plan = plan_node(target, ClusterSettings())
    assert plan.deployment is not None and plan.deployment.effective_metrics_addr == ":9400"
    help_text = subprocess.run(
        [sys.executable, "-m", "gpunode.bootstrap.cli.main", "bootstrap", "--help"], capture_output=True, text=True
    ).stdout
    assert "--metrics-addr" in help_text and "--node-labels" in help_text


def test_dashboard_is_json_and_every_query_is_promql(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gpunode.bootstrap.cli.main", "render", "dashboard"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    dashboard = json.loads(result.stdout)
    assert dashboard == grafana_dashboard()
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) == len(PANELS) and len({p["id"] for p in dashboard["panels"]}) == len(PANELS)
    # promtool parses each query (Grafana's variables given a value) as a recording rule.
    rules = [{"record": f"gpunode:panel{i}", "expr": re.sub(r"\$\w+", ".*", e)} for i, e in enumerate(exprs)]
    (tmp_path / "panels.yml").write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    check = subprocess.run([promtool(), "check", "rules", str(tmp_path / "panels.yml")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
