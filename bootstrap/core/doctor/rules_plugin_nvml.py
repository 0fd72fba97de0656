"""Why NVML failed in a device plugin pod: the plugin's reason read against the pod's spec
(how it was meant to get the library and the devices) and, when known, the host. Pure."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass

from gpunode.bootstrap.core.containerd.effective import default_runtime_name
from gpunode.bootstrap.core.doctor.evidence import JSON, DoctorCase
from gpunode.bootstrap.core.doctor.rules_host import library_evidence
from gpunode.bootstrap.core.doctor.rules_runtime import effective_config, runtime_name_for
from gpunode.bootstrap.core.kube.view import HostPathMount, container_env, host_path_mounts, is_privileged
from gpunode.bootstrap.core.nvml.library import LibraryProblem, choose_nvml_library, driver_version_of
from gpunode.bootstrap.core.plugin_log import InitFailure
from gpunode.bootstrap.errors import GpunodeError

# Where the dynamic loader looks without LD_LIBRARY_PATH (ld.so's defaults on glibc images).
_DEFAULT_LOADER_DIRS = frozenset(
    {
        "/lib",
        "/lib64",
        "/usr/lib",
        "/usr/lib64",
        "/usr/lib/x86_64-linux-gnu",
        "/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
    }
)
MOUNT_FIX = (
    "Mount the host's real libnvidia-ml.so.<version> (resolve the symlink chain on the host) as a "
    "hostPath of type File at /usr/local/lib/libnvidia-ml.so.1 with LD_LIBRARY_PATH=/usr/local/lib, "
    "or run the pod with runtimeClassName: nvidia; `gpunode render` writes either."
)


@dataclass(frozen=True)
class PluginCause:
    id: str
    cause: str
    fix: str
    link: str
    evidence: tuple[str, ...] = ()
    reboot_required: bool = False


def library_mount_failed(case: DoctorCase, pod_ref: str, host_path: str, text: str, summary: str) -> PluginCause:
    evidence = [summary, f"event: {text}"]
    if case.host is not None:
        try:
            library = choose_nvml_library(library_evidence(case.host))
        except LibraryProblem:
            library = None
        if library is not None and library.path != host_path:
            evidence.append(f"the host's library: {' -> '.join(library.chain)}")
            mounted = driver_version_of(host_path)
            if mounted and mounted != library.version:
                return PluginCause(
                    "DP-LIB-STALE",
                    cause=f"The device plugin pod {pod_ref} mounts the library of driver "
                    f"{mounted}, but the node now has driver {library.version}: the mount fails.",
                    fix="Re-render the DaemonSet for the new driver: `gpunode bootstrap HOST` (labels the "
                    "node and applies the DaemonSet that mounts the new file).",
                    link="plugin",
                    evidence=tuple(evidence),
                )
    return PluginCause(
        "F2",
        cause=f"The device plugin pod {pod_ref} cannot mount its NVML library {host_path}: it is not a file on the node.",
        fix="On the node, resolve the symlink chain (`readlink -f /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1`) "
        "and mount that real file (hostPath type File) at /usr/local/lib/libnvidia-ml.so.1 with "
        "LD_LIBRARY_PATH=/usr/local/lib; `gpunode bootstrap` renders it so.",
        link="plugin",
        evidence=tuple(evidence),
    )


@dataclass(frozen=True)
class _PluginPod:
    """The device plugin pod whose NVML failed, as the causes read it."""

    case: DoctorCase
    pod_ref: str
    failure: InitFailure
    mounts: list[HostPathMount]
    library_mounts: list[HostPathMount]
    dev_mounted: bool
    runtime_class: object
    privileged: bool
    env: dict[str, str]

    @property
    def where(self) -> str:
        return f"in the device plugin pod {self.pod_ref}"

    @property
    def spec_line(self) -> str:
        return (
            f"pod spec: runtimeClassName {self.runtime_class or 'none'}, library mounts "
            + (", ".join(f"{m.host_path} -> {m.mount_path}" for m in self.library_mounts) or "none")
            + f", privileged {str(self.privileged).lower()}, /dev mounted {str(self.dev_mounted).lower()}"
        )


def init_failure_cause(
    case: DoctorCase, pod_ref: str, spec: JSON, container: JSON, failure: InitFailure
) -> PluginCause:
    """Why NVML failed in the plugin pod, read from the plugin's reason against the pod's spec
    (and the host, when known)."""
    mounts = host_path_mounts(spec, container)
    pod = _PluginPod(
        case=case,
        pod_ref=pod_ref,
        failure=failure,
        mounts=mounts,
        library_mounts=[m for m in mounts if posixpath.basename(m.host_path).startswith("libnvidia-ml")],
        dev_mounted=any(m.host_path.rstrip("/") == "/dev" or m.host_path.startswith("/dev/nvidia") for m in mounts),
        runtime_class=spec.get("runtimeClassName"),
        privileged=is_privileged(container),
        env=container_env(container),
    )
    return _BY_REASON.get(failure.reason, _nvml_error)(pod)


def _library_not_found(pod: _PluginPod) -> PluginCause:
    """NVML's library is not found in the pod: how the pod was meant to get it says why."""
    case = pod.case
    pod_ref = pod.pod_ref
    library_mounts = pod.library_mounts
    runtime_class = pod.runtime_class
    env = pod.env
    spec_line = pod.spec_line
    if library_mounts:
        mount = library_mounts[0]
        links = case.host.nvml.links if case.host is not None else {}
        ld_dirs = [d.rstrip("/") for d in env.get("LD_LIBRARY_PATH", "").split(":") if d]
        mount_dir = posixpath.dirname(mount.mount_path)
        if posixpath.basename(mount.host_path) == "libnvidia-ml.so.1" or mount.host_path in links:
            return PluginCause(
                "F2",
                cause=f"The device plugin pod {pod_ref} mounts {mount.host_path}, a symlink on the "
                "host: a hostPath of a symlink mounts nothing useful, so NVML is not found.",
                fix=MOUNT_FIX,
                link="plugin",
                evidence=(spec_line,),
            )
        if mount_dir not in ld_dirs and mount_dir not in _DEFAULT_LOADER_DIRS:
            return PluginCause(
                "F2",
                cause=f"The device plugin pod {pod_ref} mounts the library at {mount.mount_path}, "
                f"where the loader does not look (LD_LIBRARY_PATH={env.get('LD_LIBRARY_PATH', '')!r}).",
                fix=MOUNT_FIX,
                link="plugin",
                evidence=(spec_line,),
            )
        if posixpath.basename(mount.mount_path) != "libnvidia-ml.so.1":
            return PluginCause(
                "F2",
                cause=f"The device plugin pod {pod_ref} mounts the library as {mount.mount_path}, "
                "but NVML is opened as libnvidia-ml.so.1.",
                fix=MOUNT_FIX,
                link="plugin",
                evidence=(spec_line,),
            )
        return PluginCause(
            "F2",
            cause=f"The NVML library mounted into {pod_ref} ({mount.host_path}) cannot be loaded.",
            fix=MOUNT_FIX,
            link="plugin",
            evidence=(spec_line,),
        )
    if runtime_class:
        return PluginCause(
            "DP-RUNTIME-NO-INJECT",
            cause=f"The device plugin pod {pod_ref} runs with runtimeClassName "
            f"{runtime_class}, yet no libnvidia-ml was injected.",
            fix="Check that the RuntimeClass handler's containerd runtime runs nvidia-container-runtime "
            "(gpunode doctor HOST shows it) and that the pod sets NVIDIA_VISIBLE_DEVICES=all and "
            "NVIDIA_DRIVER_CAPABILITIES=utility.",
            link="plugin",
            evidence=(spec_line,),
        )
    default = default_runtime(case)
    if default is not None and default == runtime_name_for(case):
        return PluginCause(
            "F4",
            cause=f"The device plugin pod {pod_ref} relies on containerd's default runtime "
            f"'{default}' to give it NVML, and it did not: pods created through CRI get no "
            "NVIDIA libraries from it.",
            fix=MOUNT_FIX,
            link="plugin",
            evidence=(spec_line, f"host: containerd default_runtime_name = {default!r}"),
        )
    return PluginCause(
        "F1",
        cause=f"The device plugin pod {pod_ref} runs under plain runc with no NVIDIA libraries: "
        "nothing mounts libnvidia-ml and it names no RuntimeClass, so NVML cannot be loaded.",
        fix=MOUNT_FIX,
        link="plugin",
        evidence=(spec_line,) + ((f"host: containerd default runtime {default!r}",) if default else ()),
    )


def _library_unusable(pod: _PluginPod) -> PluginCause:
    """The library is there but cannot be loaded."""
    pod_ref = pod.pod_ref
    failure = pod.failure
    spec_line = pod.spec_line
    text = failure.error + " " + failure.line
    if re.search(r"ELFCLASS32|wrong ELF class|i386", text):
        return PluginCause(
            "DP-LIB-ARCH",
            cause=f"The library mounted into {pod_ref} is built for another architecture (the 32-bit i386 copy?).",
            fix="Mount the copy of the node's architecture: `readlink -f` "
            "of the x86_64 libnvidia-ml.so.1 (never the i386 one).",
            link="plugin",
            evidence=(spec_line,),
        )
    if re.search(r"GLIBC|no such file", text, re.IGNORECASE):
        return PluginCause(
            "F3",
            cause=f"The device plugin pod {pod_ref} loads the host's system libraries over its own: "
            "glibc symbols do not match.",
            fix="Never mount a system library directory: mount only the "
            "real libnvidia-ml.so.<version> at /usr/local/lib/libnvidia-ml.so.1.",
            link="plugin",
            evidence=(spec_line,),
        )
    return PluginCause(
        "DP-LIB-UNUSABLE",
        cause=f"The NVML library in {pod_ref} cannot be loaded: {failure.error}",
        fix=MOUNT_FIX,
        link="plugin",
        evidence=(spec_line,),
    )


def _library_too_old(pod: _PluginPod) -> PluginCause:
    """The library is older than the plugin needs."""
    pod_ref = pod.pod_ref
    spec_line = pod.spec_line
    return PluginCause(
        "DP-LIB-OLD",
        cause=f"The NVML library in {pod_ref} is older than the plugin needs.",
        fix="Mount the driver's current libnvidia-ml.so.<version>; after a driver upgrade re-run "
        "`gpunode bootstrap` so the mount follows.",
        link="plugin",
        evidence=(spec_line,),
    )


def _driver_not_loaded(pod: _PluginPod) -> PluginCause:
    """The kernel module is not loaded."""
    return PluginCause(
        "F13",
        cause=f"NVML {pod.where} says the NVIDIA driver is not loaded on the node: the driver does "
        "not initialise (nouveau, Secure Boot, a failed module build).",
        fix="Run `gpunode doctor HOST` on the node for the exact cause; load or fix the module "
        "(`modprobe nvidia`, blacklist nouveau) and reboot if it says so.",
        link="driver",
    )


def _driver_library_mismatch(pod: _PluginPod) -> PluginCause:
    """The module and the library disagree."""
    return PluginCause(
        "F14",
        cause=f"NVML {pod.where} fails with Driver/library version mismatch: the driver was upgraded "
        "and the node not rebooted.",
        fix="Reboot the node so the module matches the library, then "
        "run `gpunode bootstrap` so the plugin mounts the new library.",
        link="driver",
        reboot_required=True,
    )


def _no_permission(pod: _PluginPod) -> PluginCause:
    """NVML is refused the devices."""
    pod_ref = pod.pod_ref
    runtime_class = pod.runtime_class
    privileged = pod.privileged
    spec_line = pod.spec_line
    if not runtime_class and not privileged:
        return PluginCause(
            "F5",
            cause=f"The device plugin pod {pod_ref} sees /dev/nvidia* but its device cgroup "
            "refuses them: NVML says Insufficient Permissions.",
            fix="The mount approach needs `securityContext: privileged: true`; or use runtimeClassName "
            "nvidia and let the NVIDIA runtime add the devices.",
            link="plugin",
            evidence=(spec_line,),
        )
    return PluginCause(
        "DP-PERMISSION",
        cause=f"NVML {pod.where} is refused the GPUs (Insufficient Permissions) although "
        "the pod is privileged or uses the NVIDIA runtime.",
        fix="Check /dev/nvidia* ownership and modes on the host and SELinux/AppArmor denials "
        "(`ausearch -m avc`, `dmesg | grep -i denied`).",
        link="plugin",
        evidence=(spec_line,),
    )


def _nvml_unknown_error(pod: _PluginPod) -> PluginCause:
    """NVML answers Unknown Error."""
    pod_ref = pod.pod_ref
    dev_mounted = pod.dev_mounted
    runtime_class = pod.runtime_class
    privileged = pod.privileged
    spec_line = pod.spec_line
    if not runtime_class and not dev_mounted and not privileged:
        return PluginCause(
            "DP-NO-DEVICES",
            cause=f"The device plugin pod {pod_ref} has the library but no GPU device nodes: NVML answers Unknown Error.",
            fix="Mount /dev with `privileged: true`, or use runtimeClassName nvidia so the runtime adds /dev/nvidia*.",
            link="plugin",
            evidence=(spec_line,),
        )
    if dev_mounted and not privileged and not runtime_class:
        return PluginCause(
            "F5",
            cause=f"The device plugin pod {pod_ref} sees /dev/nvidia* through a /dev mount but its "
            "device cgroup denies them.",
            fix="Add `securityContext: privileged: true` (the mount "
            "approach needs it), or use runtimeClassName nvidia.",
            link="plugin",
            evidence=(spec_line,),
        )
    return PluginCause(
        "DRIVER-ERROR",
        cause=f"NVML {pod.where} answers Unknown Error although the pod has the devices: "
        "the driver is in a bad state on the node.",
        fix="Check the node itself: `gpunode doctor HOST`, "
        "`dmesg | grep -i -e nvrm -e xid`; a reboot clears most of these.",
        link="driver",
        evidence=(spec_line,),
    )


def _mig(pod: _PluginPod) -> PluginCause:
    """MIG capabilities unreadable, or the MIG strategy does not fit."""
    pod_ref = pod.pod_ref
    failure = pod.failure
    spec_line = pod.spec_line
    return PluginCause(
        "F7",
        cause=f"The device plugin {pod_ref} cannot read the MIG configuration ({failure.error}).",
        fix="Give it MIG monitoring: NVIDIA_MIG_MONITOR_DEVICES=all and capability SYS_ADMIN, and use "
        "MIG strategy mixed where MIG and non-MIG GPUs are mixed (`gpunode render --mig-strategy "
        "mixed`).",
        link="plugin",
        evidence=(spec_line,),
    )


def _no_devices(pod: _PluginPod) -> PluginCause:
    """NVML starts and finds no GPU."""
    spec_line = pod.spec_line
    return PluginCause(
        "F13",
        cause=f"NVML {pod.where} starts but finds no GPU: the driver does not drive the node's GPUs "
        "(a branch too new for the GPU, nouveau, a GPU off the bus).",
        fix="Run `gpunode doctor HOST` on the node; `dmesg | grep -i nvrm` names the reason.",
        link="driver",
        evidence=(spec_line,),
    )


def _nvml_error(pod: _PluginPod) -> PluginCause:
    """Any other NVML failure."""
    failure = pod.failure
    spec_line = pod.spec_line
    return PluginCause(
        "DP-NVML-ERROR",
        cause=f"NVML {pod.where} fails: {failure.error}",
        fix="Run `gpunode doctor HOST` on the node and compare with the host's own NVML check.",
        link="plugin",
        evidence=(spec_line,),
    )


_BY_REASON: dict[str, Callable[[_PluginPod], PluginCause]] = {
    "library_not_found": _library_not_found,
    "library_unusable": _library_unusable,
    "library_too_old": _library_too_old,
    "driver_not_loaded": _driver_not_loaded,
    "driver_library_mismatch": _driver_library_mismatch,
    "no_permission": _no_permission,
    "nvml_unknown_error": _nvml_unknown_error,
    "mig_no_permission": _mig,
    "mig_strategy_mismatch": _mig,
    "no_devices": _no_devices,
}


def default_runtime(case: DoctorCase) -> str | None:
    if case.host is None:
        return None
    text, _ = effective_config(case.host)
    if not text:
        return None
    try:
        return default_runtime_name(text)
    except GpunodeError:
        return None
