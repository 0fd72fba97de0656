"""Evidence for `gpunode doctor`'s rules, written out by hand: a healthy GPU node (host and
cluster) that each test breaks in one place. The shapes are the real ones: HostFacts as the
snapshot parser builds them, Kubernetes objects as `kubectl get -o json` prints them."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

from gpunode.bootstrap.core.doctor.engine import Diagnosis, diagnose
from gpunode.bootstrap.core.doctor.evidence import ClusterView, DoctorCase, PodEvidence, Unavailable
from gpunode.bootstrap.core.host.diagnostics import HostDiagnostics, NvmlCheck
from gpunode.bootstrap.core.host.facts import ContainerdFacts, HostFacts, KubeletFacts, PciGpu
from gpunode.bootstrap.core.host.os_release import parse_os_release
from gpunode.bootstrap.core.kube.manifests import manifest_objects
from gpunode.bootstrap.core.kube.plugin_deployment import PluginDeployment
from gpunode.bootstrap.core.nvml.library import LibraryEvidence

JSON = dict[str, Any]
DRIVER = "535.261.03"
NODE = "gpu01"
LIB_DIR = "/usr/lib/x86_64-linux-gnu"
LIBRARY = f"{LIB_DIR}/nvidia/current/libnvidia-ml.so.{DRIVER}"
ROOT = "/var/lib/kubelet"
PLUGIN_SOCKET = f"{ROOT}/device-plugins/gpunode-nvidia.com-gpu.sock"
KUBELET_SOCKET = f"{ROOT}/device-plugins/kubelet.sock"
NOW = 1_750_000_000

# containerd 1.7's dump (schema 2) with the runc runtime and gpunode's nvidia runtime.
DUMP = """version = 2
[plugins."io.containerd.grpc.v1.cri".containerd]
  default_runtime_name = "{default}"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = true
{nvidia}"""
NVIDIA_RUNTIME = """  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{name}]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{name}.options]
      BinaryName = "{binary}"
      SystemdCgroup = true
"""


def dump(
    default: str = "runc", runtime: str | None = "nvidia", binary: str = "/usr/bin/nvidia-container-runtime"
) -> str:
    nvidia = NVIDIA_RUNTIME.format(name=runtime, binary=binary) if runtime else ""
    return DUMP.format(default=default, nvidia=nvidia)


def debian_library(module: str | None = DRIVER, version: str = DRIVER) -> LibraryEvidence:
    """Debian 12's chain: ld.so's name -> alternatives -> nvidia/current -> the real file."""
    real = f"{LIB_DIR}/nvidia/current/libnvidia-ml.so.{version}"
    return LibraryEvidence(
        ldconfig=f"\tlibnvidia-ml.so.1 (libc6,x86-64) => {LIB_DIR}/libnvidia-ml.so.1",
        links={
            f"{LIB_DIR}/libnvidia-ml.so.1": "/etc/alternatives/nvidia--libnvidia-ml.so.1-x86_64-linux-gnu",
            "/etc/alternatives/nvidia--libnvidia-ml.so.1-x86_64-linux-gnu": f"{LIB_DIR}/nvidia/current/libnvidia-ml.so.1",
            f"{LIB_DIR}/nvidia/current/libnvidia-ml.so.1": f"libnvidia-ml.so.{version}",
        },
        files=frozenset({real}),
        listed=(f"{LIB_DIR}/libnvidia-ml.so.1",),
        arch="x86_64",
        module_version=module,
        machines={real: "x86_64"},
    )


def healthy_diagnostics(**changes: Any) -> HostDiagnostics:
    values: dict[str, Any] = {
        "now": NOW,
        "nvml": NvmlCheck(0, driver=DRIVER, count=2, devices=("GPU-1 NVIDIA A100", "GPU-2 NVIDIA A100")),
        "kernel_log": (),
        "module_file_version": DRIVER,
        "module_signer": "Debian Secure Boot CA",
        "module_file": "/lib/modules/x/nvidia.ko",
        "modinfo_available": True,
        "kubelet_age_seconds": 3600,
        "socket_mtimes": {KUBELET_SOCKET: NOW - 3600, PLUGIN_SOCKET: NOW - 3500},
        "plugin_processes": (),
        "runtime_binaries": {"/usr/bin/nvidia-container-runtime": True},
    }
    values.update(changes)
    return HostDiagnostics(**values)


def healthy_host(**changes: Any) -> HostFacts:
    facts = HostFacts(
        hostname=NODE,
        kernel_release="6.1.0-28-amd64",
        arch="x86_64",
        os=parse_os_release('ID=debian\nVERSION_ID="12"\nVERSION_CODENAME=bookworm\n'),
        init_system="systemd",
        gpus=(
            PciGpu("0000:3b:00.0", "0x20b5", "GA100 [A100 PCIe 80GB]"),
            PciGpu("0000:86:00.0", "0x20b5", "GA100 [A100 PCIe 80GB]"),
        ),
        loaded_modules=frozenset({"nvidia", "nvidia_uvm"}),
        secure_boot=False,
        nouveau_blacklisted_by=("/etc/modprobe.d/gpunode-blacklist-nouveau.conf",),
        initramfs_tools=("update-initramfs",),
        nvml=debian_library(),
        package_manager="dpkg",
        packages={
            "libnvidia-ml1": f"{DRIVER}-1",
            "nvidia-smi": f"{DRIVER}-1",
            "nvidia-container-toolkit": "1.17.8-1",
            "nvidia-container-toolkit-base": "1.17.8-1",
        },
        toolkit_runtime="/usr/bin/nvidia-container-runtime",
        containerd=ContainerdFacts(
            "/usr/bin/containerd",
            "containerd github.com/containerd/containerd 1.7.24",
            "/etc/containerd/config.toml",
            "version = 2\n",
            dump(),
            None,
        ),
        k3s_binary=None,
        k3s_templates=(),
        kubelet=KubeletFacts(
            True,
            "kubelet",
            ("/usr/bin/kubelet", f"--root-dir={ROOT}"),
            ROOT,
            "/usr/bin/kubelet",
            (KUBELET_SOCKET, PLUGIN_SOCKET),
            (f"{ROOT}/device-plugins/kubelet_internal_checkpoint",),
        ),
        apt_sources={},
        diagnostics=healthy_diagnostics(),
    )
    return replace(facts, **changes)


# --- the cluster -------------------------------------------------------------------------------


def gpu_node(
    allocatable: str | None = "2",
    capacity: str | None = "2",
    labels: dict[str, str] | None = None,
    taints: list[JSON] | None = None,
    ready: str = "True",
) -> JSON:
    status: JSON = {
        "capacity": {"cpu": "32"},
        "allocatable": {"cpu": "32"},
        "conditions": [{"type": "Ready", "status": ready, "reason": "KubeletReady"}],
    }
    if capacity is not None:
        status["capacity"]["nvidia.com/gpu"] = capacity
    if allocatable is not None:
        status["allocatable"]["nvidia.com/gpu"] = allocatable
    node: JSON = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": NODE,
            "labels": {
                "kubernetes.io/hostname": NODE,
                "kubernetes.io/os": "linux",
                "gpunode.io/driver-version": DRIVER,
                **(labels or {}),
            },
        },
        "spec": {},
        "status": status,
    }
    if taints:
        node["spec"]["taints"] = taints
    return node


def gpunode_daemonset(**deployment: Any) -> JSON:
    """gpunode's own rendered DaemonSet, with the uid and status the API server adds."""
    values: dict[str, Any] = {"driver_version": DRIVER, "lib_path": LIBRARY}
    values.update(deployment)
    objects = manifest_objects(PluginDeployment(**values))
    daemonset = next(o for o in objects if o["kind"] == "DaemonSet")
    daemonset["metadata"]["uid"] = "ds-uid-1"
    daemonset["status"] = {"desiredNumberScheduled": 1, "currentNumberScheduled": 1, "numberReady": 1}
    return daemonset


def runtime_class(handler: str = "nvidia") -> JSON:
    return {"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": "nvidia"}, "handler": handler}


def running(started: str = "2025-06-15T10:00:00Z", restarts: int = 0, ready: bool = True) -> JSON:
    return {
        "phase": "Running",
        "containerStatuses": [
            {
                "name": "gpunode-device-plugin",
                "ready": ready,
                "restartCount": restarts,
                "state": {"running": {"startedAt": started}},
                "lastState": {},
            }
        ],
    }


def crashing(message: str = "", exit_code: int = 1, restarts: int = 4) -> JSON:
    return {
        "phase": "Running",
        "containerStatuses": [
            {
                "name": "gpunode-device-plugin",
                "ready": False,
                "restartCount": restarts,
                "state": {
                    "waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}
                },
                "lastState": {"terminated": {"exitCode": exit_code, "reason": "Error", "message": message}},
            }
        ],
    }


def plugin_pod(daemonset: JSON, status: JSON | None = None) -> JSON:
    template = copy.deepcopy(daemonset["spec"]["template"])
    spec = template["spec"]
    spec["nodeName"] = NODE
    for container in spec["containers"]:
        container.setdefault("name", "gpunode-device-plugin")
    name = daemonset["metadata"]["name"] + "-x7k2p"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": daemonset["metadata"].get("namespace", "kube-system"),
            "labels": template["metadata"].get("labels", {}),
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "DaemonSet",
                    "controller": True,
                    "name": daemonset["metadata"]["name"],
                    "uid": daemonset["metadata"]["uid"],
                }
            ],
        },
        "spec": spec,
        "status": status or running(),
    }


REGISTERED_LOG = (
    "plugin_starting driver=535.261.03 gpus=2 resources=nvidia.com/gpu:2\n"
    "registered resource=nvidia.com/gpu socket=gpunode-nvidia.com-gpu.sock attempt=1\n"
    "plugin_ready version=0.1.0\n"
)


def healthy_view(**changes: Any) -> ClusterView:
    daemonset = gpunode_daemonset()
    values: dict[str, Any] = {
        "node_name": NODE,
        "node": gpu_node(),
        "node_events": (),
        "daemonsets": (daemonset,),
        "plugin_pods": (PodEvidence(plugin_pod(daemonset), logs=REGISTERED_LOG),),
        "runtime_classes": (runtime_class(),),
        "cluster_policies": None,
        "other_pods": (),
    }
    values.update(changes)
    return ClusterView(**values)


def case(host: HostFacts | None | bool = True, view: ClusterView | None | bool = True, **changes: Any) -> DoctorCase:
    """A case for node gpu01; host/view True: the healthy ones, None: not given."""
    values: dict[str, Any] = {
        "subject": NODE,
        "node_name": NODE,
        "host": healthy_host() if host is True else host or None,
        "cluster": healthy_view() if view is True else view or None,
        "named_gpu_node": True,
    }
    if values["host"] is None:
        values["host_unavailable"] = Unavailable("no HOST given", asked=False)
    if values["cluster"] is None:
        values["cluster_unavailable"] = Unavailable("--no-cluster", asked=False)
    values.update(changes)
    return DoctorCase(**values)


def judge(*cases: DoctorCase) -> Diagnosis:
    return diagnose(list(cases))


def ids(diagnosis: Diagnosis) -> list[str]:
    return [v.id for v in diagnosis.verdicts]
