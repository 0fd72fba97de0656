"""The Kubernetes API stand-in, proven with the real kubectl as its only client.

Every command here is one gpunode's cluster layer or `gpunode doctor` runs (or a user
would run to check on them); each test asserts what kubectl prints or returns, so a
stand-in that kubectl could tell from a real API server fails here.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from polling import eventually
from standins.kube_api import KubeApiStandIn, debian_kubectl, kubectl_binary
from standins.kube_api.process_pods import PodProcessRunner

from .conftest import Kubectl

NS = "kube-system"
DS = "gpunode-device-plugin-535"
VERSION_LABEL = "gpunode.io/driver-version"
LIBRARY = "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.535.288.01"


def runtime_class() -> dict[str, Any]:
    return {
        "apiVersion": "node.k8s.io/v1",
        "kind": "RuntimeClass",
        "metadata": {"name": "nvidia", "labels": {"app.kubernetes.io/managed-by": "gpunode"}},
        "handler": "nvidia",
    }


def daemonset(
    name: str = DS,
    image: str = "registry.example/gpunode-plugin:0.1.0",
    tolerate_gpu_taint: bool = True,
    strategy: str | None = None,
    env: dict[str, str] | None = None,
    managed_by: str = "gpunode",
    command: list[str] | None = None,
    version: str = "535.288.01",
) -> dict[str, Any]:
    labels = {"app": "gpunode-device-plugin", VERSION_LABEL: version}
    pod_spec: dict[str, Any] = {
        "priorityClassName": "system-node-critical",
        "nodeSelector": {VERSION_LABEL: version},
        "containers": [
            {
                "name": "plugin",
                "image": image,
                "command": command or ["python3", "-m", "gpunode.plugin"],
                "env": [{"name": "LD_LIBRARY_PATH", "value": "/usr/local/lib"}]
                + [{"name": k, "value": v} for k, v in (env or {}).items()],
                "securityContext": {"privileged": True},
                "volumeMounts": [
                    {"name": "nvml", "mountPath": "/usr/local/lib/libnvidia-ml.so.1", "readOnly": True},
                    {"name": "device-plugins", "mountPath": "/var/lib/kubelet/device-plugins"},
                ],
            }
        ],
        "volumes": [
            {
                "name": "nvml",
                "hostPath": {"path": f"/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.{version}", "type": "File"},
            },
            {"name": "device-plugins", "hostPath": {"path": "/var/lib/kubelet/device-plugins"}},
        ],
    }
    if tolerate_gpu_taint:
        pod_spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    spec: dict[str, Any] = {
        "selector": {"matchLabels": dict(labels)},
        "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
    }
    if strategy:
        spec["updateStrategy"] = {"type": strategy}
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name, "namespace": NS, "labels": {"app.kubernetes.io/managed-by": managed_by}},
        "spec": spec,
    }


def manifest(*objs: dict[str, Any]) -> str:
    return yaml.safe_dump_all(objs, sort_keys=False)


def apply(
    kubectl: Kubectl, *objs: dict[str, Any], extra: tuple[str, ...] = (), rc: int | None = 0
) -> subprocess.CompletedProcess[str]:
    return kubectl("apply", "--server-side", "--field-manager=gpunode", *extra, "-f", "-", stdin=manifest(*objs), rc=rc)


def gpu_node(api: KubeApiStandIn, name: str = "gpu-1", **kw: Any) -> dict[str, Any]:
    labels = {VERSION_LABEL: "535.288.01", "nvidia.com/gpu.present": "true"}
    labels.update(kw.pop("labels", {}))
    return api.add_node(name, labels=labels, **kw)


def mark_ready_on_create(api: KubeApiStandIn) -> list[str]:
    """The smallest kubelet: every bound pod becomes Running and Ready. Returns the log
    of pods deleted (by name)."""
    api.on_pod_created(
        lambda pod: api.set_pod_phase(pod["metadata"]["namespace"], pod["metadata"]["name"], "Running", ready=True)
    )
    deleted: list[str] = []
    api.on_pod_deleted(lambda pod: deleted.append(pod["metadata"]["name"]))
    return deleted


def pods_of(api: KubeApiStandIn, name: str = DS) -> list[dict[str, Any]]:
    return [
        p for p in api.list("pods", NS) if any(r.get("name") == name for r in p["metadata"].get("ownerReferences", []))
    ]


def later(seconds: float, action: Callable[[], Any]) -> threading.Thread:
    def run() -> None:
        time.sleep(seconds)
        action()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# Connection, TLS, authentication ------------------------------------------------------


def test_the_real_kubectl_is_used(kubectl_path: Path, cache_dir: Path) -> None:
    assert kubectl_binary(cache_dir) == kubectl_path
    out = subprocess.run(
        [str(kubectl_path), "version", "--client", "-o", "json"], capture_output=True, text=True, check=True
    ).stdout
    client = json.loads(out)["clientVersion"]
    assert (client["major"], client["minor"].rstrip("+")) == ("1", "32")


def test_kubectl_version_over_tls_with_the_token(kube_api: KubeApiStandIn, kubectl: Kubectl) -> None:
    out = json.loads(kubectl("version", "-o", "json").stdout)
    assert out["serverVersion"]["gitVersion"] == "v1.32.3"
    config = yaml.safe_load(kube_api.kubeconfig_path.read_text())
    assert config["current-context"] == kube_api.context_name
    assert config["clusters"][0]["cluster"]["server"] == f"https://127.0.0.1:{kube_api.port}"
    assert "certificate-authority-data" in config["clusters"][0]["cluster"]


def test_a_wrong_token_is_refused_as_unauthorized(kube_api: KubeApiStandIn, tmp_path: Path, kubectl_path: Path) -> None:
    config = yaml.safe_load(kube_api.kubeconfig_path.read_text())
    config["users"][0]["user"]["token"] = "not-the-token"
    wrong = tmp_path / "wrong-kubeconfig"
    wrong.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [str(kubectl_path), "--kubeconfig", str(wrong), "get", "nodes"],
        capture_output=True,
        text=True,
        env=kube_api.kubectl_env(),
    )
    assert result.returncode == 1
    # kubectl's words for a 401 during discovery (its first request here).
    assert result.stderr.splitlines()[-1] == (
        "error: You must be logged in to the server (the server has asked for the client to provide credentials)"
    )


def test_a_server_kubectl_cannot_verify_is_refused(
    kube_api: KubeApiStandIn, tmp_path: Path, kubectl_path: Path
) -> None:
    config = yaml.safe_load(kube_api.kubeconfig_path.read_text())
    del config["clusters"][0]["cluster"]["certificate-authority-data"]
    bare = tmp_path / "no-ca-kubeconfig"
    bare.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [str(kubectl_path), "--kubeconfig", str(bare), "get", "nodes"],
        capture_output=True,
        text=True,
        env=kube_api.kubectl_env(),
    )
    assert result.returncode == 1
    assert "certificate signed by unknown authority" in result.stderr


# Nodes ------------------------------------------------------------------------------------


def test_get_nodes_json_has_labels_taints_capacity_and_conditions(kube_api: KubeApiStandIn, kubectl: Kubectl) -> None:
    gpu_node(kube_api, taints=["nvidia.com/gpu=present:NoSchedule"], capacity={"nvidia.com/gpu": "2"})
    kube_api.add_node("cpu-1", conditions={"Ready": "False"})
    nodes = {n["metadata"]["name"]: n for n in json.loads(kubectl("get", "nodes", "-o", "json").stdout)["items"]}
    gpu = nodes["gpu-1"]
    assert gpu["metadata"]["labels"][VERSION_LABEL] == "535.288.01"
    assert gpu["spec"]["taints"] == [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
    assert gpu["status"]["capacity"]["nvidia.com/gpu"] == "2"
    assert gpu["status"]["allocatable"]["nvidia.com/gpu"] == "2"
    ready = {c["type"]: c["status"] for c in gpu["status"]["conditions"]}
    assert ready["Ready"] == "True"
    assert {c["type"]: c["status"] for c in nodes["cpu-1"]["status"]["conditions"]}["Ready"] == "False"


def test_allocatable_published_then_zero_then_absent(kube_api: KubeApiStandIn, kubectl: Kubectl) -> None:
    gpu_node(kube_api)
    path = "jsonpath={.status.allocatable.nvidia\\.com/gpu}"
    assert kubectl("get", "node", "gpu-1", "-o", path).stdout == ""
    kube_api.set_node_status("gpu-1", capacity={"nvidia.com/gpu": "2"}, allocatable={"nvidia.com/gpu": "2"})
    assert kubectl("get", "node", "gpu-1", "-o", path).stdout == "2"
    kube_api.set_node_status("gpu-1", allocatable={"nvidia.com/gpu": "0"})
    assert kubectl("get", "node", "gpu-1", "-o", path).stdout == "0"
    kube_api.remove_allocatable("gpu-1", "nvidia.com/gpu")
    node = json.loads(kubectl("get", "node", "gpu-1", "-o", "json").stdout)
    assert "nvidia.com/gpu" not in node["status"]["allocatable"]
    assert "nvidia.com/gpu" not in node["status"]["capacity"]


def test_label_node_with_overwrite(kube_api: KubeApiStandIn, kubectl: Kubectl) -> None:
    kube_api.add_node("gpu-1")
    assert (
        kubectl("label", "node", "gpu-1", f"{VERSION_LABEL}=535.288.01", "--overwrite").stdout == "node/gpu-1 labeled\n"
    )
    refused = kubectl("label", "node", "gpu-1", f"{VERSION_LABEL}=550.54.15", rc=1)
    assert f"'{VERSION_LABEL}' already has a value (535.288.01), and --overwrite is false" in refused.stderr
    kube_api.clear_requests()
    kubectl("label", "node", "gpu-1", f"{VERSION_LABEL}=550.54.15", "--overwrite")
    node = kube_api.get("Node", "gpu-1")
    assert node is not None and node["metadata"]["labels"][VERSION_LABEL] == "550.54.15"
    assert ("PATCH", "/api/v1/nodes/gpu-1", "application/merge-patch+json", "kubectl-label") in kube_api.requests
    owners = {e["manager"] for e in node["metadata"]["managedFields"] if VERSION_LABEL in json.dumps(e["fieldsV1"])}
    assert owners == {"kubectl-label"}
    invalid = kubectl("label", "node", "gpu-1", "bad key=1", rc=1)
    assert 'The Node "gpu-1" is invalid: metadata.labels: Invalid value: "bad key"' in invalid.stderr


# Server-side apply ------------------------------------------------------------------------


def test_server_side_apply_creates_and_a_second_apply_changes_nothing(
    kube_api: KubeApiStandIn, kubectl: Kubectl
) -> None:
    gpu_node(kube_api)
    first = apply(kubectl, runtime_class(), daemonset())
    assert first.stdout == (
        f"runtimeclass.node.k8s.io/nvidia serverside-applied\ndaemonset.apps/{DS} serverside-applied\n"
    )
    applied = [r for r in kube_api.requests if r.method == "PATCH"]
    assert applied == [
        ("PATCH", "/apis/node.k8s.io/v1/runtimeclasses/nvidia", "application/apply-patch+yaml", "gpunode"),
        ("PATCH", f"/apis/apps/v1/namespaces/{NS}/daemonsets/{DS}", "application/apply-patch+yaml", "gpunode"),
    ]
    ds = kube_api.get("DaemonSet", DS, NS)
    rc = kube_api.get("RuntimeClass", "nvidia")
    assert ds is not None and rc is not None
    assert ds["metadata"]["generation"] == 1
    assert [(e["manager"], e["operation"]) for e in ds["metadata"]["managedFields"]] == [("gpunode", "Apply")]

    apply(kubectl, runtime_class(), daemonset())
    assert kube_api.get("DaemonSet", DS, NS) == ds  # same resourceVersion, generation, all
    assert kube_api.get("RuntimeClass", "nvidia") == rc
    diff = kubectl(
        "diff", "--server-side", "--field-manager=gpunode", "-f", "-", stdin=manifest(runtime_class(), daemonset())
    )
    assert diff.stdout == ""


def test_changed_daemonset_bumps_generation_and_replaces_its_pods(kube_api: KubeApiStandIn, kubectl: Kubectl) -> None:
    gpu_node(kube_api)
    deleted = mark_ready_on_create(kube_api)
    apply(kubectl, daemonset())
    kubectl("rollout", "status", f"ds/{DS}", "-n", NS, "--timeout=10s")
    [old_pod] = pods_of(kube_api)
    changed = daemonset(image="registry.example/gpunode-plugin:0.2.0")
    diff = kubectl("diff", "--server-side", "--field-manager=gpunode", "-f", "-", stdin=manifest(changed), rc=1)
    assert "+        image: registry.example/gpunode-plugin:0.2.0" in diff.stdout
    apply(kubectl, changed)
    out = kubectl("rollout", "status", f"ds/{DS}", "-n", NS, "--timeout=10s").stdout
    assert f'daemon set "{DS}" successfully rolled out' in out
    ds = kube_api.get("DaemonSet", DS, NS)
    assert ds is not None and ds["metadata"]["generation"] == 2
    assert ds["status"]["observedGeneration"] == 2
    assert ds["status"]["updatedNumberScheduled"] == ds["status"]["numberAvailable"] == 1
    [new_pod] = pods_of(kube_api)
    assert new_pod["metadata"]["name"] != old_pod["metadata"]["name"]
    assert new_pod["spec"]["containers"][0]["image"] == "registry.example/gpunode-plugin:0.2.0"
    assert old_pod["metadata"]["name"] in deleted
    assert new_pod["metadata"]["labels"]["pod-template-generation"] == "2"


def test_apply_removes_what_the_manager_dropped_and_keeps_what_others_set(
    kube_api: KubeApiStandIn, kubectl: Kubectl
) -> None:
    apply(kubectl, daemonset(env={"PLUGIN_DEBUG": "1"}))
    kubectl("label", "ds", DS, "-n", NS, "team=gpu")
    apply(kubectl, daemonset())
    ds = kube_api.get("DaemonSet", DS, NS)
    assert ds is not None
    env = ds["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env == [{"name": "LD_LIBRARY_PATH", "value": "/usr/local/lib"}]
    assert ds["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "gpunode", "team": "gpu"}
    assert ds["metadata"]["generation"] == 2


def test_apply_conflict_with_another_manager_unless_forced(kube_api: KubeApiStandIn, kubectl: Kubectl) -> None:
    apply(kubectl, daemonset())
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "plugin", "image": "someone/else:1"}]}}}}
    kubectl("patch", "ds", DS, "-n", NS, "-p", json.dumps(patch))
    refused = apply(kubectl, daemonset(), rc=1)
    assert (
        'error: Apply failed with 1 conflict: conflict with "kubectl-patch" using apps/v1: '
        '.spec.template.spec.containers[name="plugin"].image'
    ) in refused.stderr
    assert "--force-conflicts" in refused.stderr
    apply(kubectl, daemonset(), extra=("--force-conflicts",))
    ds = kube_api.get("DaemonSet", DS, NS)
    assert ds is not None
    assert ds["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/gpunode-plugin:0.1.0"
    assert not any(e["manager"] == "kubectl-patch" for e in ds["metadata"]["managedFields"])


def test_patch_types_kubectl_sends(kube_api: KubeApiStandIn, kubectl: Kubectl) -> None:
    apply(kubectl, daemonset())
    kube_api.clear_requests()
    strategic = {
        "spec": {"template": {"spec": {"containers": [{"name": "plugin", "env": [{"name": "EXTRA", "value": "1"}]}]}}}
    }
    kubectl("patch", "ds", DS, "-n", NS, "-p", json.dumps(strategic))
    kubectl("patch", "ds", DS, "-n", NS, "--type=merge", "-p", '{"metadata":{"annotations":{"note":"x"}}}')
    kubectl("patch", "ds", DS, "-n", NS, "--type=merge", "-p", '{"metadata":{"annotations":{"note":null}}}')
    types = [r.content_type for r in kube_api.requests if r.method == "PATCH"]
    assert types == [
        "application/strategic-merge-patch+json",
        "application/merge-patch+json",
        "application/merge-patch+json",
    ]
    ds = kube_api.get("DaemonSet", DS, NS)
    assert ds is not None
    container = ds["spec"]["template"]["spec"]["containers"][0]
    # Strategic merge merged the env list by name and kept everything else.
    assert container["env"] == [
        {"name": "EXTRA", "value": "1"},
        {"name": "LD_LIBRARY_PATH", "value": "/usr/local/lib"},
    ] or container["env"] == [{"name": "LD_LIBRARY_PATH", "value": "/usr/local/lib"}, {"name": "EXTRA", "value": "1"}]
    assert container["image"] == "registry.example/gpunode-plugin:0.1.0"
    assert "note" not in ds["metadata"].get("annotations", {})
    # JSON patch (RFC 6902) is not served: nothing gpunode runs sends it.
    refused = kubectl("patch", "ds", DS, "-n", NS, "--type=json", "-p", '[{"op":"remove","path":"/x"}]', rc=1)
    assert "UnsupportedMediaType" in refused.stderr or "415" in refused.stderr or "not supported" in refused.stderr


def test_server_dry_run_changes_nothing(kube_api: KubeApiStandIn, kubectl: Kubectl) -> None:
    gpu_node(kube_api)
    created: list[str] = []
    kube_api.on_pod_created(lambda pod: created.append(pod["metadata"]["name"]))
    out = apply(kubectl, runtime_class(), daemonset(), extra=("--dry-run=server",)).stdout
    assert out == (
        "runtimeclass.node.k8s.io/nvidia serverside-applied (server dry run)\n"
        f"daemonset.apps/{DS} serverside-applied (server dry run)\n"
    )
    assert all(r.query.get("dryRun") == "All" for r in kube_api.request_log if r.method == "PATCH")
    assert kube_api.get("DaemonSet", DS, NS) is None
    assert kube_api.get("RuntimeClass", "nvidia") is None
    apply(kubectl, daemonset())
    before = kube_api.get("DaemonSet", DS, NS)
    kubectl("delete", "ds", DS, "-n", NS, "--dry-run=server")
    assert kube_api.get("DaemonSet", DS, NS) == before
    kube_api.wait_hooks_idle()
    assert len(created) == 1  # only the real apply made a pod


def test_invalid_daemonset_is_rejected_with_422(kube_api: KubeApiStandIn, kubectl: Kubectl) -> None:
    broken = daemonset()
    broken["spec"]["template"]["metadata"]["labels"]["app"] = "something-else"
    out = apply(kubectl, broken, rc=1)
    assert f'The DaemonSet "{DS}" is invalid: spec.template.metadata.labels: Invalid value:' in out.stderr
    assert "`selector` does not match template `labels`" in out.stderr
    assert kube_api.get("DaemonSet", DS, NS) is None


def test_unknown_fields_are_refused_as_by_a_real_server(kube_api: KubeApiStandIn, kubectl: Kubectl) -> None:
    misplaced = daemonset()
    misplaced["spec"]["template"]["spec"]["containers"][0]["runtimeClassName"] = "nvidia"
    refused = apply(kubectl, misplaced, rc=1)
    assert refused.stderr.strip() == (
        f"Error from server: failed to create typed patch object ({NS}/{DS}; apps/v1, "
        'Kind=DaemonSet): .spec.template.spec.containers[name="plugin"].runtimeClassName: '
        "field not declared in schema"
    )
    created = kubectl("create", "-f", "-", stdin=manifest(misplaced), rc=1)
    assert (
        'Error from server (BadRequest): error when creating "STDIN": DaemonSet in version '
        '"v1" cannot be handled as a DaemonSet: strict decoding error: unknown field '
        '"spec.template.spec.containers[0].runtimeClassName"'
    ) in created.stderr
    assert kube_api.get("DaemonSet", DS, NS) is None
    apply(kubectl, daemonset())
    warned = kubectl("patch", "ds", DS, "-n", NS, "--type=merge", "-p", '{"spec":{"bogus":1}}')
    assert 'Warning: unknown field "spec.bogus"' in warned.stderr
    ds = kube_api.get("DaemonSet", DS, NS)
    assert ds is not None and "bogus" not in ds["spec"]


# The DaemonSet controller, rollout, wait -----------------------------------------------


def test_rollout_status_waits_for_ready_pods_and_times_out_with_kubectls_message(
    kube_api: KubeApiStandIn, kubectl: Kubectl
) -> None:
    gpu_node(kube_api)
    apply(kubectl, daemonset())
    stuck = kubectl("rollout", "status", f"ds/{DS}", "-n", NS, "--timeout=1s", rc=1)
    assert (f'Waiting for daemon set "{DS}" rollout to finish: 0 of 1 updated pods are available...') in stuck.stdout
    assert "error: timed out waiting for the condition" in stuck.stderr
    [pod] = pods_of(kube_api)
    later(0.5, lambda: kube_api.set_pod_phase(NS, pod["metadata"]["name"], "Running", ready=True))
    done = kubectl("rollout", "status", f"ds/{DS}", "-n", NS, "--timeout=10s")
    assert done.stdout.endswith(f'daemon set "{DS}" successfully rolled out\n')
    watches = [r for r in kube_api.request_log if r.query.get("watch") == "true"]
    assert watches and all(r.query["fieldSelector"] == f"metadata.name={DS}" for r in watches)


def test_on_delete_strategy_keeps_old_pods_until_deleted(kube_api: KubeApiStandIn, kubectl: Kubectl) -> None:
    gpu_node(kube_api)
    mark_ready_on_create(kube_api)
    apply(kubectl, daemonset(strategy="OnDelete"))
    eventually(lambda: (kube_api.get("DaemonSet", DS, NS) or {}).get("status", {}).get("numberReady") == 1)
    [old_pod] = pods_of(kube_api)
    apply(kubectl, daemonset(strategy="OnDelete", image="registry.example/gpunode-plugin:0.2.0"))
    assert [p["metadata"]["name"] for p in pods_of(kube_api)] == [old_pod["metadata"]["name"]]
    ds = kube_api.get("DaemonSet", DS, NS)
    # Zero is omitted (omitempty), as a real server sends it: readers must default it.
    assert ds is not None and "updatedNumberScheduled" not in ds["status"]
    assert ds["status"]["observedGeneration"] == 2
    refused = kubectl("rollout", "status", f"ds/{DS}", "-n", NS, "--timeout=2s", rc=1)
    assert "rollout status is only available for RollingUpdate strategy type" in refused.stderr
    kubectl("delete", "pod", old_pod["metadata"]["name"], "-n", NS)
    [new_pod] = pods_of(kube_api)
    assert new_pod["spec"]["containers"][0]["image"] == "registry.example/gpunode-plugin:0.2.0"


def test_missing_service_account_shows_as_failed_create_on_the_daemonset(
    kube_api: KubeApiStandIn, kubectl: Kubectl
) -> None:
    gpu_node(kube_api)
    apply(kubectl, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "gpunode-system"}})
    ds = daemonset()
    ds["metadata"]["namespace"] = "gpunode-system"
    ds["spec"]["template"]["spec"]["serviceAccountName"] = "gpunode-plugin"
    apply(kubectl, ds)
    events = kubectl(
        "get",
        "events",
        "-n",
        "gpunode-system",
        "--field-selector",
        f"involvedObject.kind=DaemonSet,involvedObject.name={DS}",
        "-o",
        "json",
    ).stdout
    messages = [e["message"] for e in json.loads(events)["items"]]
    assert (
        f'Error creating: pods "{DS}-" is forbidden: error looking up service account '
        'gpunode-system/gpunode-plugin: serviceaccount "gpunode-plugin" not found'
    ) in messages
    assert kube_api.list("pods", "gpunode-system") == []
    apply(
        kubectl,
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "gpunode-plugin", "namespace": "gpunode-system"},
        },
    )
    [pod] = kube_api.list("pods", "gpunode-system")
    assert pod["spec"]["serviceAccountName"] == "gpunode-plugin"
    kubectl("delete", "namespace", "gpunode-system")
    assert kube_api.list("daemonsets", "gpunode-system") == []
    assert kube_api.list("pods", "gpunode-system") == []


def test_tainted_gpu_node_without_toleration_gets_no_daemon_pod(kube_api: KubeApiStandIn, kubectl: Kubectl) -> None:
    """F15 (docs/failure-modes.md): DESIRED counts only nodes whose taints the pods tolerate."""
    gpu_node(kube_api, "gpu-1")
    gpu_node(kube_api, "gpu-2", taints=["nvidia.com/gpu=present:NoSchedule"])
    apply(kubectl, daemonset(tolerate_gpu_taint=False))
    status = json.loads(kubectl("get", "ds", DS, "-n", NS, "-o", "json").stdout)["status"]
    assert status["desiredNumberScheduled"] == 1
    assert [p["spec"]["nodeName"] for p in pods_of(kube_api)] == ["gpu-1"]
    assert status["currentNumberScheduled"] == 1
    apply(kubectl, daemonset(tolerate_gpu_taint=True))
    assert sorted(p["spec"]["nodeName"] for p in pods_of(kube_api)) == ["gpu-1", "gpu-2"]
    assert kube_api.get("DaemonSet", DS, NS)["status"]["desiredNumberScheduled"] == 2  # type: ignore[index]


def test_relabelled_node_moves_to_the_daemonset_of_its_new_driver(kube_api: KubeApiStandIn, kubectl: Kubectl) -> None:
    gpu_node(kube_api)
    deleted = mark_ready_on_create(kube_api)
    apply(kubectl, daemonset(), daemonset(name="gpunode-device-plugin-550", version="550.54.15"))
    [old] = pods_of(kube_api)
    assert pods_of(kube_api, "gpunode-device-plugin-550") == []
    kubectl("label", "node", "gpu-1", f"{VERSION_LABEL}=550.54.15", "--overwrite")
    assert pods_of(kube_api) == []
    [new] = pods_of(kube_api, "gpunode-device-plugin-550")
    assert new["spec"]["nodeName"] == "gpu-1"
    kube_api.wait_hooks_idle()
    assert old["metadata"]["name"] in deleted
    kubectl("rollout", "status", "ds/gpunode-device-plugin-550", "-n", NS, "--timeout=10s")


def test_wait_for_condition_jsonpath_and_delete(kube_api: KubeApiStandIn, kubectl: Kubectl) -> None:
    gpu_node(kube_api)
    apply(kubectl, daemonset())
    [pod] = pods_of(kube_api)
    name = pod["metadata"]["name"]
    later(0.3, lambda: kube_api.set_pod_phase(NS, name, "Running", ready=True))
    out = kubectl("wait", "--for=condition=Ready", f"pod/{name}", "-n", NS, "--timeout=10s")
    assert out.stdout == f"pod/{name} condition met\n"
    later(0.3, lambda: kube_api.set_node_status("gpu-1", allocatable={"nvidia.com/gpu": "2"}))
    kubectl("wait", "--for=jsonpath={.status.allocatable.nvidia\\.com/gpu}=2", "node/gpu-1", "--timeout=10s")
    later(0.3, lambda: kube_api.delete("DaemonSet", DS, NS))
    kubectl("wait", "--for=delete", f"ds/{DS}", "-n", NS, "--timeout=10s")
    timeout = kubectl("wait", "--for=condition=Ready", "node/gpu-1", "--timeout=0.5s")
    assert "condition met" in timeout.stdout
    kube_api.set_node_status("gpu-1", conditions={"Ready": "False"})
    late = kubectl("wait", "--for=condition=Ready", "node/gpu-1", "--timeout=0.5s", rc=1)
    assert "timed out waiting for the condition on nodes/gpu-1" in late.stderr


def test_delete_daemonset_deletes_its_pods_and_calls_the_hook(kube_api: KubeApiStandIn, kubectl: Kubectl) -> None:
    gpu_node(kube_api, "gpu-1")
    gpu_node(kube_api, "gpu-2")
    deleted = mark_ready_on_create(kube_api)
    apply(kubectl, daemonset())
    names = sorted(p["metadata"]["name"] for p in pods_of(kube_api))
    assert len(names) == 2
    assert all(n.startswith(f"{DS}-") and len(n) == len(DS) + 6 for n in names)
    out = kubectl("delete", "ds", DS, "-n", NS)
    assert out.stdout == f'daemonset.apps "{DS}" deleted\n'
    assert pods_of(kube_api) == []
    kube_api.wait_hooks_idle()
    assert sorted(deleted) == names
    again = kubectl("delete", "ds", DS, "-n", NS, rc=1)
    assert again.stderr.strip() == f'Error from server (NotFound): daemonsets.apps "{DS}" not found'
    kubectl("delete", "ds", DS, "-n", NS, "--ignore-not-found")


def test_get_daemonsets_by_managed_by_label(kube_api: KubeApiStandIn, kubectl: Kubectl) -> None:
    apply(kubectl, daemonset(), daemonset(name="nvidia-device-plugin-daemonset", managed_by="Helm"))
    out = kubectl("get", "ds", "-A", "-l", "app.kubernetes.io/managed-by=gpunode", "-o", "name")
    assert out.stdout == f"daemonset.apps/{DS}\n"
    everything = kubectl("get", "ds", "-A", "-o", "name").stdout.split()
    assert sorted(everything) == [f"daemonset.apps/{DS}", "daemonset.apps/nvidia-device-plugin-daemonset"]
    none = kubectl("get", "ds", "-A", "-l", "app.kubernetes.io/managed-by=nobody")
    assert none.stderr.strip() == "No resources found"


def test_pod_failure_states_as_kubectl_shows_them(kube_api: KubeApiStandIn, kubectl: Kubectl) -> None:
    gpu_node(kube_api, "gpu-1")
    gpu_node(kube_api, "gpu-2")
    apply(kubectl, daemonset())
    first, second = sorted(pods_of(kube_api), key=lambda p: p["spec"]["nodeName"])
    kube_api.set_pod_phase(
        NS, first["metadata"]["name"], "Running", waiting_reason="CrashLoopBackOff", restart_count=4, exit_code=1
    )
    kube_api.set_pod_phase(NS, second["metadata"]["name"], "Pending", waiting_reason="ImagePullBackOff")
    got = {p["metadata"]["name"]: p for p in json.loads(kubectl("get", "pods", "-n", NS, "-o", "json").stdout)["items"]}
    crashing = got[first["metadata"]["name"]]["status"]["containerStatuses"][0]
    assert (crashing["state"]["waiting"]["reason"], crashing["restartCount"]) == ("CrashLoopBackOff", 4)
    pulling = got[second["metadata"]["name"]]["status"]["containerStatuses"][0]
    assert pulling["state"]["waiting"]["reason"] == "ImagePullBackOff"
    events = kubectl(
        "get",
        "events",
        "-n",
        NS,
        "--field-selector",
        f"involvedObject.name={first['metadata']['name']},reason=BackOff",
        "-o",
        "json",
    ).stdout
    assert "Back-off restarting failed container plugin" in events
    ds = kube_api.get("DaemonSet", DS, NS)
    assert ds is not None and ds["status"]["numberReady"] == 0
    assert ds["status"]["numberUnavailable"] == 2


# Events, describe, logs ----------------------------------------------------------------


def test_events_by_field_selector_and_in_describe(kube_api: KubeApiStandIn, kubectl: Kubectl) -> None:
    gpu_node(kube_api)
    apply(kubectl, daemonset())
    [pod] = pods_of(kube_api)
    name = pod["metadata"]["name"]
    kube_api.add_event(
        NS,
        "Pod",
        name,
        "FailedMount",
        'MountVolume.SetUp failed for volume "nvml" : hostPath type check '
        "failed: /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.535.288.01 is not a file",
    )
    kube_api.add_event(NS, "DaemonSet", DS, "Unrelated", "about the DaemonSet", type="Normal")
    out = kubectl(
        "get",
        "events",
        "-n",
        NS,
        "--field-selector",
        f"involvedObject.name={name},involvedObject.kind=Pod",
        "-o",
        "json",
    )
    reasons = [e["reason"] for e in json.loads(out.stdout)["items"]]
    assert "FailedMount" in reasons and "Unrelated" not in reasons
    assert "Scheduled" in reasons  # the scheduler's own event
    described = kubectl("describe", "pod", name, "-n", NS).stdout
    assert re.search(rf"Controlled By:\s+DaemonSet/{DS}\n", described)
    assert "Warning  FailedMount" in described
    assert "is not a file" in described
    new_api = kubectl(
        "get", "events.events.k8s.io", "-n", NS, "-o", "json", "--field-selector", f"regarding.name={name}"
    ).stdout
    notes = [e["note"] for e in json.loads(new_api)["items"]]
    assert any("is not a file" in n for n in notes)
    bad = kubectl("get", "events", "-n", NS, "--field-selector", "spec.bogus=1", rc=1)
    assert "field label not supported: spec.bogus" in bad.stderr


def test_scheduler_reports_insufficient_gpus_then_binds(kube_api: KubeApiStandIn, kubectl: Kubectl) -> None:
    gpu_node(kube_api)

    def run_nvidia_smi(pod: dict[str, Any]) -> None:
        kube_api.set_pod_logs("default", pod["metadata"]["name"], "GPU 0: Tesla T4\n")
        kube_api.set_pod_phase("default", pod["metadata"]["name"], "Succeeded")

    kube_api.on_pod_created(run_nvidia_smi)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "gpu-check"},
        "spec": {
            "restartPolicy": "Never",
            "runtimeClassName": "nvidia",
            "containers": [
                {
                    "name": "smi",
                    "image": "cuda",
                    "command": ["nvidia-smi", "-L"],
                    "resources": {"limits": {"nvidia.com/gpu": "1"}},
                }
            ],
        },
    }
    assert kubectl("create", "-f", "-", stdin=json.dumps(pod)).stdout == "pod/gpu-check created\n"
    described = kubectl("describe", "pod", "gpu-check").stdout
    assert (
        "0/1 nodes are available: 1 Insufficient nvidia.com/gpu. preemption: 0/1 nodes "
        "are available: 1 No preemption victims found for incoming pod."
    ) in described
    assert kubectl("get", "pod", "gpu-check", "-o", "jsonpath={.status.phase}").stdout == "Pending"
    kube_api.set_node_status("gpu-1", capacity={"nvidia.com/gpu": "1"}, allocatable={"nvidia.com/gpu": "1"})
    kube_api.wait_hooks_idle()
    assert kubectl("get", "pod", "gpu-check", "-o", "jsonpath={.status.phase}").stdout == "Succeeded"
    assert kubectl("logs", "gpu-check").stdout == "GPU 0: Tesla T4\n"


def test_logs_of_pods_daemonsets_tail_and_previous(kube_api: KubeApiStandIn, kubectl: Kubectl) -> None:
    gpu_node(kube_api)
    apply(kubectl, daemonset())
    [pod] = pods_of(kube_api)
    name = pod["metadata"]["name"]
    waiting = kubectl("logs", name, "-n", NS, rc=1)
    assert (
        f'Error from server (BadRequest): container "plugin" in pod "{name}" is waiting to start: ContainerCreating'
    ) in waiting.stderr
    kube_api.set_pod_phase(NS, name, "Running", ready=True)
    kube_api.set_pod_logs(NS, name, "loading NVML\nregistered nvidia.com/gpu with 2 devices\n")
    assert kubectl("logs", name, "-n", NS).stdout == "loading NVML\nregistered nvidia.com/gpu with 2 devices\n"
    assert kubectl("logs", f"ds/{DS}", "-n", NS, "--tail=1").stdout == "registered nvidia.com/gpu with 2 devices\n"
    missing = kubectl("logs", name, "-n", NS, "--previous", rc=1)
    assert f'previous terminated container "plugin" in pod "{name}" not found' in missing.stderr
    kube_api.set_pod_logs(NS, name, "could not load NVML library\n", previous=True)
    assert kubectl("logs", name, "-n", NS, "-p").stdout == "could not load NVML library\n"
    assert ("GET", f"/api/v1/namespaces/{NS}/pods/{name}/log", "", "") in kube_api.requests


def test_run_a_pod_and_read_its_logs(kube_api: KubeApiStandIn, kubectl: Kubectl) -> None:
    kube_api.add_node("node-1")

    def run_echo(pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        args = pod["spec"]["containers"][0]["args"]
        kube_api.set_pod_logs(meta["namespace"], meta["name"], " ".join(args) + "\n")
        kube_api.set_pod_phase(meta["namespace"], meta["name"], "Succeeded")

    kube_api.on_pod_created(run_echo)
    out = kubectl("run", "smoke", "--image=busybox", "--restart=Never", "--", "echo", "hello")
    assert out.stdout == "pod/smoke created\n"
    kube_api.wait_hooks_idle()
    assert kubectl("logs", "smoke").stdout == "echo hello\n"
    assert ("POST", "/api/v1/namespaces/default/pods", "application/json", "kubectl-run") in kube_api.requests
    kubectl("delete", "pod", "smoke")
    assert kube_api.get("Pod", "smoke", "default") is None


# The GPU Operator's ClusterPolicy ------------------------------------------------------


def test_cluster_policy_crd_appears_when_added(kube_api: KubeApiStandIn, kubectl: Kubectl) -> None:
    absent = kubectl("get", "clusterpolicies.nvidia.com", rc=1)
    assert 'the server doesn\'t have a resource type "clusterpolicies"' in absent.stderr
    kube_api.add_cluster_policy(state="ready")
    assert kubectl("get", "clusterpolicies.nvidia.com", "-o", "jsonpath={.items[0].status.state}").stdout == "ready"
    kube_api.set_cluster_policy_state("notReady")
    out = kubectl("get", "clusterpolicies.nvidia.com", "-o", "json").stdout
    [policy] = json.loads(out)["items"]
    assert policy["status"]["state"] == "notReady"
    assert policy["apiVersion"] == "nvidia.com/v1" and policy["kind"] == "ClusterPolicy"
    kubectl("get", "crd", "clusterpolicies.nvidia.com")


# Errors, faults, discovery -------------------------------------------------------------


def test_not_found_messages_are_kubectls_own(kube_api: KubeApiStandIn, kubectl: Kubectl) -> None:
    assert (
        kubectl("get", "ds", "nope", "-n", NS, rc=1).stderr.strip()
        == 'Error from server (NotFound): daemonsets.apps "nope" not found'
    )
    assert kubectl("get", "node", "nope", rc=1).stderr.strip() == 'Error from server (NotFound): nodes "nope" not found'
    assert (
        kubectl("get", "runtimeclass", "nvidia", rc=1).stderr.strip()
        == 'Error from server (NotFound): runtimeclasses.node.k8s.io "nvidia" not found'
    )
    elsewhere = daemonset()
    elsewhere["metadata"]["namespace"] = "gpunode-missing"
    assert (
        apply(kubectl, elsewhere, rc=1).stderr.strip()
        == 'Error from server (NotFound): namespaces "gpunode-missing" not found'
    )
    assert (
        kubectl("get", "pods", "-n", "gpunode-missing").stderr.strip()
        == "No resources found in gpunode-missing namespace."
    )


def test_unreachable_failing_and_hanging_server(kube_api: KubeApiStandIn, kubectl: Kubectl) -> None:
    kube_api.add_node("node-1")
    with kube_api.fault("unreachable"):
        out = kubectl("get", "nodes", rc=1)
        assert out.stderr.splitlines()[-1] == (
            f"The connection to the server 127.0.0.1:{kube_api.port} "
            "was refused - did you specify the right host or port?"
        )
    with kube_api.fault("error500", path_pattern="^/api/v1/nodes"):
        out = kubectl("get", "nodes", rc=1)
        assert "Error from server (InternalError): Internal error occurred:" in out.stderr
        kubectl("get", "namespaces")
    with kube_api.fault("hang"):
        began = time.monotonic()
        out = kubectl("get", "nodes", "--request-timeout=1s", rc=1)
        # Which of Go's two deadlines fires first varies; both are kubectl's real words.
        assert re.search(
            r"Unable to connect to the server: .*(Client\.Timeout exceeded while "
            r"awaiting headers|context deadline exceeded)",
            out.stderr,
        )
        assert time.monotonic() - began < 10
    assert kubectl("get", "nodes", "-o", "name").stdout == "node/node-1\n"


def test_discovery_aggregated_and_legacy(tmp_path: Path, kubectl_path: Path) -> None:
    for aggregated in (True, False):
        with KubeApiStandIn(
            workdir=tmp_path / f"api-{aggregated}", kubectl=kubectl_path, aggregated_discovery=aggregated
        ) as api:
            result = api.kubectl("api-resources", "-o", "name")
            assert result.returncode == 0, result.stderr
            names = set(result.stdout.split())
            assert {
                "nodes",
                "pods",
                "events",
                "namespaces",
                "daemonsets.apps",
                "runtimeclasses.node.k8s.io",
                "events.events.k8s.io",
            } <= names
            paths = {r.path for r in api.request_log}
            if aggregated:
                assert "/apis/apps/v1" not in paths
            else:
                assert {"/api/v1", "/apis/apps/v1", "/apis/node.k8s.io/v1"} <= paths


def test_cluster_info(kube_api: KubeApiStandIn, kubectl: Kubectl) -> None:
    assert f"Kubernetes control plane is running at {kube_api.url}" in kubectl("cluster-info").stdout


# gpunode's own manifests -----------------------------------------------------------------


@pytest.mark.parametrize(("plugin", "mode"), [("bundled", "mount"), ("nvidia", "runtime")])
def test_gpunodes_rendered_manifests_apply_and_roll_out(
    kube_api: KubeApiStandIn, kubectl: Kubectl, plugin: str, mode: str
) -> None:
    from gpunode.bootstrap.core.kube.manifests import render_manifests
    from gpunode.bootstrap.core.kube.plugin_deployment import PluginDeployment

    choices: dict[str, Any] = {"plugin": plugin, "mode": mode}
    deployment = PluginDeployment(driver_version="535.288.01", lib_path=LIBRARY, **choices)
    text = render_manifests(deployment)
    gpu_node(kube_api, "gpu-1", taints=["nvidia.com/gpu=present:NoSchedule"], labels={"kubernetes.io/os": "linux"})
    mark_ready_on_create(kube_api)
    out = kubectl("apply", "--server-side", "--field-manager=gpunode", "-f", "-", stdin=text)
    [name] = [line.split("/")[1].split()[0] for line in out.stdout.splitlines() if line.startswith("daemonset.apps/")]
    first = kube_api.get("DaemonSet", name, NS)
    kubectl("rollout", "status", f"ds/{name}", "-n", NS, "--timeout=10s")
    kubectl("apply", "--server-side", "--field-manager=gpunode", "-f", "-", stdin=text)
    again = kube_api.get("DaemonSet", name, NS)
    assert first is not None and again is not None
    assert again["metadata"]["generation"] == first["metadata"]["generation"] == 1
    assert again["spec"] == first["spec"]
    assert again["status"]["desiredNumberScheduled"] == 1  # the taint is tolerated
    assert kubectl("diff", "--server-side", "--field-manager=gpunode", "-f", "-", stdin=text).stdout == ""


# Wiring a pod to a real process --------------------------------------------------------


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    # Unix socket paths are limited to 107 bytes: pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="gpn-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_daemonset_pod_runs_as_a_real_process(kube_api: KubeApiStandIn, kubectl: Kubectl, short_tmp: Path) -> None:
    gpu_node(kube_api)
    library = short_tmp / "libnvidia-ml.so.535.288.01"
    library.write_bytes(b"not really a library")
    runner = PodProcessRunner(kube_api, short_tmp / "pods", host_paths={LIBRARY: library})
    try:
        script = (
            "echo plugin on $NODE_NAME; ls $LD_LIBRARY_PATH; "
            "trap 'echo stopping; exit 0' TERM; while true; do sleep 0.05; done"
        )
        ds = daemonset(command=["sh", "-c", script])
        ds["spec"]["template"]["spec"]["containers"][0]["env"].append(
            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
        )
        apply(kubectl, ds)
        kubectl("rollout", "status", f"ds/{DS}", "-n", NS, "--timeout=10s")
        [pod] = pods_of(kube_api)
        logs = eventually(
            lambda: (
                kubectl("logs", f"ds/{DS}", "-n", NS).stdout.count("\n") >= 2
                and kubectl("logs", f"ds/{DS}", "-n", NS).stdout
            )
        )
        # The hostPath file is mounted where the manifest says, found via LD_LIBRARY_PATH.
        assert logs == "plugin on gpu-1\nlibnvidia-ml.so.1\n"
        proc = runner.processes[(NS, pod["metadata"]["name"])]
        kubectl("delete", "ds", DS, "-n", NS)
        kube_api.wait_hooks_idle()
        assert proc.poll() == 0  # stopped by SIGTERM through the deleted-pod hook
        assert runner.processes == {}
    finally:
        runner.stop_all()


def test_a_hostpath_file_that_is_not_there_fails_to_mount(
    kube_api: KubeApiStandIn, kubectl: Kubectl, short_tmp: Path
) -> None:
    """F2 (docs/failure-modes.md) as the kubelet reports it: the pod never starts, the event says why."""
    gpu_node(kube_api)
    not_a_file = short_tmp / "lib-dir"
    not_a_file.mkdir()
    runner = PodProcessRunner(kube_api, short_tmp / "pods", host_paths={LIBRARY: not_a_file})
    try:
        apply(kubectl, daemonset(command=["sleep", "30"]))
        kube_api.wait_hooks_idle()
        [pod] = pods_of(kube_api)
        name = pod["metadata"]["name"]
        waiting = kubectl(
            "get", "pod", name, "-n", NS, "-o", "jsonpath={.status.containerStatuses[0].state.waiting.reason}"
        )
        assert waiting.stdout == "ContainerCreating"
        described = kubectl("describe", "pod", name, "-n", NS).stdout
        assert (
            f'MountVolume.SetUp failed for volume "nvml" : hostPath type check failed: {LIBRARY} is not a file'
        ) in described
        assert runner.processes == {}
    finally:
        runner.stop_all()


def test_the_whole_path_from_apply_to_allocatable(
    kube_api: KubeApiStandIn, kubectl: Kubectl, cache_dir: Path, short_tmp: Path
) -> None:
    """gpunode's DaemonSet, applied by kubectl, runs the real bundled plugin (fake NVML with
    2 GPUs, mounted as the manifest says); the kubelet stand-in publishes what the plugin
    registers into the node's allocatable, as the kubelet would; kubectl sees it."""
    from standins.fake_nvml import FakeNvml, FakeNvmlConfig, build_fake_nvml
    from standins.kubelet import HEALTHY, DeviceState, KubeletStandIn

    from gpunode.bootstrap.core.kube.manifests import render_manifests
    from gpunode.bootstrap.core.kube.plugin_deployment import PluginDeployment

    gpu = "nvidia.com/gpu"
    nvml = FakeNvml(
        short_tmp / "nvml", build_fake_nvml(cache_dir), FakeNvmlConfig.uniform(2, driver_version="535.288.01")
    )
    library = nvml.library_dir / "libnvidia-ml.so.1"

    def publish(resource: str, devices: list[DeviceState]) -> None:
        healthy = sum(1 for d in devices if d.health == HEALTHY)
        kube_api.set_node_status("gpu-1", capacity={resource: str(len(devices))}, allocatable={resource: str(healthy)})

    gpu_node(kube_api, labels={"kubernetes.io/os": "linux"})
    with KubeletStandIn(short_tmp / "kubelet", on_update=publish) as kubelet:
        runner = PodProcessRunner(
            kube_api,
            short_tmp / "pods",
            host_paths={LIBRARY: library, "/var/lib/kubelet/device-plugins": kubelet.dir},
            extra_env={k: v for k, v in nvml.env().items() if k != "LD_LIBRARY_PATH"},
            ready=lambda pod, proc: kubelet.registered(gpu),
        )
        try:
            text = render_manifests(PluginDeployment(driver_version="535.288.01", lib_path=LIBRARY))
            kubectl("apply", "--server-side", "--field-manager=gpunode", "-f", "-", stdin=text)
            name = "gpunode-device-plugin-535-288-01"
            kubectl("rollout", "status", f"ds/{name}", "-n", NS, "--timeout=30s")
            kubectl("wait", "--for=jsonpath={.status.allocatable.nvidia\\.com/gpu}=2", "node/gpu-1", "--timeout=30s")
            assert kubelet.healthy_count(gpu) == 2
            kubectl("delete", "ds", name, "-n", NS)
            kube_api.wait_hooks_idle()
            # The plugin is gone: the kubelet keeps the key with 0 (F9), not absent.
            zero = eventually(
                lambda: (
                    kubectl("get", "node", "gpu-1", "-o", "jsonpath={.status.allocatable.nvidia\\.com/gpu}").stdout
                    == "0"
                )
            )
            assert zero
        finally:
            runner.stop_all()


# kubectl from Debian where the system has none ------------------------------------------


@pytest.mark.slow
def test_kubectl_fallback_from_debians_package(cache_dir: Path, kube_api: KubeApiStandIn) -> None:
    """kubectl_binary's fallback: Debian 13's kubernetes-client (-> kubectl), unpacked into
    the cache (about 15 s the first time, then cached)."""
    binary = debian_kubectl(cache_dir)
    assert binary.is_relative_to(cache_dir)
    result = subprocess.run(
        [str(binary), "--kubeconfig", str(kube_api.kubeconfig_path), "version", "-o", "json"],
        capture_output=True,
        text=True,
        env=kube_api.kubectl_env(),
        check=True,
    )
    versions = json.loads(result.stdout)
    assert versions["clientVersion"]["gitVersion"].startswith("v1.32.")
    assert versions["serverVersion"]["gitVersion"] == "v1.32.3"
