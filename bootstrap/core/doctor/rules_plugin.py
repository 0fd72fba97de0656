"""Doctor rules over the device plugin pod on a node: what keeps it from running (mounts,
image, runtime, RuntimeClass), what its spec gets wrong (a system library directory over
the image's, F3), and why NVML failed in it, read from its log (gpunode's bundled plugin
or NVIDIA's) against its spec and, when known, the host. Pure."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from gpunode.bootstrap.core.containerd.effective import default_runtime_name
from gpunode.bootstrap.core.doctor.engine import Findings
from gpunode.bootstrap.core.doctor.evidence import JSON, ClusterView, DoctorCase, PodEvidence
from gpunode.bootstrap.core.doctor.rules_host import effective_config, library_evidence, runtime_name_for
from gpunode.bootstrap.core.kube.view import (
    container_env,
    container_states,
    containers_of,
    dig,
    event_text,
    host_path_mounts,
    is_privileged,
    is_up,
    name_of,
    owner_of,
    pod_spec_of,
    pod_summary,
    ref,
)
from gpunode.bootstrap.core.nvml.library import LibraryProblem, choose_nvml_library, driver_version_of
from gpunode.bootstrap.core.plugin_log import InitFailure, PluginLog, read_plugin_log
from gpunode.bootstrap.errors import GpunodeError

# Directories whose replacement by the host's copy swaps the container's libc (F3).
SYSTEM_LIBRARY_DIRS = frozenset(
    {
        "/lib",
        "/lib64",
        "/usr/lib",
        "/usr/lib64",
        "/lib/x86_64-linux-gnu",
        "/usr/lib/x86_64-linux-gnu",
        "/lib/aarch64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib/powerpc64le-linux-gnu",
    }
)
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
# The kubelet's and containerd's words for a runtime or RuntimeClass that is not there.
NO_RUNTIME = re.compile(r'no runtime for "?([\w.-]+)"? is configured')
NO_RUNTIMECLASS = re.compile(r'RuntimeClass "?([\w.-]+)"? not found')


def add_runtime_findings(
    findings: Findings, searched: str, texts: Sequence[str], summary: str, *, node: str, pod: str, runtime_class: object
) -> None:
    """F17 and RUNTIMECLASS-MISSING, read off what the kubelet said about a pod that cannot
    start (`searched`; `texts` are its events, the evidence). `node` and `pod` are named as the
    cause says them: "node gpu-1", "the device plugin pod kube-system/x"."""
    missing_runtime = NO_RUNTIME.search(searched)
    if missing_runtime:
        findings.add(
            "F17",
            f'containerd on {node} has no runtime "{missing_runtime.group(1)}": {pod} '
            f"(runtimeClassName {runtime_class}) cannot start.",
            [summary, *(t for t in texts if NO_RUNTIME.search(t))],
            "Install the toolkit and add the runtime (`gpunode bootstrap HOST`), or make the RuntimeClass "
            "handler name the runtime containerd has.",
            "critical",
            "containerd",
        )
    missing_class = NO_RUNTIMECLASS.search(searched)
    if missing_class:
        findings.add(
            "RUNTIMECLASS-MISSING",
            f'RuntimeClass "{missing_class.group(1)}" does not exist: {pod} cannot be created.',
            [summary, *texts[:3]],
            "Create RuntimeClass nvidia (handler nvidia): `gpunode render` prints it.",
            "critical",
            "runtimeclass",
        )


_EXEC_FAILED = re.compile(
    r"exec .*no such file or directory|GLIBC_PRIVATE|version `GLIBC_|"
    r"symbol lookup error",
    re.IGNORECASE,
)


@dataclass
class PluginSituation:
    """What serves the node: the DaemonSets that reach it, their pods there, or a host service."""

    daemonsets: list[JSON] = field(default_factory=list)
    pods: list[PodEvidence] = field(default_factory=list)
    host_service: bool = False
    none: bool = False  # no plugin at all, and no deployment verdict said why
    logs: dict[str, PluginLog] = field(default_factory=dict)  # pod ref -> its log read


# --- the plugin pod ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Cause:
    id: str
    cause: str
    fix: str
    link: str
    evidence: tuple[str, ...] = ()
    reboot_required: bool = False


def plugin_container(spec: JSON) -> JSON:
    containers = containers_of(spec)
    for container in containers:
        if any(m.host_path.rstrip("/").endswith("device-plugins") for m in host_path_mounts(spec, container)):
            return container
    return containers[0] if containers else {}


def plugin_rules(
    case: DoctorCase, view: ClusterView, node: JSON, situation: PluginSituation, findings: Findings
) -> None:
    if not situation.daemonsets:
        return
    node_name = name_of(node)
    if not situation.pods:
        lines = []
        for daemonset in situation.daemonsets:
            status = daemonset.get("status") or {}
            lines.append(
                f"DaemonSet {ref(daemonset)} ({owner_of(daemonset)}): desired "
                f"{status.get('desiredNumberScheduled', '?')}, current {status.get('currentNumberScheduled', '?')}, "
                f"ready {status.get('numberReady', '?')}"
            )
        findings.add(
            "DP-NO-POD",
            f"The device plugin DaemonSet selects node {node_name} but has no pod there.",
            lines,
            f"`kubectl describe ds -n {dig(situation.daemonsets[0], 'metadata', 'namespace')} "
            f"{name_of(situation.daemonsets[0])}` (its events say why), and check the node is Ready.",
            "critical",
            "deployment",
        )
        return
    for evidence in situation.pods:
        _one_plugin_pod(case, view, node, evidence, situation, findings)


def _one_plugin_pod(
    case: DoctorCase,
    view: ClusterView,
    node: JSON,
    evidence: PodEvidence,
    situation: PluginSituation,
    findings: Findings,
) -> None:
    before = len(findings.verdicts)
    _judge_plugin_pod(case, view, node, evidence, situation, findings)
    pod = evidence.pod
    if len(findings.verdicts) == before and not is_up(pod) and dig(pod, "status", "phase") != "Succeeded":
        # Not running, and nothing above says why: say what the pod and its events say.
        pod_ref = ref(pod)
        waiting_init = [
            s
            for s in container_states(pod)
            if s.state != "running"
            and s.name in {str(c.get("name")) for c in pod_spec_of(pod).get("initContainers") or []}
        ]
        lines = [f"pod {pod_ref}: {pod_summary(pod)}", *(event_text(e) for e in evidence.events[-5:])]
        if waiting_init:
            lines.append(
                "waiting in init container(s): "
                + ", ".join(s.name for s in waiting_init)
                + " (the GPU Operator's validators wait there for the driver and the toolkit)"
            )
        findings.add(
            "DP-POD-NOT-RUNNING",
            f"The device plugin pod {pod_ref} is not running.",
            lines,
            f"`kubectl describe pod -n {dig(pod, 'metadata', 'namespace')} {name_of(pod)}`; with the GPU "
            "Operator, its validator pods' logs name the driver or toolkit step that is not ready "
            "(`gpunode doctor HOST` judges those on the node).",
            "critical",
            "plugin",
        )


def _judge_plugin_pod(
    case: DoctorCase,
    view: ClusterView,
    node: JSON,
    evidence: PodEvidence,
    situation: PluginSituation,
    findings: Findings,
) -> None:
    pod = evidence.pod
    spec = pod_spec_of(pod)
    container = plugin_container(spec)
    pod_ref = ref(pod)
    summary = f"pod {pod_ref}: {pod_summary(pod)}"
    log = read_plugin_log(evidence.all_logs)
    situation.logs[pod_ref] = log
    if evidence.logs_problem:
        findings.skip(f"log of {pod_ref}", evidence.logs_problem)
    messages = [event_text(e) for e in evidence.events if e.get("type") == "Warning"]
    messages += [f"container {s.name}: {s.reason}: {s.message}" for s in container_states(pod) if s.message]
    messages += [
        f"container {s.name} last exit {s.last_exit_code}: {s.last_message}"
        for s in container_states(pod)
        if s.last_message
    ]

    # The pod never got to run the plugin: mounts, image, runtime.
    for event in evidence.events:
        if event.get("reason") != "FailedMount":
            continue
        text = str(event.get("message", ""))
        for mount in host_path_mounts(spec, container):
            if f'volume "{mount.volume}"' not in text:
                continue
            if posixpath.basename(mount.host_path).startswith("libnvidia-ml"):
                failed = _library_mount_failed(case, pod_ref, mount.host_path, text, summary)
                findings.add(failed.id, failed.cause, failed.evidence, failed.fix, "critical", failed.link)
            else:
                findings.add(
                    "DP-MOUNT",
                    f"The device plugin pod {pod_ref} cannot mount {mount.host_path}.",
                    [summary, event_text(event)],
                    "Make the hostPath exist on the node with the type the DaemonSet asks for, or fix "
                    "the DaemonSet's volume.",
                    "critical",
                    "plugin",
                )
    for state in container_states(pod):
        if state.reason in ("ImagePullBackOff", "ErrImagePull", "InvalidImageName"):
            image = str(container.get("image", ""))
            findings.add(
                "DP-IMAGE",
                f"The device plugin pod {pod_ref} cannot pull its image {image}.",
                [summary, *messages[:3]],
                "Check the image name and tag, the registry's reachability from the node, and imagePullSecrets.",
                "critical",
                "plugin",
            )
    add_runtime_findings(
        findings,
        " ".join(messages),
        messages,
        summary,
        node=f"node {name_of(node)}",
        pod=f"the device plugin pod {pod_ref}",
        runtime_class=spec.get("runtimeClassName"),
    )

    # F3 can be read off the spec alone: a whole system library directory over the image's.
    for mount in host_path_mounts(spec, container):
        if mount.host_path.rstrip("/") in SYSTEM_LIBRARY_DIRS and mount.mount_path.rstrip("/") in SYSTEM_LIBRARY_DIRS:
            exec_lines = [m for m in messages if _EXEC_FAILED.search(m)]
            if log.init_failure and log.init_failure.reason == "library_unusable":
                exec_lines.append(f"log: {log.init_failure.line}")
            findings.add(
                "F3",
                f"The device plugin pod {pod_ref} mounts the host's {mount.host_path} over the "
                f"container's {mount.mount_path}: the host's libc replaces the image's.",
                [summary, f"volume {mount.volume}: hostPath {mount.host_path} -> {mount.mount_path}", *exec_lines],
                "Never mount a system library directory: mount only the real libnvidia-ml.so.<version> "
                "(hostPath type File) at /usr/local/lib/libnvidia-ml.so.1 with "
                "LD_LIBRARY_PATH=/usr/local/lib (`gpunode render` does).",
                "critical",
                "plugin",
            )

    failure = log.init_failure
    if failure is not None:
        cause = _init_failure_cause(case, pod_ref, spec, container, failure)
        hidden = is_up(pod)
        lines = [summary, f"log: {failure.line.strip()}", *cause.evidence]
        if hidden:
            env = container_env(container)
            flags = [f"{k}={v}" for k, v in env.items() if k in ("FAIL_ON_INIT_ERROR", "GPUNODE_FAIL_ON_INIT_ERROR")]
            hide = ("with " + ", ".join(flags)) if flags else "because it ignores init errors"
            if cause.link in ("driver", "toolkit", "containerd"):
                findings.add(cause.id, cause.cause, lines, cause.fix, "critical", cause.link, cause.reboot_required)
            findings.add(
                "F11",
                f"The device plugin pod {pod_ref} is Running but advertises nothing: NVML failed to start "
                f"({failure.reason}; {cause.id}: {cause.cause.rstrip('.')}) and the plugin keeps running {hide}.",
                [*lines, *(f"env {flag}" for flag in flags)],
                "Make init errors fatal (FAIL_ON_INIT_ERROR=true, GPUNODE_FAIL_ON_INIT_ERROR=true, Helm "
                "failOnInitError: true) so the failure shows as a crash, and fix the cause: " + cause.fix,
                "critical",
                "plugin",
            )
        else:
            findings.add(cause.id, cause.cause, lines, cause.fix, "critical", cause.link, cause.reboot_required)
        return

    for state in container_states(pod):
        if state.reason == "CrashLoopBackOff" or (
            state.state == "terminated" and state.last_exit_code not in (None, 0)
        ):
            tail = [f"log: {line}" for line in evidence.all_logs.splitlines()[-5:]]
            exec_lines = [m for m in messages if _EXEC_FAILED.search(m)]
            findings.add(
                "DP-CRASH",
                f"The device plugin pod {pod_ref} keeps crashing, and its log names no NVML failure gpunode knows.",
                [summary, *exec_lines, *messages[:3], *tail],
                f"Read `kubectl logs -n {dig(pod, 'metadata', 'namespace')} {name_of(pod)} --previous`.",
                "critical",
                "plugin",
            )
            break
    if log.health_lines:
        findings.add(
            "GPU-UNHEALTHY",
            f"The device plugin {pod_ref} reports unhealthy GPUs: the kubelet does not count them in Allocatable.",
            [summary, *(f"log: {l}" for l in log.health_lines[-5:])],
            "Read the Xid on the host (`dmesg | grep -i xid`): 79 (fallen off the bus) and 48/63/64/94/95 "
            "(memory errors) need a reset or reboot; the plugin recovers the others by itself.",
            "warning",
            "driver",
        )
    if log.register_failures and not log.registered:
        findings.add(
            "DP-REGISTER-FAILED",
            f"The device plugin {pod_ref} cannot register with the kubelet.",
            [summary, *(f"log: {l}" for l in log.register_failures[-3:]), *kubelet_dir_lines(case, spec, container)],
            "Mount the kubelet's real device-plugins directory (its --root-dir + /device-plugins) into "
            "the plugin, and check the kubelet runs.",
            "critical",
            "registration",
        )


def kubelet_dir_lines(case: DoctorCase, spec: JSON, container: JSON) -> list[str]:
    lines = []
    mounted = [
        m.host_path for m in host_path_mounts(spec, container) if m.host_path.rstrip("/").endswith("device-plugins")
    ]
    if mounted:
        lines.append("the plugin mounts " + ", ".join(mounted))
    if case.host is not None:
        lines.append(f"the kubelet's device-plugins directory: {case.host.kubelet.root_dir}/device-plugins")
    return lines


def _library_mount_failed(case: DoctorCase, pod_ref: str, host_path: str, text: str, summary: str) -> _Cause:
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
                return _Cause(
                    "DP-LIB-STALE",
                    f"The device plugin pod {pod_ref} mounts the library of driver "
                    f"{mounted}, but the node now has driver {library.version}: the mount fails.",
                    "Re-render the DaemonSet for the new driver: `gpunode bootstrap HOST` (labels the "
                    "node and applies the DaemonSet that mounts the new file).",
                    "plugin",
                    tuple(evidence),
                )
    return _Cause(
        "F2",
        f"The device plugin pod {pod_ref} cannot mount its NVML library {host_path}: it is not a file on the node.",
        "On the node, resolve the symlink chain (`readlink -f /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1`) "
        "and mount that real file (hostPath type File) at /usr/local/lib/libnvidia-ml.so.1 with "
        "LD_LIBRARY_PATH=/usr/local/lib; `gpunode bootstrap` renders it so.",
        "plugin",
        tuple(evidence),
    )


def _init_failure_cause(case: DoctorCase, pod_ref: str, spec: JSON, container: JSON, failure: InitFailure) -> _Cause:
    reason = failure.reason
    mounts = host_path_mounts(spec, container)
    library_mounts = [m for m in mounts if posixpath.basename(m.host_path).startswith("libnvidia-ml")]
    dev_mounted = any(m.host_path.rstrip("/") == "/dev" or m.host_path.startswith("/dev/nvidia") for m in mounts)
    runtime_class = spec.get("runtimeClassName")
    privileged = is_privileged(container)
    env = container_env(container)
    mount_fix = (
        "Mount the host's real libnvidia-ml.so.<version> (resolve the symlink chain on the host) as a "
        "hostPath of type File at /usr/local/lib/libnvidia-ml.so.1 with LD_LIBRARY_PATH=/usr/local/lib, "
        "or run the pod with runtimeClassName: nvidia; `gpunode render` writes either."
    )
    where = f"in the device plugin pod {pod_ref}"
    spec_line = (
        f"pod spec: runtimeClassName {runtime_class or 'none'}, library mounts "
        + (", ".join(f"{m.host_path} -> {m.mount_path}" for m in library_mounts) or "none")
        + f", privileged {str(privileged).lower()}, /dev mounted {str(dev_mounted).lower()}"
    )
    if reason == "library_not_found":
        if library_mounts:
            mount = library_mounts[0]
            links = case.host.nvml.links if case.host is not None else {}
            ld_dirs = [d.rstrip("/") for d in env.get("LD_LIBRARY_PATH", "").split(":") if d]
            mount_dir = posixpath.dirname(mount.mount_path)
            if posixpath.basename(mount.host_path) == "libnvidia-ml.so.1" or mount.host_path in links:
                return _Cause(
                    "F2",
                    f"The device plugin pod {pod_ref} mounts {mount.host_path}, a symlink on the "
                    "host: a hostPath of a symlink mounts nothing useful, so NVML is not found.",
                    mount_fix,
                    "plugin",
                    (spec_line,),
                )
            if mount_dir not in ld_dirs and mount_dir not in _DEFAULT_LOADER_DIRS:
                return _Cause(
                    "F2",
                    f"The device plugin pod {pod_ref} mounts the library at {mount.mount_path}, "
                    f"where the loader does not look (LD_LIBRARY_PATH={env.get('LD_LIBRARY_PATH', '')!r}).",
                    mount_fix,
                    "plugin",
                    (spec_line,),
                )
            if posixpath.basename(mount.mount_path) != "libnvidia-ml.so.1":
                return _Cause(
                    "F2",
                    f"The device plugin pod {pod_ref} mounts the library as {mount.mount_path}, "
                    "but NVML is opened as libnvidia-ml.so.1.",
                    mount_fix,
                    "plugin",
                    (spec_line,),
                )
            return _Cause(
                "F2",
                f"The NVML library mounted into {pod_ref} ({mount.host_path}) cannot be loaded.",
                mount_fix,
                "plugin",
                (spec_line,),
            )
        if runtime_class:
            return _Cause(
                "DP-RUNTIME-NO-INJECT",
                f"The device plugin pod {pod_ref} runs with runtimeClassName "
                f"{runtime_class}, yet no libnvidia-ml was injected.",
                "Check that the RuntimeClass handler's containerd runtime runs nvidia-container-runtime "
                "(gpunode doctor HOST shows it) and that the pod sets NVIDIA_VISIBLE_DEVICES=all and "
                "NVIDIA_DRIVER_CAPABILITIES=utility.",
                "plugin",
                (spec_line,),
            )
        default = default_runtime(case)
        if default is not None and default == runtime_name_for(case):
            return _Cause(
                "F4",
                f"The device plugin pod {pod_ref} relies on containerd's default runtime "
                f"'{default}' to give it NVML, and it did not: pods created through CRI get no "
                "NVIDIA libraries from it.",
                mount_fix,
                "plugin",
                (spec_line, f"host: containerd default_runtime_name = {default!r}"),
            )
        return _Cause(
            "F1",
            f"The device plugin pod {pod_ref} runs under plain runc with no NVIDIA libraries: "
            "nothing mounts libnvidia-ml and it names no RuntimeClass, so NVML cannot be loaded.",
            mount_fix,
            "plugin",
            (spec_line,) + ((f"host: containerd default runtime {default!r}",) if default else ()),
        )
    if reason == "library_unusable":
        text = failure.error + " " + failure.line
        if re.search(r"ELFCLASS32|wrong ELF class|i386", text):
            return _Cause(
                "DP-LIB-ARCH",
                f"The library mounted into {pod_ref} is built for another architecture (the 32-bit i386 copy?).",
                "Mount the copy of the node's architecture: `readlink -f` "
                "of the x86_64 libnvidia-ml.so.1 (never the i386 one).",
                "plugin",
                (spec_line,),
            )
        if re.search(r"GLIBC|no such file", text, re.IGNORECASE):
            return _Cause(
                "F3",
                f"The device plugin pod {pod_ref} loads the host's system libraries over its own: "
                "glibc symbols do not match.",
                "Never mount a system library directory: mount only the "
                "real libnvidia-ml.so.<version> at /usr/local/lib/libnvidia-ml.so.1.",
                "plugin",
                (spec_line,),
            )
        return _Cause(
            "DP-LIB-UNUSABLE",
            f"The NVML library in {pod_ref} cannot be loaded: {failure.error}",
            mount_fix,
            "plugin",
            (spec_line,),
        )
    if reason == "library_too_old":
        return _Cause(
            "DP-LIB-OLD",
            f"The NVML library in {pod_ref} is older than the plugin needs.",
            "Mount the driver's current libnvidia-ml.so.<version>; after a driver upgrade re-run "
            "`gpunode bootstrap` so the mount follows.",
            "plugin",
            (spec_line,),
        )
    if reason == "driver_not_loaded":
        return _Cause(
            "F13",
            f"NVML {where} says the NVIDIA driver is not loaded on the node: the driver does "
            "not initialise (nouveau, Secure Boot, a failed module build).",
            "Run `gpunode doctor HOST` on the node for the exact cause; load or fix the module "
            "(`modprobe nvidia`, blacklist nouveau) and reboot if it says so.",
            "driver",
        )
    if reason == "driver_library_mismatch":
        return _Cause(
            "F14",
            f"NVML {where} fails with Driver/library version mismatch: the driver was upgraded "
            "and the node not rebooted.",
            "Reboot the node so the module matches the library, then "
            "run `gpunode bootstrap` so the plugin mounts the new library.",
            "driver",
            reboot_required=True,
        )
    if reason == "no_permission":
        if not runtime_class and not privileged:
            return _Cause(
                "F5",
                f"The device plugin pod {pod_ref} sees /dev/nvidia* but its device cgroup "
                "refuses them: NVML says Insufficient Permissions.",
                "The mount approach needs `securityContext: privileged: true`; or use runtimeClassName "
                "nvidia and let the NVIDIA runtime add the devices.",
                "plugin",
                (spec_line,),
            )
        return _Cause(
            "DP-PERMISSION",
            f"NVML {where} is refused the GPUs (Insufficient Permissions) although "
            "the pod is privileged or uses the NVIDIA runtime.",
            "Check /dev/nvidia* ownership and modes on the host and SELinux/AppArmor denials "
            "(`ausearch -m avc`, `dmesg | grep -i denied`).",
            "plugin",
            (spec_line,),
        )
    if reason == "nvml_unknown_error":
        if not runtime_class and not dev_mounted and not privileged:
            return _Cause(
                "DP-NO-DEVICES",
                f"The device plugin pod {pod_ref} has the library but no GPU device nodes: NVML answers Unknown Error.",
                "Mount /dev with `privileged: true`, or use runtimeClassName nvidia so the runtime adds /dev/nvidia*.",
                "plugin",
                (spec_line,),
            )
        if dev_mounted and not privileged and not runtime_class:
            return _Cause(
                "F5",
                f"The device plugin pod {pod_ref} sees /dev/nvidia* through a /dev mount but its "
                "device cgroup denies them.",
                "Add `securityContext: privileged: true` (the mount "
                "approach needs it), or use runtimeClassName nvidia.",
                "plugin",
                (spec_line,),
            )
        return _Cause(
            "DRIVER-ERROR",
            f"NVML {where} answers Unknown Error although the pod has the devices: "
            "the driver is in a bad state on the node.",
            "Check the node itself: `gpunode doctor HOST`, "
            "`dmesg | grep -i -e nvrm -e xid`; a reboot clears most of these.",
            "driver",
            (spec_line,),
        )
    if reason in ("mig_no_permission", "mig_strategy_mismatch"):
        return _Cause(
            "F7",
            f"The device plugin {pod_ref} cannot read the MIG configuration ({failure.error}).",
            "Give it MIG monitoring: NVIDIA_MIG_MONITOR_DEVICES=all and capability SYS_ADMIN, and use "
            "MIG strategy mixed where MIG and non-MIG GPUs are mixed (`gpunode render --mig-strategy "
            "mixed`).",
            "plugin",
            (spec_line,),
        )
    if reason == "no_devices":
        return _Cause(
            "F13",
            f"NVML {where} starts but finds no GPU: the driver does not drive the node's GPUs "
            "(a branch too new for the GPU, nouveau, a GPU off the bus).",
            "Run `gpunode doctor HOST` on the node; `dmesg | grep -i nvrm` names the reason.",
            "driver",
            (spec_line,),
        )
    return _Cause(
        "DP-NVML-ERROR",
        f"NVML {where} fails: {failure.error}",
        "Run `gpunode doctor HOST` on the node and compare with the host's own NVML check.",
        "plugin",
        (spec_line,),
    )


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
