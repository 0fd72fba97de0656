"""The cluster half of the end-to-end tests: an API stand-in, and for each test host the
node-side parts a real cluster would have (its kubelet, its container runtime).

    with KubeApiStandIn(...) as api:
        node = SimulatedNode(api, host, workdir, lib_dir, gpus)   # kubelet + runtime of `host`
        ... gpunode bootstrap host --kubeconfig api.kubeconfig_path ...

What happens on a real node, and what plays it here:

- The API server: the KubeApiStandIn (real kubectl talks to it over HTTPS); its DaemonSet
  controller and scheduler decide which pod runs where (node selectors, taints).
- The kubelet starting a bound pod: PodProcessRunner runs the pod's container command
  as a local process. Its hostPath volumes are resolved *against the test host*: the
  NVML library path the DaemonSet mounts must be a regular file in that host (Debian's
  real libnvidia-ml.so.<version>, installed by the bootstrap's driver step), or the pod
  fails to mount it as a kubelet would (FailedMount); the file mounted in its place is
  the fake NVML library (the machine has no GPU), whose GPUs sit at the host's PCI bus IDs.
- NVML's own check that the loaded kernel module matches the library (F14): a plugin pod
  whose library version is not the host's loaded module version gets NVML's
  LIB_RM_VERSION_MISMATCH from the fake library.
- The container runtime: images it cannot pull (anything but the images declared
  pullable) leave the pod in ErrImagePull; a pod with runtimeClassName must name an
  existing RuntimeClass whose handler is a runtime in the host's *effective* containerd
  config (`containerd config dump`, F17), and then gets what the NVIDIA runtime injects:
  the NVML library and `nvidia-smi` (tests/standins/nvidia_smi.py over pynvml).
- The kubelet's device manager: a KubeletStandIn per node (real gRPC on unix sockets)
  that the plugin process registers with; every ListAndWatch update is published into
  the node's status.capacity/allocatable in the API stand-in, healthy devices only in
  allocatable. A pod asking for nvidia.com/gpu gets the plugin's Allocate answer (its
  NVIDIA_VISIBLE_DEVICES) in its environment.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from conftest import REPO_ROOT
from standins.debian_host import DebianHost
from standins.fake_nvml import FakeGpu, FakeNvml, FakeNvmlConfig
from standins.kube_api import KubeApiStandIn
from standins.kube_api.process_pods import ContainerStartError, PodProcessRunner
from standins.kubelet import HEALTHY, DeviceState, KubeletStandIn

from gpunode.bootstrap.core.containerd.effective import effective_runtime
from gpunode.bootstrap.core.kube.manifests import DEFAULT_VERIFY_IMAGE
from gpunode.bootstrap.core.kube.plugin_deployment import NVIDIA_PLUGIN_IMAGE, bundled_image

RESOURCE = "nvidia.com/gpu"
KUBELET_PLUGINS_DIR = "/var/lib/kubelet/device-plugins"
LIBRARY_MOUNT = "/usr/local/lib/libnvidia-ml.so.1"
PULLABLE_IMAGES = frozenset({bundled_image(), NVIDIA_PLUGIN_IMAGE, DEFAULT_VERIFY_IMAGE})
_LIBRARY = re.compile(r"/libnvidia-ml\.so\.(\d+(?:\.\d+)+)$")


def nvidia_smi_dir(workdir: Path) -> Path:
    """A directory with an `nvidia-smi` for pods under the NVIDIA runtime."""
    bin_dir = workdir / "nvidia-runtime-bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "nvidia-smi"
    script.write_text(
        f"#!/bin/sh\nexec {shlex.quote(sys.executable)} "
        f'{shlex.quote(str(REPO_ROOT / "tests" / "standins" / "nvidia_smi.py"))} "$@"\n'
    )
    script.chmod(0o755)
    return bin_dir


def gpus_for(bus_ids: list[str], name: str = "NVIDIA A100 80GB PCIe") -> tuple[FakeGpu, ...]:
    """Fake NVML GPUs at these PCI bus IDs (NVML writes them 00000000:3B:00.0)."""
    gpus = []
    for index, bus in enumerate(bus_ids):
        domain, rest = bus.split(":", 1)
        gpus.append(
            FakeGpu(
                index,
                name=name,
                pci_bus_id=f"{int(domain, 16):08X}:{rest.upper()}",
                minor=index,
                numa=0,
                memory_mib=81920,
            )
        )
    return tuple(gpus)


class SimulatedNode:
    def __init__(
        self,
        api: KubeApiStandIn,
        host: DebianHost,
        workdir: Path,
        nvml_lib_dir: Path,
        gpus: tuple[FakeGpu, ...],
        kubelet_dir: Path | None = None,
    ) -> None:
        """`kubelet_dir`: where the kubelet stand-in serves its sockets; the host's own
        device-plugins directory (through `host.root`) for tests that judge the host too."""
        self.api = api
        self.host = host
        self.node = host.name
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "dev").mkdir(exist_ok=True)
        self.smi_dir = nvidia_smi_dir(workdir)
        self.nvml = FakeNvml(workdir / "nvml", nvml_lib_dir, FakeNvmlConfig(gpus=gpus))
        self.kubelet = KubeletStandIn(kubelet_dir or workdir / "dp", on_update=self._publish)
        self.kubelet.start()
        self.mounted_libraries: list[str] = []  # library host paths that plugin pods mounted
        self._registrations_at_start: dict[str, int] = {}
        self._lock = threading.Lock()
        self.runner = PodProcessRunner(
            api,
            workdir / "pods",
            select=self._mine,
            ready=self._ready,
            resolve_host_path=self._resolve,
            pod_env=self._env,
            grace_seconds=3,
        )

    def close(self) -> None:
        self.runner.stop_all()
        self.kubelet.stop()

    # -- the kubelet's node status ---------------------------------------------------

    def _publish(self, resource: str, devices: list[DeviceState]) -> None:
        healthy = sum(1 for d in devices if d.health == HEALTHY)
        self.api.set_node_status(
            self.node, capacity={resource: str(len(devices))}, allocatable={resource: str(healthy)}
        )

    def _mine(self, pod: dict[str, Any]) -> bool:
        return (pod.get("spec") or {}).get("nodeName") == self.node

    @staticmethod
    def _is_daemon_pod(pod: dict[str, Any]) -> bool:
        return any(r.get("kind") == "DaemonSet" for r in pod["metadata"].get("ownerReferences") or [])

    def _ready(self, pod: dict[str, Any], proc: subprocess.Popen[bytes]) -> bool:
        if proc.poll() is not None:
            return False
        if not self._is_daemon_pod(pod):
            return True
        # A plugin pod is Ready once *it* has registered (not an earlier pod's registration).
        with self._lock:
            before = self._registrations_at_start.get(pod["metadata"]["uid"], 0)
        return self.kubelet.registered(RESOURCE) and self.kubelet.registration_count(RESOURCE) > before

    # -- volumes, resolved against the test host ---------------------------------------

    def host_file_is_regular(self, path: str) -> bool:
        quoted = shlex.quote(path)
        return self.host.exec(f"test -f {quoted} && test ! -L {quoted}", check=False).returncode == 0

    def _resolve(self, pod: dict[str, Any], host_path: str) -> Path | None:
        if host_path == KUBELET_PLUGINS_DIR:
            return self.kubelet.dir
        if host_path == "/dev":
            return self.workdir / "dev"
        if host_path.endswith("/pod-resources"):
            return self.workdir / "pod-resources"
        if _LIBRARY.search(host_path):
            if not self.host_file_is_regular(host_path):
                return self.workdir / "not-on-this-host" / host_path.lstrip("/")
            with self._lock:
                self.mounted_libraries.append(host_path)
            return self.nvml.library_dir / "libnvidia-ml.so.1"
        return None

    # -- the container runtime ------------------------------------------------------------

    def loaded_module(self) -> str | None:
        result = self.host.exec("cat /sys/module/nvidia/version", check=False)
        return result.stdout.strip() or None

    def host_library_version(self) -> str | None:
        result = self.host.exec("readlink -f /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1", check=False)
        found = _LIBRARY.search(result.stdout.strip())
        return found.group(1) if found else None

    def _nvml_env(self, library_version: str | None) -> dict[str, str]:
        env = {k: v for k, v in self.nvml.env().items() if k != "LD_LIBRARY_PATH"}
        if library_version:
            env["FAKE_NVML_DRIVER_VERSION"] = library_version
            if self.loaded_module() not in (None, library_version):
                env["FAKE_NVML_INIT_ERROR"] = "LIB_RM_VERSION_MISMATCH"  # what NVML says (F14)
        return env

    def _env(self, pod: dict[str, Any]) -> Mapping[str, str]:
        spec = pod["spec"]
        container = spec["containers"][0]
        image = container.get("image", "")
        if image not in PULLABLE_IMAGES:
            message = (
                f'failed to pull and unpack image "{image}": failed to resolve reference "{image}": {image}: not found'
            )
            raise ContainerStartError("ErrImagePull", message, event=f'Failed to pull image "{image}": {message}')
        # Pods here share this machine's network: no fixed metrics port for them.
        env: dict[str, str] = {"GPUNODE_METRICS_ADDR": "off"}
        volumes = {v["name"]: v.get("hostPath", {}).get("path", "") for v in spec.get("volumes") or []}
        mounted = [
            volumes.get(m["name"], "")
            for m in container.get("volumeMounts") or []
            if m.get("mountPath") == LIBRARY_MOUNT
        ]
        if mounted:
            found = _LIBRARY.search(mounted[0])
            env.update(self._nvml_env(found.group(1) if found else None))
        runtime_class = spec.get("runtimeClassName")
        if runtime_class:
            env.update(self._nvidia_runtime(runtime_class))
        limit = int(((container.get("resources") or {}).get("limits") or {}).get(RESOURCE, 0) or 0)
        if limit:
            env.update(self._allocate(limit))
        if self._is_daemon_pod(pod):
            with self._lock:
                self._registrations_at_start[pod["metadata"]["uid"]] = self.kubelet.registration_count(RESOURCE)
        return env

    def _nvidia_runtime(self, runtime_class: str) -> dict[str, str]:
        found = self.api.get("RuntimeClass", runtime_class)
        if found is None:
            raise ContainerStartError("CreateContainerConfigError", f'RuntimeClass "{runtime_class}" not found')
        handler = found.get("handler", "")
        dump = self.host.exec("containerd config dump", check=False).stdout
        if not dump or effective_runtime(dump, handler) is None:
            message = f'failed to get sandbox runtime: no runtime for "{handler}" is configured'
            raise ContainerStartError("CreateContainerError", message, event=message)
        # What the NVIDIA runtime injects: the host's NVML library and nvidia-smi.
        env = self._nvml_env(self.host_library_version())
        env["LD_LIBRARY_PATH"] = str(self.nvml.library_dir)
        env["PATH"] = os.pathsep.join([str(self.smi_dir), str(Path(sys.executable).parent), "/usr/bin:/bin"])
        return env

    def _allocate(self, count: int) -> dict[str, str]:
        healthy = [d.id for d in self.kubelet.devices(RESOURCE) if d.health == HEALTHY]
        if len(healthy) < count:
            raise ContainerStartError(
                "UnexpectedAdmissionError",
                f"Allocate failed due to requested number of devices unavailable for {RESOURCE}",
            )
        response = self.kubelet.allocate(RESOURCE, healthy[:count])
        return dict(response.container_responses[0].envs)

    # -- the GPUs -------------------------------------------------------------------------

    def set_gpus(self, gpus: tuple[FakeGpu, ...]) -> None:
        """What NVML reports from the next plugin start on."""
        self.nvml.configure(FakeNvmlConfig(gpus=gpus))

    def plugin_pods(self) -> list[dict[str, Any]]:
        return [p for p in self.api.list("Pod", namespace="kube-system") if self._mine(p) and self._is_daemon_pod(p)]


def kubeconfig_for_host(api: KubeApiStandIn) -> str:
    """The stand-in's kubeconfig, to copy into a test host (which shares the network)."""
    return api.kubeconfig_path.read_text()


def json_out(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    try:
        data = json.loads(result.stdout)
    except ValueError as exc:
        raise AssertionError(f"no JSON:\n{result.stdout}\n{result.stderr}") from exc
    assert isinstance(data, dict)
    return data
