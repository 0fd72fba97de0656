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
from gpunode.bootstrap.core.kube.manifests import BUNDLED_IMAGE_REPOSITORY
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
            cause=f'containerd on {node} has no runtime "{missing_runtime.group(1)}": {pod} '
            f"(runtimeClassName {runtime_class}) cannot start.",
            evidence=[summary, *(t for t in texts if NO_RUNTIME.search(t))],
            fix="Install the toolkit and add the runtime (`gpunode bootstrap HOST`), or make the RuntimeClass "
            "handler name the runtime containerd has.",
        )
    missing_class = NO_RUNTIMECLASS.search(searched)
    if missing_class:
        findings.add(
            "RUNTIMECLASS-MISSING",
            cause=f'RuntimeClass "{missing_class.group(1)}" does not exist: {pod} cannot be created.',
            evidence=[summary, *texts[:3]],
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
            cause=f"The device plugin DaemonSet selects node {node_name} but has no pod there.",
            evidence=lines,
            fix=f"`kubectl describe ds -n {dig(situation.daemonsets[0], 'metadata', 'namespace')} "
            f"{name_of(situation.daemonsets[0])}` (its events say why), and check the node is Ready.",
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
            cause=f"The device plugin pod {pod_ref} is not running.",
            evidence=lines,
            fix=f"`kubectl describe pod -n {dig(pod, 'metadata', 'namespace')} {name_of(pod)}`; with the GPU "
            "Operator, its validator pods' logs name the driver or toolkit step that is not ready "
            "(`gpunode doctor HOST` judges those on the node).",
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
                findings.add(
                    failed.id,
                    cause=failed.cause,
                    evidence=failed.evidence,
                    fix=failed.fix,
                    severity="critical",
                    link=failed.link,
                )
            else:
                findings.add(
                    "DP-MOUNT",
                    cause=f"The device plugin pod {pod_ref} cannot mount {mount.host_path}.",
                    evidence=[summary, event_text(event)],
                )
    for state in container_states(pod):
        if state.reason in ("ImagePullBackOff", "ErrImagePull", "InvalidImageName"):
            image = str(container.get("image", ""))
            pull_cause, pull_fix = _image_pull_failure(image)
            findings.add(
                "DP-IMAGE",
                cause=f"The device plugin pod {pod_ref} {pull_cause}",
                evidence=[summary, *messages[:3]],
                fix=pull_fix,
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
                cause=f"The device plugin pod {pod_ref} mounts the host's {mount.host_path} over the "
                f"container's {mount.mount_path}: the host's libc replaces the image's.",
                evidence=[
                    summary,
                    f"volume {mount.volume}: hostPath {mount.host_path} -> {mount.mount_path}",
                    *exec_lines,
                ],
            )

    failure = log.init_failure
    if failure is not None:
        cause = _init_failure_cause(case, pod_ref, spec, container, failure)
        hidden = is_up(pod)
        lines = [summary, f"log: {failure.line.strip()}", *cause.evidence]
        # The failure is a verdict of its own, whatever hides it: a consumer of --output json
        # sees F1 (or F5, F14, ...) at its own link, first, and F11 says it was hidden.
        findings.add(
            cause.id,
            cause=cause.cause,
            evidence=lines,
            fix=cause.fix,
            link=cause.link,
            reboot_required=cause.reboot_required,
        )
        if hidden:
            env = container_env(container)
            flags = [f"{k}={v}" for k, v in env.items() if k in ("FAIL_ON_INIT_ERROR", "GPUNODE_FAIL_ON_INIT_ERROR")]
            hide = ("with " + ", ".join(flags)) if flags else "because it ignores init errors"
            findings.add(
                "F11",
                cause=f"The device plugin pod {pod_ref} is Running but advertises nothing: it hides its NVML "
                f"failure ({failure.reason}, {cause.id} above) and keeps running {hide}.",
                evidence=[summary, f"log: {failure.line.strip()}", *(f"env {flag}" for flag in flags)],
            )
        return

    for state in container_states(pod):
        if state.reason == "CrashLoopBackOff" or (
            state.state == "terminated" and state.last_exit_code not in (None, 0)
        ):
            tail = [f"log: {line}" for line in evidence.all_logs.splitlines()[-5:]]
            exec_lines = [m for m in messages if _EXEC_FAILED.search(m)]
            findings.add(
                "DP-CRASH",
                cause=f"The device plugin pod {pod_ref} keeps crashing, and its log names no NVML failure gpunode knows.",
                evidence=[summary, *exec_lines, *messages[:3], *tail],
                fix=f"Read `kubectl logs -n {dig(pod, 'metadata', 'namespace')} {name_of(pod)} --previous`.",
            )
            break
    if log.health_lines:
        findings.add(
            "GPU-UNHEALTHY",
            cause=f"The device plugin {pod_ref} reports unhealthy GPUs: the kubelet does not count them in Allocatable.",
            evidence=[summary, *(f"log: {l}" for l in log.health_lines[-5:])],
        )
    if log.register_failures and not log.registered:
        findings.add(
            "DP-REGISTER-FAILED",
            cause=f"The device plugin {pod_ref} cannot register with the kubelet.",
            evidence=[
                summary,
                *(f"log: {l}" for l in log.register_failures[-3:]),
                *kubelet_dir_lines(case, spec, container),
            ],
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
                    cause=f"The device plugin pod {pod_ref} mounts the library of driver "
                    f"{mounted}, but the node now has driver {library.version}: the mount fails.",
                    fix="Re-render the DaemonSet for the new driver: `gpunode bootstrap HOST` (labels the "
                    "node and applies the DaemonSet that mounts the new file).",
                    link="plugin",
                    evidence=tuple(evidence),
                )
    return _Cause(
        "F2",
        cause=f"The device plugin pod {pod_ref} cannot mount its NVML library {host_path}: it is not a file on the node.",
        fix="On the node, resolve the symlink chain (`readlink -f /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1`) "
        "and mount that real file (hostPath type File) at /usr/local/lib/libnvidia-ml.so.1 with "
        "LD_LIBRARY_PATH=/usr/local/lib; `gpunode bootstrap` renders it so.",
        link="plugin",
        evidence=tuple(evidence),
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
                    cause=f"The device plugin pod {pod_ref} mounts {mount.host_path}, a symlink on the "
                    "host: a hostPath of a symlink mounts nothing useful, so NVML is not found.",
                    fix=mount_fix,
                    link="plugin",
                    evidence=(spec_line,),
                )
            if mount_dir not in ld_dirs and mount_dir not in _DEFAULT_LOADER_DIRS:
                return _Cause(
                    "F2",
                    cause=f"The device plugin pod {pod_ref} mounts the library at {mount.mount_path}, "
                    f"where the loader does not look (LD_LIBRARY_PATH={env.get('LD_LIBRARY_PATH', '')!r}).",
                    fix=mount_fix,
                    link="plugin",
                    evidence=(spec_line,),
                )
            if posixpath.basename(mount.mount_path) != "libnvidia-ml.so.1":
                return _Cause(
                    "F2",
                    cause=f"The device plugin pod {pod_ref} mounts the library as {mount.mount_path}, "
                    "but NVML is opened as libnvidia-ml.so.1.",
                    fix=mount_fix,
                    link="plugin",
                    evidence=(spec_line,),
                )
            return _Cause(
                "F2",
                cause=f"The NVML library mounted into {pod_ref} ({mount.host_path}) cannot be loaded.",
                fix=mount_fix,
                link="plugin",
                evidence=(spec_line,),
            )
        if runtime_class:
            return _Cause(
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
            return _Cause(
                "F4",
                cause=f"The device plugin pod {pod_ref} relies on containerd's default runtime "
                f"'{default}' to give it NVML, and it did not: pods created through CRI get no "
                "NVIDIA libraries from it.",
                fix=mount_fix,
                link="plugin",
                evidence=(spec_line, f"host: containerd default_runtime_name = {default!r}"),
            )
        return _Cause(
            "F1",
            cause=f"The device plugin pod {pod_ref} runs under plain runc with no NVIDIA libraries: "
            "nothing mounts libnvidia-ml and it names no RuntimeClass, so NVML cannot be loaded.",
            fix=mount_fix,
            link="plugin",
            evidence=(spec_line,) + ((f"host: containerd default runtime {default!r}",) if default else ()),
        )
    if reason == "library_unusable":
        text = failure.error + " " + failure.line
        if re.search(r"ELFCLASS32|wrong ELF class|i386", text):
            return _Cause(
                "DP-LIB-ARCH",
                cause=f"The library mounted into {pod_ref} is built for another architecture (the 32-bit i386 copy?).",
                fix="Mount the copy of the node's architecture: `readlink -f` "
                "of the x86_64 libnvidia-ml.so.1 (never the i386 one).",
                link="plugin",
                evidence=(spec_line,),
            )
        if re.search(r"GLIBC|no such file", text, re.IGNORECASE):
            return _Cause(
                "F3",
                cause=f"The device plugin pod {pod_ref} loads the host's system libraries over its own: "
                "glibc symbols do not match.",
                fix="Never mount a system library directory: mount only the "
                "real libnvidia-ml.so.<version> at /usr/local/lib/libnvidia-ml.so.1.",
                link="plugin",
                evidence=(spec_line,),
            )
        return _Cause(
            "DP-LIB-UNUSABLE",
            cause=f"The NVML library in {pod_ref} cannot be loaded: {failure.error}",
            fix=mount_fix,
            link="plugin",
            evidence=(spec_line,),
        )
    if reason == "library_too_old":
        return _Cause(
            "DP-LIB-OLD",
            cause=f"The NVML library in {pod_ref} is older than the plugin needs.",
            fix="Mount the driver's current libnvidia-ml.so.<version>; after a driver upgrade re-run "
            "`gpunode bootstrap` so the mount follows.",
            link="plugin",
            evidence=(spec_line,),
        )
    if reason == "driver_not_loaded":
        return _Cause(
            "F13",
            cause=f"NVML {where} says the NVIDIA driver is not loaded on the node: the driver does "
            "not initialise (nouveau, Secure Boot, a failed module build).",
            fix="Run `gpunode doctor HOST` on the node for the exact cause; load or fix the module "
            "(`modprobe nvidia`, blacklist nouveau) and reboot if it says so.",
            link="driver",
        )
    if reason == "driver_library_mismatch":
        return _Cause(
            "F14",
            cause=f"NVML {where} fails with Driver/library version mismatch: the driver was upgraded "
            "and the node not rebooted.",
            fix="Reboot the node so the module matches the library, then "
            "run `gpunode bootstrap` so the plugin mounts the new library.",
            link="driver",
            reboot_required=True,
        )
    if reason == "no_permission":
        if not runtime_class and not privileged:
            return _Cause(
                "F5",
                cause=f"The device plugin pod {pod_ref} sees /dev/nvidia* but its device cgroup "
                "refuses them: NVML says Insufficient Permissions.",
                fix="The mount approach needs `securityContext: privileged: true`; or use runtimeClassName "
                "nvidia and let the NVIDIA runtime add the devices.",
                link="plugin",
                evidence=(spec_line,),
            )
        return _Cause(
            "DP-PERMISSION",
            cause=f"NVML {where} is refused the GPUs (Insufficient Permissions) although "
            "the pod is privileged or uses the NVIDIA runtime.",
            fix="Check /dev/nvidia* ownership and modes on the host and SELinux/AppArmor denials "
            "(`ausearch -m avc`, `dmesg | grep -i denied`).",
            link="plugin",
            evidence=(spec_line,),
        )
    if reason == "nvml_unknown_error":
        if not runtime_class and not dev_mounted and not privileged:
            return _Cause(
                "DP-NO-DEVICES",
                cause=f"The device plugin pod {pod_ref} has the library but no GPU device nodes: NVML answers Unknown Error.",
                fix="Mount /dev with `privileged: true`, or use runtimeClassName nvidia so the runtime adds /dev/nvidia*.",
                link="plugin",
                evidence=(spec_line,),
            )
        if dev_mounted and not privileged and not runtime_class:
            return _Cause(
                "F5",
                cause=f"The device plugin pod {pod_ref} sees /dev/nvidia* through a /dev mount but its "
                "device cgroup denies them.",
                fix="Add `securityContext: privileged: true` (the mount "
                "approach needs it), or use runtimeClassName nvidia.",
                link="plugin",
                evidence=(spec_line,),
            )
        return _Cause(
            "DRIVER-ERROR",
            cause=f"NVML {where} answers Unknown Error although the pod has the devices: "
            "the driver is in a bad state on the node.",
            fix="Check the node itself: `gpunode doctor HOST`, "
            "`dmesg | grep -i -e nvrm -e xid`; a reboot clears most of these.",
            link="driver",
            evidence=(spec_line,),
        )
    if reason in ("mig_no_permission", "mig_strategy_mismatch"):
        return _Cause(
            "F7",
            cause=f"The device plugin {pod_ref} cannot read the MIG configuration ({failure.error}).",
            fix="Give it MIG monitoring: NVIDIA_MIG_MONITOR_DEVICES=all and capability SYS_ADMIN, and use "
            "MIG strategy mixed where MIG and non-MIG GPUs are mixed (`gpunode render --mig-strategy "
            "mixed`).",
            link="plugin",
            evidence=(spec_line,),
        )
    if reason == "no_devices":
        return _Cause(
            "F13",
            cause=f"NVML {where} starts but finds no GPU: the driver does not drive the node's GPUs "
            "(a branch too new for the GPU, nouveau, a GPU off the bus).",
            fix="Run `gpunode doctor HOST` on the node; `dmesg | grep -i nvrm` names the reason.",
            link="driver",
            evidence=(spec_line,),
        )
    return _Cause(
        "DP-NVML-ERROR",
        cause=f"NVML {where} fails: {failure.error}",
        fix="Run `gpunode doctor HOST` on the node and compare with the host's own NVML check.",
        link="plugin",
        evidence=(spec_line,),
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


def _image_pull_failure(image: str) -> tuple[str, str | None]:
    """(cause, fix) for a plugin image the node cannot pull. gpunode's own image exists in
    its registry only once a release has pushed it; until then (or on an air-gapped node)
    it has to be built and imported, or replaced."""
    if image.rpartition(":")[0] == BUNDLED_IMAGE_REPOSITORY:
        return (
            f"cannot pull gpunode's plugin image {image}: it is in no registry the node can reach "
            "(a gpunode version whose release has not pushed it, or a node without access to ghcr.io).",
            "Build it with `gpunode image build --archive plugin.tar` and import it on every GPU node "
            "(`ctr -n k8s.io images import plugin.tar`), or push it to your registry and re-run bootstrap "
            "with `--image REF`; for a single node, `--plugin-mode host` needs no image.",
        )
    return f"cannot pull its image {image}.", None  # the catalogue's fix
