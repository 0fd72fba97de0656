"""The cluster steps against the API stand-in with the real kubectl, without test hosts.

The kubelet here is the smallest one: a bound pod becomes Running and Ready and, for a
device plugin pod, the node's allocatable gets the GPUs (the whole path, with the real
plugin process, is tests/e2e/test_cluster.py). What these tests pin down is the cluster
layer's own decisions: which DaemonSet serves which node, what it never touches, what it
refuses, what a dry run writes (nothing), and what an unreachable cluster gives.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from standins.kube_api import KubeApiStandIn

from gpunode.bootstrap.cluster.kubectl import KubeAccess, Kubectl
from gpunode.bootstrap.cluster.steps import run_cluster_steps
from gpunode.bootstrap.core.kube.cluster_plan import ClusterSettings, NodeTarget
from gpunode.bootstrap.core.kube.taints import parse_toleration
from gpunode.bootstrap.core.report import StepResult

DEBIAN = "/usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.535.261.03"
UBUNTU = "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.535.261.03"
BUSES = ("0000:3b:00.0", "0000:5b:00.0")
NS = "kube-system"
FAST = ClusterSettings(rollout_timeout=15, verify_timeout=15)


def target(name: str, library: str = DEBIAN, plugin_mode: str = "daemonset") -> NodeTarget:
    return NodeTarget(name, name, "535.261.03", library, "/var/lib/kubelet", BUSES, plugin_mode)


def small_kubelet(api: KubeApiStandIn) -> None:
    """Every bound pod runs; a device plugin pod makes its node advertise its two GPUs."""

    def started(pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        api.set_pod_phase(meta["namespace"], meta["name"], "Running", ready=True)
        if any(r.get("kind") == "DaemonSet" for r in meta.get("ownerReferences") or []):
            api.set_node_status(
                pod["spec"]["nodeName"], capacity={"nvidia.com/gpu": "2"}, allocatable={"nvidia.com/gpu": "2"}
            )

    api.on_pod_created(started)


def run(
    api: KubeApiStandIn, targets: list[NodeTarget], settings: ClusterSettings = FAST, dry_run: bool = False
) -> dict[str, dict[str, StepResult]]:
    kubectl = Kubectl(KubeAccess(kubeconfig=str(api.kubeconfig_path)))
    results = run_cluster_steps(kubectl, targets, settings, dry_run=dry_run)
    return {host: {s.name: s for s in steps} for host, steps in results.items()}


def gpunode_daemonsets(api: KubeApiStandIn) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in api.list("DaemonSet", namespace=NS)}


def library_of(pod_or_ds: dict[str, Any]) -> str:
    spec = pod_or_ds["spec"]["template"]["spec"] if pod_or_ds["kind"] == "DaemonSet" else pod_or_ds["spec"]
    return str(next(v["hostPath"]["path"] for v in spec["volumes"] if v["name"] == "nvml-library"))


def test_debian_and_ubuntu_nodes_on_one_driver_each_mount_their_own_file(kube_api: KubeApiStandIn) -> None:
    small_kubelet(kube_api)
    kube_api.add_node("deb1")
    kube_api.add_node("deb2")
    kube_api.add_node("ubu1")
    results = run(kube_api, [target("deb1"), target("deb2"), target("ubu1", UBUNTU)])
    for host in ("deb1", "deb2", "ubu1"):
        assert results[host]["verify"].detail == "Allocatable nvidia.com/gpu = 2: OK", results[host]
    daemonsets = gpunode_daemonsets(kube_api)
    assert sorted(library_of(d) for d in daemonsets.values()) == [UBUNTU, DEBIAN]
    kube_api.wait_hooks_idle()
    placed = {p["spec"]["nodeName"]: p for p in kube_api.list("Pod", namespace=NS)}
    assert sorted(placed) == ["deb1", "deb2", "ubu1"], "one plugin pod per node, never two"
    assert {n: library_of(p) for n, p in placed.items()} == {"deb1": DEBIAN, "deb2": DEBIAN, "ubu1": UBUNTU}


def test_daemonsets_gpunode_does_not_own_are_never_changed_or_deleted(kube_api: KubeApiStandIn) -> None:
    small_kubelet(kube_api)
    kube_api.add_node("gpu1")
    run(kube_api, [target("gpu1")])
    (name,) = gpunode_daemonsets(kube_api)
    # Someone else's DaemonSet under gpunode's name (Helm took it over), and an operator's.
    taken = gpunode_daemonsets(kube_api)[name]
    taken["metadata"]["labels"]["app.kubernetes.io/managed-by"] = "Helm"
    for key in ("resourceVersion", "managedFields", "uid", "creationTimestamp", "generation"):
        taken["metadata"].pop(key, None)
    taken.pop("status", None)
    kube_api.replace(taken, field_manager="helm")
    kube_api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "gpu-operator"}})
    operator = dict(
        taken,
        metadata={
            "name": "nvidia-device-plugin-daemonset",
            "namespace": "gpu-operator",
            "labels": {"app.kubernetes.io/managed-by": "gpu-operator"},
        },
    )
    kube_api.create(operator, field_manager="gpu-operator")
    before = gpunode_daemonsets(kube_api)[name]["metadata"]["resourceVersion"]
    results = run(kube_api, [target("gpu1")])
    plugin = results["gpu1"]["device-plugin"]
    assert plugin.status == "failed" and "is not gpunode's" in plugin.detail
    assert gpunode_daemonsets(kube_api)[name]["metadata"]["resourceVersion"] == before
    assert kube_api.get("DaemonSet", "nvidia-device-plugin-daemonset", "gpu-operator") is not None


def test_someone_elses_runtimeclass_is_left_alone_or_named_when_wrong(kube_api: KubeApiStandIn) -> None:
    small_kubelet(kube_api)
    kube_api.add_node("gpu1")
    kube_api.create(
        {
            "apiVersion": "node.k8s.io/v1",
            "kind": "RuntimeClass",
            "metadata": {"name": "nvidia", "labels": {"app.kubernetes.io/component": "gpu-operator"}},
            "handler": "nvidia",
        },
        field_manager="gpu-operator",
    )
    kube_api.clear_requests()
    results = run(kube_api, [target("gpu1")])
    assert results["gpu1"]["runtimeclass"].status == "unchanged"
    assert "not gpunode's: left as it is" in results["gpu1"]["runtimeclass"].detail
    assert not [r for r in kube_api.requests if "runtimeclasses" in r.path and r.method != "GET"]
    kube_api.delete("RuntimeClass", "nvidia")
    kube_api.create(
        {
            "apiVersion": "node.k8s.io/v1",
            "kind": "RuntimeClass",
            "metadata": {"name": "nvidia"},
            "handler": "nvidia-cdi",
        },
        field_manager="someone",
    )
    results = run(kube_api, [target("gpu1")])
    failed = results["gpu1"]["runtimeclass"]
    assert failed.status == "failed" and "'nvidia-cdi'" in failed.detail and "F17" in failed.detail
    assert {s.status for name, s in results["gpu1"].items() if name != "runtimeclass"} == {"skipped"}


def test_an_update_that_would_strand_another_node_is_refused(kube_api: KubeApiStandIn) -> None:
    small_kubelet(kube_api)
    kube_api.add_node("gpu1")
    kube_api.add_node("gpu2", taints=["dedicated=ml:NoSchedule"])
    tolerant = ClusterSettings(
        rollout_timeout=15, verify_timeout=15, tolerations=(parse_toleration("dedicated=ml:NoSchedule"),)
    )
    assert run(kube_api, [target("gpu1"), target("gpu2")], tolerant)["gpu2"]["verify"].status == "unchanged"
    (name,) = gpunode_daemonsets(kube_api)
    before = gpunode_daemonsets(kube_api)[name]["metadata"]["generation"]
    # gpu1 alone, the toleration forgotten: gpu2's plugin would not come back.
    results = run(kube_api, [target("gpu1")])
    plugin = results["gpu1"]["device-plugin"]
    assert plugin.status == "failed" and "refusing to update" in plugin.detail
    assert "gpu2" in plugin.detail and "--toleration dedicated=ml:NoSchedule" in plugin.detail
    assert gpunode_daemonsets(kube_api)[name]["metadata"]["generation"] == before


def test_dry_run_writes_nothing(kube_api: KubeApiStandIn) -> None:
    kube_api.add_node("gpu1")
    results = run(kube_api, [target("gpu1")], dry_run=True)
    assert {n: s.status for n, s in results["gpu1"].items()} == {
        "runtimeclass": "changed",
        "node-label": "changed",
        "device-plugin": "changed",
        "verify": "skipped",
    }
    assert results["gpu1"]["device-plugin"].detail.startswith(
        f"create DaemonSet {NS}/gpunode-device-plugin-535-261-03-"
    )
    assert kube_api.get("RuntimeClass", "nvidia") is None
    assert gpunode_daemonsets(kube_api) == {}
    node = kube_api.get("Node", "gpu1")
    assert node is not None and "gpunode.io/driver-version" not in node["metadata"]["labels"]


def test_a_node_that_is_not_in_the_cluster_is_named(kube_api: KubeApiStandIn) -> None:
    results = run(kube_api, [target("gpu7")])
    label = results["gpu7"]["node-label"]
    assert label.status == "failed" and "node gpu7 is not registered in the cluster" in label.detail
    assert results["gpu7"]["device-plugin"].status == "skipped"
    assert gpunode_daemonsets(kube_api) == {}


def test_an_unreachable_cluster_fails_the_step_with_the_reason(kube_api: KubeApiStandIn) -> None:
    kube_api.add_node("gpu1")
    with kube_api.fault("unreachable"):
        results = run(kube_api, [target("gpu1")])
    first = results["gpu1"]["runtimeclass"]
    assert first.status == "failed" and "could not reach the cluster" in first.detail
    assert {results["gpu1"][n].status for n in ("node-label", "device-plugin", "verify")} == {"skipped"}


def test_bootstrap_stops_before_any_host_when_the_cluster_is_down(kube_api: KubeApiStandIn) -> None:
    with kube_api.fault("unreachable"):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "gpunode.bootstrap.cli.main",
                "bootstrap",
                "gpu01.invalid",
                "--yes",
                "--kubeconfig",
                str(kube_api.kubeconfig_path),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env=kube_api.kubectl_env(),
        )
    # Could not check, and nothing was changed: the contract's exit 2.
    assert result.returncode == 2, result.stderr
    assert "could not reach the cluster" in result.stderr and "Nothing was changed on the hosts" in result.stderr
    assert "--skip-cluster" in result.stderr and "connecting" not in result.stderr


# --------------------------------------------------------------------------------------
# Homelab: the plugin as a service on the node (--plugin-mode host)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="gph-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_host_plugin_mode_needs_no_daemonset_and_is_verified_the_same_way(
    kube_api: KubeApiStandIn, cache_dir: Path, short_dir: Path
) -> None:
    """The node moves from a DaemonSet to the plugin as a service on the host: its
    DaemonSet goes, and verify waits for what the service (here the real bundled plugin
    process, started as the unit's ExecStart would) registers with the kubelet."""
    from standins.fake_nvml import FakeNvml, FakeNvmlConfig, build_fake_nvml
    from standins.kubelet import HEALTHY, DeviceState, KubeletStandIn

    small_kubelet(kube_api)
    kube_api.add_node("homelab")
    run(kube_api, [target("homelab")])
    (old,) = gpunode_daemonsets(kube_api)
    kube_api.set_node_status("homelab", allocatable={"nvidia.com/gpu": "0"})  # the pod went with the DaemonSet

    def publish(resource: str, devices: list[DeviceState]) -> None:
        kube_api.set_node_status(
            "homelab",
            capacity={resource: str(len(devices))},
            allocatable={resource: str(sum(d.health == HEALTHY for d in devices))},
        )

    nvml = FakeNvml(short_dir / "nvml", build_fake_nvml(cache_dir), FakeNvmlConfig.uniform(2))
    with KubeletStandIn(short_dir / "dp", on_update=publish):
        service = subprocess.Popen(
            [sys.executable, "-m", "gpunode.plugin", "serve"],
            env={**os.environ, **nvml.env(), "GPUNODE_KUBELET_DIR": str(short_dir / "dp")},
            stderr=subprocess.DEVNULL,
        )
        try:
            results = run(kube_api, [target("homelab", plugin_mode="host")])
        finally:
            service.terminate()
            service.wait(timeout=10)
    plugin = results["homelab"]["device-plugin"]
    assert plugin.status == "changed" and f"removed DaemonSet {NS}/{old}" in plugin.detail
    assert "plugin mode host" in plugin.detail
    assert results["homelab"]["verify"].detail == "Allocatable nvidia.com/gpu = 2: OK"
    assert gpunode_daemonsets(kube_api) == {}
    labels = kube_api.get("Node", "homelab")["metadata"]["labels"]  # type: ignore[index]
    assert labels["gpunode.io/device-plugin"] == "host"
