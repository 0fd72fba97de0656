"""`gpunode doctor` against a cluster: the real CLI and the real kubectl talk to the Kubernetes
API stand-in; device plugin pods are real processes (gpunode's bundled plugin on the fake
NVML library, or a plugin that never re-registers) registering with the kubelet stand-in,
which publishes Allocatable as the kubelet would. Each test breaks one link, the way it
breaks in the field, and doctor must name exactly that failure mode first.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO_ROOT
from polling import eventually
from standins.fake_nvml import FakeGpu, FakeNvml, FakeNvmlConfig, build_fake_nvml
from standins.kube_api import KubeApiStandIn
from standins.kube_api.process_pods import PodProcessRunner
from standins.kubelet import HEALTHY, DeviceState, KubeletStandIn

from gpunode.bootstrap.core.kube.manifests import manifest_objects
from gpunode.bootstrap.core.kube.plugin_deployment import PluginDeployment

JSON = dict[str, Any]
NS = "kube-system"
NODE = "gpu-1"
DRIVER = "535.261.03"
LIBRARY = f"/usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.{DRIVER}"
DEVICE_PLUGINS = "/var/lib/kubelet/device-plugins"
POD_RESOURCES = "/var/lib/kubelet/pod-resources"
GPU = "nvidia.com/gpu"


class Cluster:
    """A GPU node `gpu-1` in the API stand-in, its kubelet (stand-in) and its pods (processes)."""

    def __init__(self, api: KubeApiStandIn, workdir: Path, nvml: FakeNvml, kubelet: KubeletStandIn) -> None:
        self.api = api
        self.nvml = nvml
        self.kubelet = kubelet
        self.runner = PodProcessRunner(
            api,
            workdir / "pods",
            host_paths={
                LIBRARY: nvml.library_dir / "libnvidia-ml.so.1",
                DEVICE_PLUGINS: kubelet.dir,
                POD_RESOURCES: workdir / "pod-resources",
            },
            extra_env={
                "FAKE_NVML_CONFIG": str(nvml.config_path),
                "FAKE_NVML_EVENTS": str(nvml.events_path),
                "PYTHONPATH": str(REPO_ROOT / "tests"),
                # Pods here share this machine's network: no fixed metrics port for them.
                "GPUNODE_METRICS_ADDR": "off",
            },
            grace_seconds=1.0,
        )

    def apply(self, *objects: JSON) -> None:
        result = self.api.kubectl(
            "apply", "--server-side", "--field-manager=gpunode", "-f", "-", stdin=yaml.safe_dump_all(objects)
        )
        assert result.returncode == 0, result.stderr

    def gpunode_objects(self, **deployment: Any) -> list[JSON]:
        values: dict[str, Any] = {"driver_version": DRIVER, "lib_path": LIBRARY}
        values.update(deployment)
        return manifest_objects(PluginDeployment(**values))

    def daemonset(self, **deployment: Any) -> JSON:
        return next(o for o in self.gpunode_objects(**deployment) if o["kind"] == "DaemonSet")

    def plugin_pod(self) -> JSON:
        pods = [p for p in self.api.list("pods", NS) if p["spec"].get("nodeName") == NODE]
        assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
        return pods[0]

    def pod_state(self) -> str:
        pod = self.plugin_pod()
        for status in pod.get("status", {}).get("containerStatuses") or []:
            waiting = status.get("state", {}).get("waiting")
            if waiting:
                return str(waiting.get("reason"))
            if "running" in status.get("state", {}):
                return "Running"
        return str(pod.get("status", {}).get("phase"))

    def allocatable(self) -> str | None:
        return self.api.allocatable(NODE, GPU)

    def logs(self) -> str:
        pod = self.plugin_pod()
        return self.api._logs_of(NS, pod["metadata"]["name"], pod["spec"]["containers"][0]["name"], False) or ""

    def doctor(self, *args: str) -> tuple[int, JSON]:
        result = subprocess.run(
            [sys.executable, "-m", "gpunode.bootstrap.cli.main", "doctor", *args, "--output", "json"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        try:
            data = json.loads(result.stdout)
        except ValueError as exc:
            raise AssertionError(
                f"no JSON from doctor (exit {result.returncode}):\n{result.stdout}\n{result.stderr}"
            ) from exc
        return result.returncode, data


def ids(data: JSON) -> list[str]:
    return [v["id"] for v in data["verdicts"]]


def explain(data: JSON) -> str:
    return json.dumps(data, indent=1)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    # Unix socket paths are limited to 107 bytes: pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="gpn-doc-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def cluster(kube_api: KubeApiStandIn, short_tmp: Path, cache_dir: Path) -> Iterator[Cluster]:
    nvml = FakeNvml(short_tmp / "nvml", build_fake_nvml(cache_dir), FakeNvmlConfig.uniform(2, driver_version=DRIVER))

    def publish(resource: str, devices: list[DeviceState]) -> None:
        healthy = sum(1 for d in devices if d.health == HEALTHY)
        kube_api.set_node_status(NODE, capacity={resource: str(len(devices))}, allocatable={resource: str(healthy)})

    kube_api.add_node(NODE, labels={"gpunode.io/driver-version": DRIVER, "nvidia.com/gpu.present": "true"})
    kube_api.add_node("cpu-1")
    with KubeletStandIn(short_tmp / "kubelet", on_update=publish) as kubelet:
        gpu_cluster = Cluster(kube_api, short_tmp, nvml, kubelet)
        # Everything the rendered stream has before the DaemonSet: RuntimeClass, the plugin's account.
        gpu_cluster.apply(*(o for o in gpu_cluster.gpunode_objects() if o["kind"] != "DaemonSet"))
        try:
            yield gpu_cluster
        finally:
            gpu_cluster.runner.stop_all()


def healthy(cluster: Cluster, **deployment: Any) -> None:
    cluster.apply(cluster.daemonset(**deployment))
    eventually(lambda: cluster.allocatable() == "2", what="Allocatable nvidia.com/gpu = 2")


def crash_with(cluster: Cluster, daemonset: JSON) -> str:
    cluster.apply(daemonset)
    eventually(lambda: cluster.pod_state() == "CrashLoopBackOff", what="the plugin pod to crash")
    return cluster.logs()


def plugin_env(daemonset: JSON, **env: str) -> JSON:
    container = daemonset["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [e for e in container["env"] if e["name"] not in env] + [
        {"name": k, "value": v} for k, v in env.items()
    ]
    return daemonset


# --- healthy and could-not-check --------------------------------------------------------------


def test_a_working_node_is_healthy_and_cpu_nodes_are_left_alone(cluster: Cluster) -> None:
    healthy(cluster)
    code, data = cluster.doctor()
    assert code == 0, explain(data)
    assert data["verdicts"] == [] and data["healthy"] is True
    assert [n["subject"] for n in data["not_checked"]] == [f"node {NODE}"]  # no HOST: said, not guessed
    assert data["not_checked"][0]["asked"] is False


def test_an_unreachable_or_refusing_cluster_exits_2(cluster: Cluster) -> None:
    with cluster.api.fault("unreachable"):
        code, data = cluster.doctor("--node", NODE)
    assert code == 2 and data["verdicts"] == []
    assert any(
        "could not reach the cluster" in n["why"] or "could not read the cluster" in n["why"]
        for n in data["not_checked"]
    ), explain(data)
    with cluster.api.fault("unauthorized"):
        code, data = cluster.doctor("--node", NODE)
    assert code == 2 and "credentials" in json.dumps(data["not_checked"])
    code, data = cluster.doctor("--node", "no-such-node")
    assert code == 2 and "no node of that name" in json.dumps(data["not_checked"])


# --- the device plugin's NVML: F1, F2, F5, F7, F11, F13, F14 -------------------------------------


def test_f1_the_plugin_runs_under_plain_runc_without_the_library(cluster: Cluster) -> None:
    daemonset = cluster.daemonset()
    spec = daemonset["spec"]["template"]["spec"]
    spec["volumes"] = [v for v in spec["volumes"] if v["name"] == "device-plugins"]
    container = spec["containers"][0]
    container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] == "device-plugins"]
    container["env"] = [e for e in container["env"] if e["name"] != "LD_LIBRARY_PATH"]
    container["securityContext"] = {}
    log = crash_with(cluster, daemonset)
    assert "reason=library_not_found" in log  # the real plugin, really failing to load NVML
    code, data = cluster.doctor("--node", NODE)
    assert code == 1 and ids(data)[0] == "F1", explain(data)
    assert ids(data) == ["F1", "ALLOCATABLE-ABSENT"]


def test_f2_the_library_mount_is_a_symlink_that_leads_nowhere(cluster: Cluster, short_tmp: Path) -> None:
    # The host's libnvidia-ml.so.1 is a link into /etc/alternatives; mounted by path, its
    # target is looked up where it is not (here: a link whose target does not exist).
    link = short_tmp / "so1-link"
    link.symlink_to("/etc/alternatives/nvidia--libnvidia-ml.so.1-x86_64-linux-gnu-nowhere")
    cluster.runner.host_paths["/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"] = link
    daemonset = cluster.daemonset()
    for volume in daemonset["spec"]["template"]["spec"]["volumes"]:
        if volume["name"] == "nvml-library":
            volume["hostPath"]["path"] = "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"
    cluster.apply(daemonset)
    eventually(lambda: any(e["reason"] == "FailedMount" for e in cluster.api.list("events", NS)), what="FailedMount")
    code, data = cluster.doctor("--node", NODE)
    assert code == 1 and ids(data)[0] == "F2", explain(data)
    assert "cannot mount its NVML library" in data["verdicts"][0]["cause"]


def test_f5_dev_mounted_but_the_device_cgroup_denies_it(cluster: Cluster) -> None:
    daemonset = plugin_env(cluster.daemonset(), FAKE_NVML_INIT_ERROR="NO_PERMISSION")
    daemonset["spec"]["template"]["spec"]["containers"][0]["securityContext"] = {}
    log = crash_with(cluster, daemonset)
    assert "reason=no_permission" in log
    code, data = cluster.doctor("--node", NODE)
    assert ids(data)[0] == "F5", explain(data)


def test_f7_mig_capabilities_unreadable(cluster: Cluster) -> None:
    cluster.nvml.configure(
        FakeNvmlConfig(gpus=(FakeGpu(0, mig="1", mig_error="NO_PERMISSION"), FakeGpu(1)), driver_version=DRIVER)
    )
    log = crash_with(cluster, cluster.daemonset(mig_strategy="mixed"))
    assert "reason=mig_no_permission" in log
    code, data = cluster.doctor("--node", NODE)
    assert ids(data)[0] == "F7", explain(data)


def test_f11_init_errors_hidden_plugin_running_advertising_nothing(cluster: Cluster) -> None:
    daemonset = plugin_env(cluster.daemonset(fail_on_init_error=False), FAKE_NVML_INIT_ERROR="NO_PERMISSION")
    cluster.apply(daemonset)
    eventually(lambda: "nvml_init_failed" in cluster.logs(), what="the init failure in the log")
    assert cluster.pod_state() == "Running"  # the trap: the pod looks fine
    code, data = cluster.doctor("--node", NODE)
    # The failure first, as its own verdict; then F11: it was hidden (issue 17.11).
    assert code == 1 and ids(data)[:2] == ["DP-PERMISSION", "F11"], explain(data)
    verdict = data["verdicts"][1]
    assert "GPUNODE_FAIL_ON_INIT_ERROR=false" in " ".join(verdict["evidence"])
    assert "Running but advertises nothing" in verdict["cause"]


def test_f13_the_driver_is_not_loaded(cluster: Cluster) -> None:
    log = crash_with(cluster, plugin_env(cluster.daemonset(), FAKE_NVML_INIT_ERROR="DRIVER_NOT_LOADED"))
    assert "reason=driver_not_loaded" in log
    code, data = cluster.doctor("--node", NODE)
    assert ids(data)[0] == "F13" and data["verdicts"][0]["link"] == "driver", explain(data)


def test_f14_driver_upgraded_not_rebooted_seen_by_the_plugin(cluster: Cluster) -> None:
    log = crash_with(cluster, plugin_env(cluster.daemonset(), FAKE_NVML_INIT_ERROR="LIB_RM_VERSION_MISMATCH"))
    assert "reason=driver_library_mismatch" in log
    code, data = cluster.doctor("--node", NODE)
    assert ids(data)[0] == "F14" and data["verdicts"][0]["reboot_required"] is True, explain(data)


def test_f3_a_system_library_directory_mounted_over_the_image(cluster: Cluster) -> None:
    daemonset = cluster.daemonset()
    spec = daemonset["spec"]["template"]["spec"]
    spec["volumes"].append(
        {"name": "host-libs", "hostPath": {"path": "/usr/lib/x86_64-linux-gnu", "type": "Directory"}}
    )
    spec["containers"][0]["volumeMounts"].append({"name": "host-libs", "mountPath": "/usr/lib/x86_64-linux-gnu"})
    spec["containers"][0]["command"] = ["sleep", "3600"]
    cluster.apply(daemonset)
    pod = eventually(lambda: list(cluster.api.list("pods", NS)), what="the plugin pod")[0]
    # What a kubelet reports once the host's libc has replaced the image's.
    cluster.runner.stop_all()
    cluster.api.set_pod_phase(
        NS, pod["metadata"]["name"], "Running", waiting_reason="CrashLoopBackOff", restart_count=3, exit_code=1
    )
    cluster.api.set_pod_logs(
        NS,
        pod["metadata"]["name"],
        "python: /lib/x86_64-linux-gnu/libc.so.6: version `GLIBC_2.38' not found (required by python)\n",
        previous=True,
    )
    code, data = cluster.doctor("--node", NODE)
    assert ids(data)[0] == "F3", explain(data)


# --- deployment: F8, F9, F15 -----------------------------------------------------------------------


def test_f8_cluster_policy_ready_while_the_plugin_daemonset_is_gone(cluster: Cluster) -> None:
    cluster.api.patch("Node", NODE, {"metadata": {"labels": {"gpunode.io/driver-version": None}}})
    cluster.api.set_node_status(NODE, capacity={GPU: "2"}, allocatable={GPU: "0"})
    cluster.api.add_cluster_policy(state="ready")
    code, data = cluster.doctor("--node", NODE)
    assert code == 1 and ids(data)[0] == "F8", explain(data)
    assert "says 'ready'" in data["verdicts"][0]["cause"]


def test_f9_the_plugin_went_away_and_left_a_zero(cluster: Cluster) -> None:
    # NVIDIA's Helm chart style: selected by the GPU label, not by gpunode's.
    cluster.api.patch("Node", NODE, {"metadata": {"labels": {"gpunode.io/driver-version": None}}})
    daemonset = cluster.daemonset()
    daemonset["metadata"]["name"] = "nvidia-device-plugin"
    daemonset["spec"]["template"]["spec"]["nodeSelector"] = {"nvidia.com/gpu.present": "true"}
    cluster.apply(daemonset)
    eventually(lambda: cluster.allocatable() == "2", what="Allocatable 2")
    assert cluster.api.kubectl("delete", "ds", "nvidia-device-plugin", "-n", NS).returncode == 0
    eventually(lambda: cluster.allocatable() == "0", what="the kubelet keeping the key at 0")
    code, data = cluster.doctor("--node", NODE)
    assert code == 1 and ids(data) == ["F9"], explain(data)
    assert "is 0 and the key is kept" in data["verdicts"][0]["cause"]


def test_f15_a_tainted_gpu_node_and_a_daemonset_without_the_toleration(cluster: Cluster) -> None:
    cluster.api.patch("Node", NODE, {"spec": {"taints": [{"key": GPU, "value": "present", "effect": "NoSchedule"}]}})
    daemonset = cluster.daemonset()
    del daemonset["spec"]["template"]["spec"]["tolerations"]
    cluster.apply(daemonset)
    status = cluster.api.get("DaemonSet", daemonset["metadata"]["name"], NS)["status"]  # type: ignore[index]
    assert status["desiredNumberScheduled"] == 0
    code, data = cluster.doctor("--node", NODE)
    assert ids(data)[0] == "F15", explain(data)


def test_f15_a_pod_without_the_toleration_stays_pending(cluster: Cluster) -> None:
    healthy(cluster)
    cluster.api.patch("Node", NODE, {"spec": {"taints": [{"key": GPU, "value": "present", "effect": "NoSchedule"}]}})
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "cuda-test", "namespace": "default"},
        "spec": {
            "runtimeClassName": "nvidia",
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "cuda",
                    "image": "nvidia/cuda",
                    "command": ["nvidia-smi", "-L"],
                    "resources": {"limits": {GPU: "1"}},
                }
            ],
        },
    }
    cluster.runner.select = lambda p: p["metadata"]["namespace"] == NS
    assert cluster.api.kubectl("create", "-f", "-", stdin=json.dumps(pod)).returncode == 0
    code, data = cluster.doctor("--pod", "default/cuda-test")
    assert ids(data)[0] == "F15" and data["verdicts"][0]["link"] == "workload", explain(data)


# --- registration: F12 ---------------------------------------------------------------------------


def test_f12_kubelet_restarted_and_a_plugin_that_never_noticed(cluster: Cluster) -> None:
    daemonset = cluster.daemonset()
    container = daemonset["spec"]["template"]["spec"]["containers"][0]
    # Its pod gets the device-plugins directory through GPUNODE_KUBELET_DIR, as gpunode's does.
    container["command"] = ["python", "-m", "standins.naive_plugin", "--devices", "2"]
    cluster.apply(daemonset)
    eventually(lambda: cluster.allocatable() == "2", what="the plugin registered")
    time.sleep(1.1)  # the API's timestamps have whole seconds
    cluster.kubelet.restart()  # wipes the device-plugins directory, as `systemctl restart kubelet` does
    cluster.api.add_event("default", "Node", NODE, "Starting", "Starting kubelet.", type="Normal")
    eventually(lambda: cluster.allocatable() == "0", what="Allocatable dropping to 0")
    assert cluster.pod_state() == "Running"
    code, data = cluster.doctor("--node", NODE)
    assert code == 1 and ids(data)[0] == "F12", explain(data)
    assert ids(data) == ["F12", "F9"]


def test_the_bundled_plugin_re_registers_so_a_kubelet_restart_is_no_verdict(cluster: Cluster) -> None:
    healthy(cluster)
    time.sleep(1.1)
    cluster.kubelet.restart()
    cluster.api.add_event("default", "Node", NODE, "Starting", "Starting kubelet.", type="Normal")
    cluster.kubelet.wait_registered(GPU, timeout=10, after=1)
    eventually(lambda: cluster.allocatable() == "2", what="Allocatable back at 2")
    code, data = cluster.doctor("--node", NODE)
    assert code == 0 and data["verdicts"] == [], explain(data)


# --- the workload: F6, F10, F16, F17 ------------------------------------------------------------------


def create_pod(cluster: Cluster, pod: JSON, logs: str, phase: str, exit_code: int | None = None) -> None:
    cluster.runner.select = lambda p: p["metadata"]["namespace"] == NS  # the workload is played by hand
    assert cluster.api.kubectl("create", "-f", "-", stdin=json.dumps(pod)).returncode == 0
    name = pod["metadata"]["name"]
    eventually(lambda: (cluster.api.get("Pod", name, "default") or {}).get("spec", {}).get("nodeName"), what="bound")
    cluster.api.set_pod_logs("default", name, logs)
    cluster.api.set_pod_phase("default", name, phase, exit_code=exit_code)


def test_f6_a_gpu_pod_without_runtime_class(cluster: Cluster) -> None:
    healthy(cluster)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "cuda-test", "namespace": "default"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "cuda",
                    "image": "nvidia/cuda",
                    "command": ["nvidia-smi", "-L"],
                    "resources": {"limits": {GPU: "1"}},
                }
            ],
        },
    }
    create_pod(cluster, pod, "/bin/sh: 1: nvidia-smi: not found\n", "Failed", exit_code=127)
    code, data = cluster.doctor("--pod", "default/cuda-test")
    assert code == 1 and ids(data) == ["F6"], explain(data)


def test_an_earlier_pods_events_are_not_pinned_on_a_new_pod_of_the_same_name(cluster: Cluster) -> None:
    """Names come back (a StatefulSet's pods, a Job re-run): the events of the pod that had the
    name before stay for an hour. They are matched by the pod's UID, so the new pod is judged
    by its own (issue 17.13)."""
    healthy(cluster)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "cuda-test", "namespace": "default"},
        "spec": {
            "restartPolicy": "Never",
            "runtimeClassName": "nvidia",
            "containers": [
                {
                    "name": "cuda",
                    "image": "nvidia/cuda",
                    "command": ["nvidia-smi", "-L"],
                    "resources": {"limits": {GPU: "1"}},
                }
            ],
        },
    }
    create_pod(cluster, pod, "", "Pending")
    cluster.api.add_event(
        "default",
        "Pod",
        "cuda-test",
        "FailedCreatePodSandBox",
        "Failed to create pod sandbox: rpc error: code = Unknown desc = failed to get sandbox "
        'runtime: no runtime for "nvidia" is configured',
    )
    code, data = cluster.doctor("--pod", "default/cuda-test")
    assert "F17" in ids(data), explain(data)  # the first pod: its own event
    assert cluster.api.delete("Pod", "cuda-test", "default")
    create_pod(
        cluster, pod, "GPU 0: NVIDIA A100 80GB PCIe (UUID: GPU-fa4e0000-0000-4000-8000-000000000000)\n", "Succeeded", 0
    )
    code, data = cluster.doctor("--pod", "default/cuda-test")
    assert "F17" not in ids(data), explain(data)


def test_f16_a_pod_that_asks_for_no_gpu(cluster: Cluster) -> None:
    healthy(cluster)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "cuda-test", "namespace": "default"},
        "spec": {
            "restartPolicy": "Never",
            "runtimeClassName": "nvidia",
            "containers": [{"name": "cuda", "image": "nvidia/cuda", "command": ["nvidia-smi", "-L"]}],
        },
    }
    create_pod(cluster, pod, "No devices were found\n", "Failed", exit_code=6)
    code, data = cluster.doctor("--pod", "default/cuda-test")
    assert code == 1 and ids(data) == ["F16"], explain(data)


def test_f10_a_debug_pods_nvml_error_is_not_a_dead_driver(cluster: Cluster) -> None:
    healthy(cluster)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"node-debugger-{NODE}-x8v2q", "namespace": "default"},
        "spec": {
            "nodeName": NODE,
            "restartPolicy": "Never",
            "hostPID": True,
            "containers": [
                {
                    "name": "debugger",
                    "image": "ubuntu",
                    "command": ["chroot", "/host", "nvidia-smi"],
                    "volumeMounts": [{"name": "host-root", "mountPath": "/host"}],
                }
            ],
            "volumes": [{"name": "host-root", "hostPath": {"path": "/"}}],
        },
    }
    create_pod(cluster, pod, "Failed to initialize NVML: Unknown Error\n", "Failed", exit_code=255)
    code, data = cluster.doctor("--node", NODE)
    assert ids(data) == ["F10"], explain(data)
    assert code == 0 and data["verdicts"][0]["severity"] == "info"


def test_f17_the_nodes_containerd_has_no_nvidia_runtime(cluster: Cluster) -> None:
    daemonset = cluster.daemonset(mode="runtime", lib_path=None)
    cluster.runner.select = lambda p: False  # containerd refuses the sandbox: no process starts
    cluster.apply(daemonset)
    pod = eventually(lambda: list(cluster.api.list("pods", NS)), what="the plugin pod")[0]
    cluster.api.add_event(
        NS,
        "Pod",
        pod["metadata"]["name"],
        "FailedCreatePodSandBox",
        "Failed to create pod sandbox: rpc error: code = Unknown desc = failed to get sandbox "
        'runtime: no runtime for "nvidia" is configured',
    )
    code, data = cluster.doctor("--node", NODE)
    assert ids(data)[0] == "F17" and data["verdicts"][0]["link"] == "containerd", explain(data)


def test_every_gpu_node_when_none_is_named(cluster: Cluster) -> None:
    """Three GPU nodes (read in one batch): the healthy one has no verdict, the one no plugin
    DaemonSet selects (another driver) and the one with a plugin that crashes each get theirs;
    the CPU node is not judged."""
    healthy(cluster)
    # One kubelet stand-in, gpu-1's: the other nodes' pods are played by hand.
    cluster.runner.select = lambda p: p["spec"].get("nodeName") == NODE
    cluster.api.add_node("gpu-2", labels={"gpunode.io/driver-version": "550.54.15"})
    cluster.api.add_node("gpu-3", labels={"gpunode.io/driver-version": DRIVER})
    cluster.api.set_node_status("gpu-3", capacity={GPU: "2"}, allocatable={GPU: "0"})
    pod = eventually(
        lambda: [p for p in cluster.api.list("pods", NS) if p["spec"].get("nodeName") == "gpu-3"],
        what="a plugin pod on gpu-3",
    )[0]
    cluster.api.set_pod_phase(
        NS, pod["metadata"]["name"], "Running", waiting_reason="CrashLoopBackOff", restart_count=2, exit_code=1
    )
    cluster.api.set_pod_logs(
        NS,
        pod["metadata"]["name"],
        'nvml_init_failed reason=driver_not_loaded error="NVML: Driver Not Loaded" fix="x"\n',
        previous=True,
    )
    code, data = cluster.doctor()
    assert code == 1, explain(data)
    by_node: dict[str, list[str]] = {}
    for verdict in data["verdicts"]:
        by_node.setdefault(verdict["subject"], []).append(verdict["id"])
    assert set(by_node) == {"node gpu-2", "node gpu-3"}, explain(data)
    assert by_node["node gpu-2"] == ["DP-NOT-SELECTED", "ALLOCATABLE-ABSENT"]
    assert by_node["node gpu-3"] == ["F13", "F9"]


def test_nvidia_helm_chart_plugin_logs_are_read_too(cluster: Cluster) -> None:
    """NVIDIA's plugin's klog lines, as its pod prints them, name the same failure."""
    daemonset = cluster.daemonset()
    daemonset["metadata"]["name"] = "nvidia-device-plugin-daemonset"
    container = daemonset["spec"]["template"]["spec"]["containers"][0]
    container["image"] = "nvcr.io/nvidia/k8s-device-plugin:v0.17.0"
    container["command"] = [
        "sh",
        "-c",
        "echo 'I0615 10:00:00.000000 1 factory.go:104] Detected non-NVML platform: "
        "could not load NVML library: libnvidia-ml.so.1: cannot open shared object file: No such "
        "file or directory' >&2; echo 'E0615 10:00:00.000000 1 factory.go:112] Incompatible "
        "platform detected' >&2; exit 1",
    ]
    spec = daemonset["spec"]["template"]["spec"]
    spec["volumes"] = [v for v in spec["volumes"] if v["name"] == "device-plugins"]
    container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] == "device-plugins"]
    container["env"] = []
    container["securityContext"] = {}
    crash_with(cluster, daemonset)
    code, data = cluster.doctor("--node", NODE)
    assert ids(data)[0] == "F1", explain(data)
    assert "could not load NVML library" in " ".join(data["verdicts"][0]["evidence"])
