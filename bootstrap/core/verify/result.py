"""Is a node advertising its GPUs? The verdict rules of `gpunode verify` (pure; no kubectl).

The kubelet publishes `status.allocatable["nvidia.com/gpu"]` from what device plugins
report: the count of Healthy devices. What that value means (F8, F9 in docs/failure-modes.md):

- key absent: no device plugin has ever registered the resource since the kubelet started;
- `0`: a plugin registered once and is gone (the kubelet keeps the key), or every device it
  reports is Unhealthy; alerts written as `absent(...)` never fire on this one;
- fewer than expected: GPUs the plugin does not see (capacity short too) or sees Unhealthy
  (capacity full, allocatable short);
- equal: OK.

The evidence about the plugin (its DaemonSet, its pod, the pod's events and log) only
explains a verdict; it never makes a node OK.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from gpunode.bootstrap.core.kube.cluster_plan import (
    GPU_COUNT_ANNOTATION,
    GPUS_ANNOTATION,
    HOST_PLUGIN,
    PLUGIN_DAEMONSET_ANNOTATION,
    RESOURCE,
    normalize_bus_id,
)
from gpunode.bootstrap.core.kube.node_condition import current_condition
from gpunode.bootstrap.core.kube.plugin_deployment import DEVICE_PLUGIN_LABEL
from gpunode.bootstrap.core.kube.view import quantity
from gpunode.bootstrap.core.plugin_log import read_plugin_log

ResultKind = Literal["ok", "absent", "zero", "fewer", "more", "no-node"]
RESULT_KINDS: tuple[ResultKind, ...] = ("ok", "absent", "zero", "fewer", "more", "no-node")

HOST_UNIT = "gpunode-device-plugin.service"


# --------------------------------------------------------------------------------------
# Evidence about the plugin that should serve a node


@dataclass(frozen=True)
class PodState:
    namespace: str
    name: str
    phase: str
    ready: bool
    waiting_reason: str | None = None
    waiting_message: str | None = None
    restarts: int = 0
    last_exit_code: int | None = None
    termination_message: str | None = None
    events: tuple[str, ...] = ()  # "Reason: message", newest last
    log: str = ""

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def describe(self) -> str:
        """`pod kube-system/x is Pending (ContainerCreating): FailedMount: ...`"""
        state = self.phase + (f" ({self.waiting_reason})" if self.waiting_reason else "")
        if self.ready:
            state += ", Ready"
        if self.restarts:
            state += f", restarted {self.restarts} time{'s' if self.restarts != 1 else ''}"
        parts = [f"pod {self.ref} is {state}"]
        if self.waiting_message:
            parts.append(self.waiting_message)
        if self.last_exit_code is not None:
            parts.append(f"last exit code {self.last_exit_code}")
        init = read_plugin_log(self.log).init_failure if self.log else None
        if init is not None:
            parts.append(f"nvml_init_failed reason={init.reason}" + (f" error={init.error!r}" if init.error else ""))
        elif self.termination_message:
            parts.append(self.termination_message.strip().splitlines()[-1])
        if self.events:
            parts.append("event " + self.events[-1])
        return "; ".join(parts)


@dataclass(frozen=True)
class PluginEvidence:
    """How the node's GPUs are meant to be served, and what is there."""

    kind: Literal["daemonset", "host", "unknown"]
    daemonset: str | None = None  # namespace/name gpunode recorded for the node
    daemonset_found: bool = False
    untolerated: tuple[str, ...] = ()  # taints of the node the DaemonSet does not tolerate
    selector_mismatch: tuple[str, ...] = ()  # node labels the DaemonSet wants and the node lacks
    pod: PodState | None = None


# --------------------------------------------------------------------------------------
# The node and the verdict


@dataclass(frozen=True)
class NodeObservation:
    node: str
    found: bool
    allocatable: str | None = None  # the raw value of nvidia.com/gpu, None when absent
    capacity: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    resource: str = RESOURCE  # the one judged (a shared config may rename nvidia.com/gpu)
    # gpunode agent's GPUNodeReady condition on the node, when an agent runs there.
    agent: Mapping[str, Any] | None = None

    @classmethod
    def from_node(cls, name: str, node: Mapping[str, Any] | None, resource: str = RESOURCE) -> NodeObservation:
        """`resource`: the one to judge (a shared config may rename nvidia.com/gpu)."""
        if node is None:
            return cls(name, False)
        meta = node.get("metadata") or {}
        status = node.get("status") or {}
        return cls(
            name,
            True,
            (status.get("allocatable") or {}).get(resource),
            (status.get("capacity") or {}).get(resource),
            dict(meta.get("labels") or {}),
            dict(meta.get("annotations") or {}),
            resource,
            current_condition(node),
        )

    @property
    def recorded_gpus(self) -> tuple[str, ...]:
        text = self.annotations.get(GPUS_ANNOTATION, "")
        return tuple(normalize_bus_id(b) for b in text.split(",") if b.strip())

    @property
    def plugin_daemonset(self) -> str | None:
        return self.annotations.get(PLUGIN_DAEMONSET_ANNOTATION) or None

    @property
    def host_plugin(self) -> bool:
        return self.labels.get(DEVICE_PLUGIN_LABEL) == HOST_PLUGIN


def expectation(node: NodeObservation, expect: int | None) -> tuple[int | None, str | None]:
    """How many GPUs the node should advertise, and where that number came from."""
    if expect is not None:
        return expect, "--expect"
    recorded = quantity(node.annotations.get(GPU_COUNT_ANNOTATION))
    if recorded is not None:
        return recorded, "recorded by gpunode bootstrap"
    capacity = quantity(node.capacity)
    if capacity is not None and capacity > 0:
        return capacity, "the node's capacity"
    return None, None


@dataclass(frozen=True)
class NodeResult:
    """What `gpunode verify` found for one node (doctor's judgement is core.doctor's Finding)."""

    node: str
    kind: ResultKind
    allocatable: int | None = None
    capacity: int | None = None
    expected: int | None = None
    expected_from: str | None = None
    missing: tuple[str, ...] = ()
    unhealthy: tuple[str, ...] = ()
    cause: str | None = None
    fix: str | None = None
    resource: str = RESOURCE
    agent: Mapping[str, Any] | None = None  # the agent's GPUNodeReady condition, as read

    @property
    def ok(self) -> bool:
        return self.kind == "ok"

    @property
    def checked(self) -> bool:
        return self.kind != "no-node"

    @property
    def headline(self) -> str:
        value = f"Allocatable {self.resource} = {self.allocatable}"
        expected = f" (expected {self.expected})" if self.expected is not None else ""
        if self.kind == "ok":
            return f"{value}: OK"
        if self.kind == "no-node":
            return f"node {self.node} is not in the cluster: could not check"
        if self.kind == "absent":
            return (
                f"Allocatable {self.resource} absent{expected}: no device plugin has registered "
                f"{self.resource} on this node since its kubelet started"
            )
        if self.kind == "zero":
            return f"{value}{expected}: the device plugin is gone or every GPU is unhealthy (F9)"
        if self.kind == "fewer":
            return f"{value}{expected}: fewer GPUs than the node has"
        return f"{value}{expected}: more GPUs than expected"

    def lines(self) -> list[str]:
        out = [self.headline]
        if self.missing:
            out.append("missing (the plugin does not see them): " + ", ".join(self.missing))
        if self.unhealthy:
            out.append("unhealthy: " + ", ".join(self.unhealthy))
        if self.cause:
            out.append(f"cause: {self.cause}")
        if self.fix:
            out.append(f"fix: {self.fix}")
        if self.agent:
            a = self.agent
            out.append(
                f"gpunode agent: GPUNodeReady={a.get('status')} ({a.get('reason')}), "
                f"heartbeat {a.get('lastHeartbeatTime', 'never')}: {a.get('message', '')}"
            )
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "verdict": self.kind,
            "ok": self.ok,
            "checked": self.checked,
            "allocatable": self.allocatable,
            "capacity": self.capacity,
            "expected": self.expected,
            "expected_from": self.expected_from,
            "missing": list(self.missing),
            "unhealthy": list(self.unhealthy),
            "headline": self.headline,
            "cause": self.cause,
            "fix": self.fix,
            "agent": None
            if self.agent is None
            else {k: self.agent.get(k) for k in ("status", "reason", "message", "lastHeartbeatTime")},
        }


def quick_result(node: NodeObservation, expect: int | None) -> NodeResult:
    """The verdict from the node alone (what is polled while waiting)."""
    if not node.found:
        return NodeResult(
            node.node,
            "no-node",
            fix="check the node name (kubectl get nodes): it is the name the kubelet registered, e.g. the host name",
        )
    expected, source = expectation(node, expect)
    allocatable, capacity = quantity(node.allocatable), quantity(node.capacity)
    common = {
        "allocatable": allocatable,
        "capacity": capacity,
        "expected": expected,
        "expected_from": source,
        "resource": node.resource,
        "agent": node.agent,
    }
    if node.allocatable is None:
        kind: ResultKind = "ok" if expected == 0 else "absent"
        if kind == "ok":
            common["allocatable"] = 0
    elif allocatable is None:
        kind = "fewer"  # an unreadable quantity is never OK
    elif expected is None:
        kind = "ok" if allocatable > 0 else "zero"
    elif allocatable == expected:
        kind = "ok"
    elif allocatable == 0:
        kind = "zero"
    elif allocatable < expected:
        kind = "fewer"
    else:
        kind = "more"
    return NodeResult(node.node, kind, **common)  # type: ignore[arg-type]


def _rerun_fix(node: str) -> str:
    return f"run `gpunode bootstrap` for {node} again (it re-creates and rolls out its plugin)"


def _pod_cause(pod: PodState) -> tuple[str, str]:
    """Why the plugin pod does not serve the node, and what to do."""
    text = pod.describe()
    log = read_plugin_log(pod.log)
    init = log.init_failure
    event_text = " ".join(pod.events)
    if init is not None:
        reason = init.reason
        fix = init.fix or "see the plugin's log"
        if reason == "driver_library_mismatch":
            return text + " (F14)", "reboot the node onto the new driver, then run gpunode bootstrap again"
        if reason == "library_not_found":
            return text + " (F1)", fix
        return text, fix
    if "FailedMount" in event_text:
        return (
            text + " (F2)",
            "run `gpunode bootstrap` for the node again: it mounts the library file the "
            "node really has; do not mount the libnvidia-ml.so.1 symlink",
        )
    if pod.waiting_reason in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName"):
        return text, "check the plugin image (--image) and that the node can pull it"
    if "FailedScheduling" in event_text or "untolerated taint" in event_text:
        return text + " (F15)", "tolerate the node's taints (gpunode bootstrap --toleration KEY[=VALUE][:EFFECT])"
    if pod.phase == "Running" and pod.ready and not log.registered and pod.log:
        return (
            text + "; it has not registered with the kubelet",
            "check the kubelet's device-plugins directory on the node (--kubelet-root)",
        )
    return (
        text,
        f"kubectl -n {shlex.quote(pod.namespace)} describe pod {shlex.quote(pod.name)}; "
        f"kubectl -n {shlex.quote(pod.namespace)} logs {shlex.quote(pod.name)}",
    )


def explain(verdict: NodeResult, node: NodeObservation, plugin: PluginEvidence | None) -> NodeResult:
    """The verdict with its likely cause and fix, from the evidence about the plugin."""
    if verdict.kind in ("ok", "no-node"):
        return verdict
    cause: str | None = None
    fix: str | None = None
    missing: tuple[str, ...] = ()
    unhealthy: tuple[str, ...] = ()
    pod = plugin.pod if plugin is not None else None
    log = read_plugin_log(pod.log) if pod is not None and pod.log else None

    if log is not None and log.devices and verdict.kind in ("fewer", "zero"):
        seen = {d.pci for d in log.devices if d.pci}
        missing = tuple(b for b in node.recorded_gpus if seen and b not in seen)
        unhealthy = tuple(
            f"{device_id}" + (f" ({d.pci})" if (d := log.device(device_id)) and d.pci else "") + f": {why}"
            for device_id, why in log.unhealthy_devices.items()
        )

    if plugin is None or plugin.kind == "unknown":
        cause = (
            "gpunode did not bootstrap this node (no gpunode annotations), so which plugin should serve it is unknown"
        )
        fix = (
            "check the node's device plugin pod (kubectl get pods -A -o wide --field-selector "
            f"spec.nodeName={shlex.quote(node.node)}), or run gpunode bootstrap for it"
        )
    elif plugin.kind == "host":
        cause = f"the plugin runs as a service on the node (plugin mode host) and is not serving {RESOURCE}"
        fix = (
            f"on the node: systemctl status {HOST_UNIT}; journalctl -u {HOST_UNIT}; "
            "or run gpunode bootstrap for it again"
        )
    elif not plugin.daemonset_found:
        cause = (
            f"its device plugin DaemonSet {plugin.daemonset} does not exist any more (F8): "
            "removed by someone or something else"
        )
        fix = _rerun_fix(node.node)
    elif plugin.untolerated:
        cause = (
            f"DaemonSet {plugin.daemonset} does not run on this node: the node has taint "
            f"{', '.join(plugin.untolerated)}, which it does not tolerate (F15)"
        )
        fix = (
            "run gpunode bootstrap with --toleration "
            + " --toleration ".join(plugin.untolerated)
            + ", or remove the taint"
        )
    elif plugin.selector_mismatch:
        cause = (
            f"DaemonSet {plugin.daemonset} does not select this node: the node lacks "
            f"{', '.join(plugin.selector_mismatch)}"
        )
        fix = _rerun_fix(node.node)
    elif pod is None:
        cause = f"DaemonSet {plugin.daemonset} has no pod on this node"
        fix = (
            f"kubectl -n {shlex.quote((plugin.daemonset or '/').split('/')[0])} describe daemonset "
            f"{shlex.quote((plugin.daemonset or '/').split('/')[-1])}"
        )
    elif not (pod.phase == "Running" and pod.ready) or (log is not None and log.init_failure):
        cause, fix = _pod_cause(pod)
    elif verdict.kind in ("fewer", "zero") and (missing or unhealthy):
        parts = []
        if missing:
            parts.append(
                f"the plugin ({pod.ref}) sees {len(log.devices) if log else '?'} GPU(s); not {', '.join(missing)}"
            )
        if unhealthy:
            parts.append(f"{len(unhealthy)} GPU(s) reported Unhealthy")
        cause = "; ".join(parts)
        fix = (
            "check the GPUs on the node (nvidia-smi -q, dmesg for XID errors); a GPU lost or "
            "with a fatal XID needs a node reset, then the plugin pod restarted"
        )
    elif verdict.kind == "absent" and log is not None and not log.registered:
        cause = f"the plugin pod {pod.ref} is running but has not registered with the kubelet"
        fix = "check the kubelet's device-plugins directory on the node (--kubelet-root)"
    elif verdict.kind == "zero":
        cause = f"the plugin pod {pod.ref} is running; the kubelet reports none of its GPUs healthy"
        fix = f"kubectl -n {shlex.quote(pod.namespace)} logs {shlex.quote(pod.name)}"
    else:
        cause = f"the plugin pod {pod.ref} is running"
        fix = f"kubectl -n {shlex.quote(pod.namespace)} logs {shlex.quote(pod.name)}"

    if (
        not missing
        and not unhealthy
        and verdict.kind == "fewer"
        and verdict.capacity is not None
        and verdict.expected is not None
        and verdict.allocatable is not None
    ):
        if verdict.capacity < verdict.expected:
            cause = f"the plugin sees {verdict.capacity} of {verdict.expected} GPUs" + (f"; {cause}" if cause else "")
        elif verdict.allocatable < verdict.capacity:
            cause = f"{verdict.capacity - verdict.allocatable} of {verdict.capacity} GPUs are reported Unhealthy" + (
                f"; {cause}" if cause else ""
            )
    if verdict.kind == "more":
        cause = (
            "the node advertises more GPUs than "
            + (verdict.expected_from or "expected")
            + " says"
            + (f"; {cause}" if cause else "")
        )
        fix = "run gpunode bootstrap for the node again to record its GPUs, or give --expect"
    return NodeResult(
        verdict.node,
        verdict.kind,
        verdict.allocatable,
        verdict.capacity,
        verdict.expected,
        verdict.expected_from,
        missing,
        unhealthy,
        cause,
        fix,
        verdict.resource,
        verdict.agent,
    )


# --------------------------------------------------------------------------------------
# The workload check (--workload)

_SMI_LINE = re.compile(r"^GPU (?P<index>\d+): (?P<name>.+?) \(UUID: (?P<uuid>(?:GPU|MIG)-[0-9A-Za-z-]+)\)\s*$")


@dataclass(frozen=True)
class WorkloadResult:
    ok: bool
    pod: str
    detail: str
    output: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "pod": self.pod, "detail": self.detail, "output": self.output}


def judge_workload(pod: str, output: str, advertised: tuple[str, ...] = ()) -> WorkloadResult:
    """`nvidia-smi -L` in the test pod must name a GPU, one the node's plugin advertises."""
    found = [m for m in (_SMI_LINE.match(line) for line in output.splitlines()) if m]
    if not found:
        last = output.strip().splitlines()[-1] if output.strip() else "no output"
        return WorkloadResult(False, pod, f"nvidia-smi -L named no GPU: {last}", output)
    uuids = [m.group("uuid") for m in found]
    if advertised and not any(u in advertised for u in uuids):
        return WorkloadResult(
            False, pod, f"nvidia-smi -L named {', '.join(uuids)}, which the node's plugin does not advertise", output
        )
    names = "; ".join(f"GPU {m.group('index')}: {m.group('name')} ({m.group('uuid')})" for m in found)
    return WorkloadResult(True, pod, f"nvidia-smi -L in pod {pod}: {names}", output)
