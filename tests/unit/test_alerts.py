"""`gpunode render alerts`: the rules, evaluated by Prometheus's own `promtool test rules`
over series shaped like kube-state-metrics' and the bundled plugin's: each alert fires on
the failure it is for, after its `for`, and stays silent on CPU nodes, healthy GPU nodes,
other DaemonSets and one-off events."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpunode.bootstrap.core.kube.alerts import AlertOptions, alert_rules, ksm_label_name


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: install Debian's prometheus package (tests/run does)"
    return found


def gpunode(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpunode.bootstrap.cli.main", *args], capture_output=True, text=True, check=False
    )


def rule(name: str) -> dict[str, Any]:
    return next(r for r in alert_rules(AlertOptions()) if r["alert"] == name)


def annotations(name: str, labels: dict[str, str], value: str) -> dict[str, str]:
    """The rule's annotations as Prometheus renders them for one alert (the templates here
    use only $labels.<name> and $value)."""
    out = {}
    for key, text in rule(name)["annotations"].items():
        text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m.group(1), ""), text)
        out[key] = text.replace("{{ $value }}", value)
    return out


def alert(name: str, value: str, **labels: str) -> dict[str, Any]:
    full = {"severity": rule(name)["labels"]["severity"], **labels}
    return {"exp_labels": full, "exp_annotations": annotations(name, labels, value)}


KSM = {"job": "kube-state-metrics", "instance": "ksm:8080"}
PLUGIN = {"job": "gpunode-plugin", "instance": "10.0.0.7:9400"}


def series(metric: str, values: str, **labels: str) -> dict[str, str]:
    text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{metric}{{{text}}}", "values": values}


def node_labels(node: str, **labels: str) -> dict[str, str]:
    return series("kube_node_labels", "1x90", node=node, **KSM, **{ksm_label_name(k): v for k, v in labels.items()})


def allocatable(node: str, values: str) -> dict[str, str]:
    return series("kube_node_status_allocatable", values, node=node, resource="nvidia_com_gpu", unit="integer", **KSM)


TESTS: list[dict[str, Any]] = [
    {
        "name": "zero on a GPU node fires after 2m; zero on a CPU node and two GPUs never do",
        "interval": "1m",
        "input_series": [
            node_labels("gpu-1", **{"gpunode.io/driver-version": "535.261.03"}),
            node_labels("gpu-2", **{"nvidia.com/gpu.present": "true"}),
            node_labels("cpu-1"),
            allocatable("gpu-1", "2 2 0x20"),  # the plugin went away at 2m; the key stays, at 0
            allocatable("gpu-2", "2x20"),
            allocatable("cpu-1", "0x20"),  # a CPU node that once ran the plugin: not a GPU node
        ],
        "alert_rule_test": [
            {"eval_time": "3m", "alertname": "GpuNodeAdvertisesZeroGpus", "exp_alerts": []},
            {
                "eval_time": "5m",
                "alertname": "GpuNodeAdvertisesZeroGpus",
                "exp_alerts": [
                    alert(
                        "GpuNodeAdvertisesZeroGpus", "0", node="gpu-1", resource="nvidia_com_gpu", unit="integer", **KSM
                    )
                ],
            },
            {"eval_time": "10m", "alertname": "GpuNodeWithoutGpuResource", "exp_alerts": []},
        ],
    },
    {
        "name": "the key absent on a GPU node fires after 5m, on a CPU node never",
        "interval": "1m",
        "input_series": [
            node_labels("gpu-3", **{"nvidia.com/gpu.present": "true", "gpunode.io/driver-version": "550.54.15"}),
            node_labels("cpu-1"),
            allocatable("gpu-1", "1x20"),
        ],
        "alert_rule_test": [
            {"eval_time": "4m", "alertname": "GpuNodeWithoutGpuResource", "exp_alerts": []},
            {
                "eval_time": "6m",
                "alertname": "GpuNodeWithoutGpuResource",
                "exp_alerts": [alert("GpuNodeWithoutGpuResource", "1", node="gpu-3")],
            },
            {"eval_time": "6m", "alertname": "GpuNodeAdvertisesZeroGpus", "exp_alerts": []},
        ],
    },
    {
        "name": "a device plugin DaemonSet not ready for 5m fires; other DaemonSets never",
        "interval": "1m",
        "input_series": [
            series(
                "kube_daemonset_status_number_ready",
                "1x20",
                namespace="kube-system",
                daemonset="gpunode-device-plugin-535-261-03",
                **KSM,
            ),
            series(
                "kube_daemonset_status_desired_number_scheduled",
                "2x20",
                namespace="kube-system",
                daemonset="gpunode-device-plugin-535-261-03",
                **KSM,
            ),
            series(
                "kube_daemonset_status_number_ready",
                "2 2 1x20",
                namespace="gpu-operator",
                daemonset="nvidia-device-plugin-daemonset",
                **KSM,
            ),
            series(
                "kube_daemonset_status_desired_number_scheduled",
                "2x20",
                namespace="gpu-operator",
                daemonset="nvidia-device-plugin-daemonset",
                **KSM,
            ),
            series(
                "kube_daemonset_status_number_ready", "0x20", namespace="kube-system", daemonset="kube-proxy", **KSM
            ),
            series(
                "kube_daemonset_status_desired_number_scheduled",
                "3x20",
                namespace="kube-system",
                daemonset="kube-proxy",
                **KSM,
            ),
        ],
        "alert_rule_test": [
            {"eval_time": "4m", "alertname": "GpuDevicePluginDaemonSetNotReady", "exp_alerts": []},
            {
                "eval_time": "6m",
                "alertname": "GpuDevicePluginDaemonSetNotReady",
                "exp_alerts": [
                    alert(
                        "GpuDevicePluginDaemonSetNotReady",
                        "1",
                        namespace="kube-system",
                        daemonset="gpunode-device-plugin-535-261-03",
                        **KSM,
                    )
                ],
            },
            {
                "eval_time": "8m",
                "alertname": "GpuDevicePluginDaemonSetNotReady",
                "exp_alerts": [
                    alert(
                        "GpuDevicePluginDaemonSetNotReady",
                        "1",
                        namespace="gpu-operator",
                        daemonset="nvidia-device-plugin-daemonset",
                        **KSM,
                    ),
                    alert(
                        "GpuDevicePluginDaemonSetNotReady",
                        "1",
                        namespace="kube-system",
                        daemonset="gpunode-device-plugin-535-261-03",
                        **KSM,
                    ),
                ],
            },
        ],
    },
    {
        "name": "an Unhealthy device fires after 2m; a transient XID that recovers in 1m does not",
        "interval": "1m",
        "input_series": [
            series("gpunode_plugin_devices", "0 1 1 1 1 1 1", resource="nvidia.com/gpu", health="Unhealthy", **PLUGIN),
            series(
                "gpunode_plugin_devices",
                "0 0 1 0 0 0 0",
                resource="nvidia.com/gpu",
                health="Unhealthy",
                job="gpunode-plugin",
                instance="10.0.0.8:9400",
            ),
            series("gpunode_plugin_devices", "8 7 7 7 7 7 7", resource="nvidia.com/gpu", health="Healthy", **PLUGIN),
        ],
        "alert_rule_test": [
            {"eval_time": "2m", "alertname": "GpuDeviceUnhealthy", "exp_alerts": []},
            {
                "eval_time": "4m",
                "alertname": "GpuDeviceUnhealthy",
                "exp_alerts": [
                    alert("GpuDeviceUnhealthy", "1", resource="nvidia.com/gpu", health="Unhealthy", **PLUGIN)
                ],
            },
        ],
    },
    {
        "name": "registrations that keep rising fire; one kubelet restart does not",
        "interval": "1m",
        # Every 5 minutes a new registration for an hour (a kubelet or plugin in a loop),
        # next to a plugin that registered once at start and once after one kubelet restart.
        "input_series": [
            series(
                "gpunode_plugin_registrations_total",
                " ".join(["1+0x4"] + [f"{i}+0x4" for i in range(2, 14)]),
                resource="nvidia.com/gpu",
                **PLUGIN,
            ),
            series(
                "gpunode_plugin_registrations_total",
                "1+0x20 2+0x44",
                resource="nvidia.com/gpu",
                job="gpunode-plugin",
                instance="10.0.0.8:9400",
            ),
        ],
        "alert_rule_test": [
            {"eval_time": "20m", "alertname": "GpuDevicePluginKeepsReRegistering", "exp_alerts": []},
            {
                "eval_time": "45m",
                "alertname": "GpuDevicePluginKeepsReRegistering",
                "exp_alerts": [alert("GpuDevicePluginKeepsReRegistering", "1", resource="nvidia.com/gpu", **PLUGIN)],
            },
        ],
    },
    {
        "name": "NVML down in a running plugin",
        "interval": "1m",
        "input_series": [
            series("gpunode_plugin_nvml_up", "0x10", **PLUGIN),
            series("gpunode_plugin_nvml_up", "1x10", job="gpunode-plugin", instance="10.0.0.8:9400"),
        ],
        "alert_rule_test": [
            {
                "eval_time": "6m",
                "alertname": "GpuDevicePluginNvmlDown",
                "exp_alerts": [alert("GpuDevicePluginNvmlDown", "0", **PLUGIN)],
            },
        ],
    },
]


def test_promtool_checks_the_plain_rule_file(tmp_path: Path) -> None:
    result = gpunode("render", "alerts", "--plain")
    assert result.returncode == 0, result.stderr
    (tmp_path / "rules.yml").write_text(result.stdout)
    check = subprocess.run(
        [promtool(), "check", "rules", str(tmp_path / "rules.yml")], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 12 rules found" in check.stdout


def test_promtool_evaluates_every_rule_against_its_failure(tmp_path: Path) -> None:
    rules = gpunode("render", "alerts", "--plain").stdout
    (tmp_path / "rules.yml").write_text(rules)
    (tmp_path / "tests.yml").write_text(
        yaml.safe_dump({"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": TESTS}, sort_keys=False)
    )
    result = subprocess.run(
        [promtool(), "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_rules_fail_promtool_when_they_are_wrong(tmp_path: Path) -> None:
    """The test above can fail: the same series against a rule that uses absent() for the
    zero case (the F9 mistake) do not give the expected alert."""
    broken = yaml.safe_load(gpunode("render", "alerts", "--plain").stdout)
    for r in broken["groups"][0]["rules"]:
        if r["alert"] == "GpuNodeAdvertisesZeroGpus":
            r["expr"] = 'absent(kube_node_status_allocatable{resource="nvidia_com_gpu"})'
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(broken))
    (tmp_path / "tests.yml").write_text(
        yaml.safe_dump({"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": TESTS[:1]}, sort_keys=False)
    )
    result = subprocess.run(
        [promtool(), "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "GpuNodeAdvertisesZeroGpus" in result.stdout + result.stderr


def test_prometheus_rule_carries_the_same_rules(tmp_path: Path) -> None:
    result = gpunode("render", "alerts", "--namespace", "observability", "--label", "release=kube-prometheus-stack")
    assert result.returncode == 0, result.stderr
    document = yaml.safe_load(result.stdout)
    assert document["apiVersion"] == "monitoring.coreos.com/v1" and document["kind"] == "PrometheusRule"
    assert document["metadata"]["namespace"] == "observability"
    assert document["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    plain = yaml.safe_load(gpunode("render", "alerts", "--plain").stdout)
    assert document["spec"]["groups"] == plain["groups"]
    # The groups are a valid rule file as they stand (what the Prometheus Operator loads).
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": document["spec"]["groups"]}))
    check = subprocess.run(
        [promtool(), "check", "rules", str(tmp_path / "rules.yml")], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_custom_gpu_labels_are_named_as_kube_state_metrics_exports_them() -> None:
    result = gpunode(
        "render",
        "alerts",
        "--plain",
        "--gpu-node-label",
        "feature.node.kubernetes.io/pci-10de.present=true",
        "--gpu-node-label",
        "example.com/hasGPU",
    )
    assert result.returncode == 0, result.stderr
    zero = yaml.safe_load(result.stdout)["groups"][0]["rules"][0]["expr"]
    assert 'label_feature_node_kubernetes_io_pci_10de_present="true"' in zero
    assert 'label_example_com_has_gpu!=""' in zero
    assert "gpunode_io_driver_version" not in zero


@pytest.mark.parametrize(
    "args, words",
    [
        (["--gpu-node-label", "not a label"], "not a Kubernetes label key"),
        (["--daemonset-regex", "(unclosed"], "not an RE2 regular expression"),
        (["--daemonset-regex", "(?=dev).*"], "invalid perl operator"),
        (["--label", "novalue"], "KEY=VALUE"),
        (["--namespace", "Bad_NS"], "not a namespace name"),
    ],
)
def test_bad_options_exit_2_with_nothing_on_stdout(args: list[str], words: str) -> None:
    result = gpunode("render", "alerts", *args)
    assert result.returncode == 2 and result.stdout == ""
    assert words in result.stderr and "Fix:" in result.stderr
