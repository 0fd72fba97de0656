"""Cluster steps with GPU sharing, against the API stand-in and the real kubectl: the
ConfigMap of configs and the node-reading account applied before the DaemonSet that mounts
them, each node labelled nvidia.com/device-plugin.config with its own choice, and verify
expecting GPUs x replicas (under the renamed resource when the config renames it)."""

from __future__ import annotations

from typing import Any

from standins.kube_api import KubeApiStandIn

from gpunode.bootstrap.cluster.kubectl import KubeAccess, Kubectl
from gpunode.bootstrap.cluster.steps import run_cluster_steps
from gpunode.bootstrap.cluster.verify import VerifyRequest, verify_nodes
from gpunode.bootstrap.core.kube.cluster_plan import ClusterSettings, NodeTarget
from gpunode.bootstrap.core.kube.plugin_config import named_config
from gpunode.bootstrap.core.report import StepResult

LIB = "/usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.535.261.03"
BUSES = ("0000:3b:00.0", "0000:5b:00.0")
NS = "kube-system"
RENAMED = """\
version: v1
sharing:
  timeSlicing:
    renameByDefault: true
    resources:
    - name: nvidia.com/gpu
      replicas: 3
"""


def target(name: str, config: str | None) -> NodeTarget:
    return NodeTarget(name, name, "535.261.03", LIB, "/var/lib/kubelet", BUSES, "daemonset", config)


def kubelet(api: KubeApiStandIn, advertised: dict[str, dict[str, str]]) -> None:
    """Bound pods run; a device plugin pod makes its node advertise what the test says."""

    def started(pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        api.set_pod_phase(meta["namespace"], meta["name"], "Running", ready=True)
        if any(r.get("kind") == "DaemonSet" for r in meta.get("ownerReferences") or []):
            node = pod["spec"]["nodeName"]
            api.set_node_status(node, capacity=advertised[node], allocatable=advertised[node])

    api.on_pod_created(started)


def run(api: KubeApiStandIn, targets: list[NodeTarget], settings: ClusterSettings) -> dict[str, dict[str, StepResult]]:
    kubectl = Kubectl(KubeAccess(kubeconfig=str(api.kubeconfig_path)))
    return {h: {s.name: s for s in steps} for h, steps in run_cluster_steps(kubectl, targets, settings).items()}


def test_sharing_per_node_configs_labels_and_verify(kube_api: KubeApiStandIn) -> None:
    kubelet(
        kube_api,
        {
            "plain": {"nvidia.com/gpu.shared": "6"},
            "sliced": {"nvidia.com/gpu": "8"},
            "renamed": {"nvidia.com/gpu.shared": "6", "nvidia.com/gpu": "0"},
        },
    )
    for name in ("plain", "sliced", "renamed"):
        kube_api.add_node(name)
    settings = ClusterSettings(
        rollout_timeout=15, verify_timeout=15, plugin_config_files=(named_config("renamed-3", RENAMED, "r.yaml"),)
    )
    results = run(
        kube_api, [target("plain", None), target("sliced", "time-slicing-4"), target("renamed", "renamed-3")], settings
    )
    # A node that chose nothing gets the default config: the first --plugin-config.
    assert "nvidia.com/gpu.shared = 6" in results["plain"]["verify"].detail, results["plain"]
    assert results["sliced"]["verify"].status == "unchanged", results["sliced"]
    assert "nvidia.com/gpu = 8" in results["sliced"]["verify"].detail
    assert "nvidia.com/gpu.shared = 6" in results["renamed"]["verify"].detail, results["renamed"]

    configmap = kube_api.get("ConfigMap", "gpunode-device-plugin-configs", NS)
    assert configmap is not None
    # The first file is the default; the shortcut a node chose is NVIDIA's example config.
    assert list(configmap["data"]) == ["renamed-3", "time-slicing-4"]
    assert configmap["data"]["renamed-3"] == RENAMED
    labels = {n: kube_api.get("Node", n)["metadata"]["labels"] for n in ("plain", "sliced", "renamed")}
    assert "nvidia.com/device-plugin.config" not in labels["plain"]
    assert labels["sliced"]["nvidia.com/device-plugin.config"] == "time-slicing-4"
    assert labels["renamed"]["nvidia.com/device-plugin.config"] == "renamed-3"
    assert kube_api.get("ServiceAccount", "gpunode-device-plugin", NS) is not None
    (daemonset,) = kube_api.list("DaemonSet", namespace=NS)
    volumes = daemonset["spec"]["template"]["spec"]["volumes"]
    assert any(v.get("configMap", {}).get("name") == "gpunode-device-plugin-configs" for v in volumes)
    assert "gpunode-device-plugin-configs" in results["sliced"]["device-plugin"].detail

    # `gpunode verify` on its own reads each node's config in force (its label, else the
    # DaemonSet's default) from the ConfigMap: GPUs x replicas under the advertised name.
    kubectl = Kubectl(KubeAccess(kubeconfig=str(kube_api.kubeconfig_path)))
    checks = {c.verdict.node: c for c in verify_nodes(kubectl, VerifyRequest(nodes=("plain", "sliced", "renamed")))}
    assert checks["sliced"].verdict.headline == "Allocatable nvidia.com/gpu = 8: OK"
    assert checks["renamed"].verdict.headline == "Allocatable nvidia.com/gpu.shared = 6: OK"
    assert checks["plain"].verdict.headline == "Allocatable nvidia.com/gpu.shared = 6: OK"

    # A second run changes nothing.
    again = run(
        kube_api, [target("plain", None), target("sliced", "time-slicing-4"), target("renamed", "renamed-3")], settings
    )
    assert again["sliced"]["device-plugin"].status == "unchanged", again["sliced"]["device-plugin"]


def test_verify_fails_when_the_node_shows_whole_gpus_under_a_shared_config(kube_api: KubeApiStandIn) -> None:
    kubelet(kube_api, {"sliced": {"nvidia.com/gpu": "2"}})
    kube_api.add_node("sliced")
    settings = ClusterSettings(rollout_timeout=15, verify_timeout=3)
    results = run(kube_api, [target("sliced", "time-slicing-4")], settings)
    verify = results["sliced"]["verify"]
    assert verify.status == "failed" and "8" in verify.detail, verify


def test_a_node_naming_an_unknown_config_is_refused(kube_api: KubeApiStandIn) -> None:
    kube_api.add_node("gpu1")
    results = run(kube_api, [target("gpu1", "nope")], ClusterSettings(rollout_timeout=5, verify_timeout=3))
    step = results["gpu1"]["runtimeclass"]
    assert step.status == "failed" and "'nope' is not among the --plugin-config files" in step.detail
    assert kube_api.list("DaemonSet", namespace=NS) == []
