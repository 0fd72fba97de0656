"""Doctor rules over the device plugin pod on a node: what keeps it from running (mounts,
image, runtime, RuntimeClass), what its spec gets wrong (a system library directory over
the image's, F3), and why NVML failed in it, read from its log (gpunode's bundled plugin
or NVIDIA's) against its spec and, when known, the host. Pure."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from gpunode.bootstrap.core.doctor.engine import Findings
from gpunode.bootstrap.core.doctor.evidence import JSON, ClusterView, DoctorCase, PodEvidence
from gpunode.bootstrap.core.doctor.rules_plugin_nvml import init_failure_cause, library_mount_failed
from gpunode.bootstrap.core.kube.plugin_deployment import BUNDLED_IMAGE_REPOSITORY
from gpunode.bootstrap.core.kube.view import (
    container_env,
    container_states,
    containers_of,
    dig,
    event_text,
    host_path_mounts,
    is_up,
    name_of,
    owner_of,
    pod_spec_of,
    pod_summary,
    ref,
)
from gpunode.bootstrap.core.plugin_log import PluginLog, read_plugin_log

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
                failed = library_mount_failed(case, pod_ref, mount.host_path, text, summary)
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
        cause = init_failure_cause(case, pod_ref, spec, container, failure)
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
