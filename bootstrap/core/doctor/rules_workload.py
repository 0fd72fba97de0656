"""Doctor rules over the pod that asks for a GPU (--pod), and over pods on the node that
saw NVML fail without GPU devices (`kubectl debug node`, F10). Pure."""

from __future__ import annotations

import re

from gpunode.bootstrap.core.doctor.engine import Findings
from gpunode.bootstrap.core.doctor.evidence import JSON, ClusterView, DoctorCase, PodEvidence
from gpunode.bootstrap.core.doctor.rules_plugin import add_runtime_findings
from gpunode.bootstrap.core.doctor.rules_plugin_nvml import default_runtime
from gpunode.bootstrap.core.doctor.rules_runtime import runtime_name_for
from gpunode.bootstrap.core.kube.view import (
    GPU_RESOURCE,
    container_env,
    container_states,
    containers_of,
    dig,
    event_text,
    host_path_mounts,
    is_privileged,
    name_of,
    pod_gpu_limit,
    pod_spec_of,
    pod_summary,
    ref,
    toleration_text,
)

_NOT_FOUND_IN_POD = re.compile(
    r"nvidia-smi: not found|nvidia-smi: command not found|"
    r'exec: "nvidia-smi": executable file not found|'
    r"/dev/nvidia\d*: No such file|Failed to initialize NVML: .*not found",
    re.IGNORECASE,
)
_NVML_UNKNOWN = re.compile(r"Failed to initialize NVML: Unknown Error|NVML: Unknown Error", re.IGNORECASE)
_MIG_ADMISSION = re.compile(r"Insufficient Permissions|GetPreferredAllocation|MIG", re.IGNORECASE)
_CDI_STRATEGIES = ("cdi", "cdi-annotations", "cdi-cri")


def _uses_cdi(view: ClusterView | None) -> bool:
    for daemonset in view.daemonsets if view else ():
        for container in containers_of(pod_spec_of(daemonset)):
            env = container_env(container)
            strategy = env.get("DEVICE_LIST_STRATEGY") or env.get("GPUNODE_DEVICE_LIST_STRATEGY") or ""
            if any(s in strategy for s in _CDI_STRATEGIES):
                return True
    return False


def workload_rules(case: DoctorCase, view: ClusterView | None, node: JSON | None, findings: Findings) -> None:
    evidence = case.target_pod
    if evidence is None:
        return
    pod = evidence.pod
    spec = pod_spec_of(pod)
    pod_ref = ref(pod)
    summary = f"pod {pod_ref}: {pod_summary(pod)}" + (f" on {spec.get('nodeName')}" if spec.get("nodeName") else "")
    events = list(evidence.events)
    texts = [event_text(e) for e in events]
    status_reason = str(dig(pod, "status", "reason") or "")
    status_message = str(dig(pod, "status", "message") or "")
    limit = pod_gpu_limit(spec)
    logs = evidence.all_logs
    state_messages = [f"{s.reason}: {s.message}" for s in container_states(pod) if s.message]
    state_messages += [s.last_message for s in container_states(pod) if s.last_message]
    everything = "\n".join([*texts, status_message, *state_messages, logs])

    if limit == 0:
        runtime_class = spec.get("runtimeClassName")
        extra = (
            " With runtimeClassName nvidia and no limit it may see every GPU or none, outside the scheduler's count."
            if runtime_class
            else ""
        )
        findings.add(
            "F16",
            cause=f"Pod {pod_ref} asks for no nvidia.com/gpu limit: the scheduler places it anywhere and "
            f"it gets no GPU.{extra}",
            evidence=[
                summary,
                "containers: "
                + ", ".join(
                    f"{c.get('name')} limits {dig(c, 'resources', 'limits') or {}}" for c in containers_of(spec)
                ),
            ],
        )

    for event in events:
        message = str(event.get("message", ""))
        if event.get("reason") == "FailedScheduling" and "untolerated taint" in message:
            tolerations = spec.get("tolerations") or []
            findings.add(
                "F15",
                cause=f"Pod {pod_ref} does not tolerate the GPU nodes' taint, so it is not scheduled.",
                evidence=[
                    summary,
                    event_text(event),
                    "pod tolerations: " + (", ".join(toleration_text(t) for t in tolerations) or "none"),
                ],
                fix="Add `tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]` to the "
                "pod (the taint's key, if another).",
                link="workload",
            )
        elif event.get("reason") == "FailedScheduling" and f"Insufficient {GPU_RESOURCE}" in message:
            explained = bool(findings.below("workload"))
            findings.add(
                "POD-UNSCHEDULABLE",
                cause=f"Pod {pod_ref} is Pending: no node has a free nvidia.com/gpu"
                + (
                    " (the node problems above are why)."
                    if explained
                    else "; every GPU node's GPUs are in use or none advertises any."
                ),
                evidence=[summary, event_text(event)],
            )

    add_runtime_findings(
        findings,
        everything,
        texts,
        summary,
        node=spec.get("nodeName") or "the node",
        pod=f"pod {pod_ref}",
        runtime_class=spec.get("runtimeClassName"),
    )

    if status_reason == "UnexpectedAdmissionError":
        if _MIG_ADMISSION.search(status_message):
            findings.add(
                "F7",
                cause=f"Pod {pod_ref} was refused at admission: the device plugin could not answer for "
                "its GPUs (MIG capabilities unreadable).",
                evidence=[summary, f"status: {status_reason}: {status_message}"],
                link="workload",
            )
        else:
            findings.add(
                "POD-ADMISSION",
                cause=f"Pod {pod_ref} was refused at admission on its node.",
                evidence=[summary, f"status: {status_reason}: {status_message}"],
            )

    if limit > 0 and not spec.get("runtimeClassName") and not _uses_cdi(view):
        symptom = [line for line in everything.splitlines() if _NOT_FOUND_IN_POD.search(line)]
        exited_127 = any(s.last_exit_code == 127 for s in container_states(pod)) or any(
            dig(cs, "state", "terminated", "exitCode") == 127 for cs in dig(pod, "status", "containerStatuses") or []
        )
        default = default_runtime(case)
        if default is not None and default == runtime_name_for(case) and (symptom or exited_127):
            findings.add(
                "F4",
                cause=f"Pod {pod_ref} relies on containerd's default runtime '{default}' for its GPU, and "
                "got no NVIDIA libraries or devices.",
                evidence=[summary, *symptom[:3], f"host: default_runtime_name = {default!r}"],
                fix="Set runtimeClassName: nvidia on GPU pods; do not trust the default runtime.",
                link="workload",
            )
        elif symptom or exited_127:
            findings.add(
                "F6",
                cause=f"Pod {pod_ref} got a GPU from the device plugin but runs under plain runc: no "
                "NVIDIA libraries or /dev/nvidia* in it.",
                evidence=[summary, "pod spec: no runtimeClassName", *symptom[:3]]
                + (["a container exited 127 (command not found)"] if exited_127 else []),
                fix="Add `runtimeClassName: nvidia` to the pod (or use the plugin's CDI device list strategy).",
            )
        elif default is not None and default != runtime_name_for(case):
            findings.add(
                "F6",
                cause=f"Pod {pod_ref} asks for a GPU but names no RuntimeClass: under the default runtime "
                f"'{default}' it gets no NVIDIA libraries or devices.",
                evidence=[summary, "pod spec: no runtimeClassName", f"host: default_runtime_name = {default!r}"],
                fix="Add `runtimeClassName: nvidia` to the pod.",
                severity="warning",
            )
    _debug_pod_rule(case, evidence, findings)


def debug_pod_rules(case: DoctorCase, view: ClusterView, findings: Findings) -> None:
    for evidence in view.other_pods:
        if case.target_pod is not None and ref(evidence.pod) == ref(case.target_pod.pod):
            continue
        _debug_pod_rule(case, evidence, findings)


def _debug_pod_rule(case: DoctorCase, evidence: PodEvidence, findings: Findings) -> None:
    """F10: NVML's Unknown Error seen from a pod that has no GPU device nodes."""
    pod = evidence.pod
    spec = pod_spec_of(pod)
    texts = [
        evidence.all_logs,
        *(s.message for s in container_states(pod)),
        *(s.last_message for s in container_states(pod)),
    ]
    lines = [line for text in texts for line in text.splitlines() if _NVML_UNKNOWN.search(line)]
    if not lines:
        return
    has_devices = (
        pod_gpu_limit(spec) > 0
        or spec.get("runtimeClassName")
        or any(
            is_privileged(c) and any(m.host_path.rstrip("/") == "/dev" for m in host_path_mounts(spec, c))
            for c in containers_of(spec)
        )
    )
    if has_devices:
        return
    debugger = name_of(pod).startswith("node-debugger-")
    what = "a `kubectl debug node` pod" if debugger else "a pod without a GPU"
    evidence_lines = [
        f"pod {ref(pod)} ({what}): no nvidia.com/gpu limit, no runtimeClassName, no /dev/nvidia*",
        *(f"its output: {line.strip()}" for line in lines[:2]),
    ]
    if case.host is not None and case.host.diagnostics is not None and case.host.diagnostics.nvml is not None:
        check = case.host.diagnostics.nvml
        evidence_lines.append(
            "the host's own NVML check: "
            + (
                f"ok, driver {check.driver}, {check.count} GPU(s)"
                if check.ok
                else f"failed: {check.init_error or check.load_error}"
            )
        )
        judged = "the host's own check is above" if check.ok else "the host's own check failed: see the driver verdicts"
    else:
        evidence_lines.append("the driver was not judged from the host (no HOST given)")
        judged = "run `gpunode doctor HOST` to judge it"
    findings.add(
        "F10",
        cause=f"Pod {ref(pod)} ran nvidia-smi without GPU device nodes: its 'Failed to initialize NVML: "
        f"Unknown Error' says nothing about the driver ({judged}).",
        evidence=evidence_lines,
    )
