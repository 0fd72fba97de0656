"""The node's truth as the cluster sees it: the `GPUNodeReady` condition and its Events. Pure.

The agent (`gpunode agent`) judges its node with doctor's chain and publishes the result
where Kubernetes tools look: a condition in the Node's `.status.conditions` (kubectl
describe node, kube-state-metrics' `kube_node_status_condition`), and an Event on the Node
when the verdict changes. The condition is evidence of this moment, never desired state:
the GPU Operator's ClusterPolicy said `ready` while the plugin DaemonSet was gone (F8).

- status True: no problem in doctor's chain (reason `GPUsAdvertised`).
- status False: reason = the id of the first (lowest) broken link's verdict, message = its
  cause and fix; or the agent's own reason when it is waiting for the disruption budget.
- status Unknown: the agent could not judge (the host could not be read).

A write happens only when something would change for a reader (status, reason, message), or
when the heartbeat is older than the heartbeat period: as the kubelet does for its own
conditions, so a stale `lastHeartbeatTime` tells that the agent stopped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

from gpunode.bootstrap.core.doctor.engine import Finding

CONDITION_TYPE = "GPUNodeReady"
REASON_READY = "GPUsAdvertised"
REASON_WAITING = "WaitingForDisruptionBudget"
REASON_UNKNOWN = "NotChecked"
REASON_DRAIN_BLOCKED = "DrainBlocked"
EVENT_SOURCE = "gpunode-agent"
# Kubernetes keeps condition messages short in practice; a whole doctor paragraph is not a
# condition message. The full text stays in the Event and in `gpunode doctor`.
MESSAGE_LIMIT = 1024

ConditionStatus = Literal["True", "False", "Unknown"]


@dataclass(frozen=True)
class NodeCondition:
    status: ConditionStatus
    reason: str
    message: str

    @property
    def healthy(self) -> bool:
        return self.status == "True"


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 3] + "..."


def condition_from_verdicts(problems: Sequence[Finding], gpu_count: int | None = None) -> NodeCondition:
    """`problems`: doctor's verdicts that are problems (critical or warning), chain order.

    The first is the lowest broken link: it explains the ones above it, so it is the
    reason. Warnings count: a node whose GPU is unhealthy or cordoned is not ready for GPU
    work, and saying True there would repeat F8's mistake."""
    if not problems:
        what = f"{gpu_count} GPU(s)" if gpu_count is not None else "its GPUs"
        return NodeCondition("True", REASON_READY, f"The node advertises {what}; every link of the chain holds.")
    first = problems[0]
    others = [v.id for v in problems[1:]]
    message = f"{first.cause} Fix: {first.fix}"
    if others:
        message += f" (also: {', '.join(dict.fromkeys(others))}; run gpunode doctor for all)"
    return NodeCondition("False", first.id, _shorten(message))


def waiting_condition(holders: Sequence[str], max_unavailable: int, wanted: str) -> NodeCondition:
    """The node needs a disruptive change and the budget is taken by other nodes."""
    return NodeCondition(
        "False",
        REASON_WAITING,
        _shorten(
            f"{wanted} needs a disruptive step; {len(holders)} of {max_unavailable} disruption slot(s) are held "
            f"by {', '.join(holders) or 'other nodes'}. Fix: nothing to do, the agent retries every interval; "
            "raise --max-unavailable to let more nodes change at once."
        ),
    )


def unknown_condition(why: str) -> NodeCondition:
    return NodeCondition("Unknown", REASON_UNKNOWN, _shorten(why))


def current_condition(node: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The node's GPUNodeReady condition as stored, or None."""
    for condition in ((node or {}).get("status") or {}).get("conditions") or []:
        if isinstance(condition, dict) and condition.get("type") == CONDITION_TYPE:
            return condition
    return None


def condition_patch(
    node: Mapping[str, Any] | None, wanted: NodeCondition, now: datetime, heartbeat_seconds: float
) -> dict[str, Any] | None:
    """A strategic merge patch for the node's status (conditions merge by `type`, so the
    kubelet's own conditions are left alone), or None when nothing needs writing."""
    stored = current_condition(node)
    same = stored is not None and (
        stored.get("status"),
        stored.get("reason"),
        stored.get("message"),
    ) == (wanted.status, wanted.reason, wanted.message)
    if same:
        beat = parse_rfc3339(stored.get("lastHeartbeatTime")) if stored else None
        if beat is not None and (now - beat).total_seconds() < heartbeat_seconds:
            return None
    transition = rfc3339(now)
    if stored is not None and stored.get("status") == wanted.status and stored.get("lastTransitionTime"):
        transition = str(stored["lastTransitionTime"])
    condition = {
        "type": CONDITION_TYPE,
        "status": wanted.status,
        "reason": wanted.reason,
        "message": wanted.message,
        "lastHeartbeatTime": rfc3339(now),
        "lastTransitionTime": transition,
    }
    return {"status": {"conditions": [condition]}}


@dataclass(frozen=True)
class NodeEventSpec:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


def change_event(node: Mapping[str, Any] | None, wanted: NodeCondition) -> NodeEventSpec | None:
    """An Event when the verdict changed (status or reason), None otherwise. The first
    condition an agent ever writes is an event too: it is news to whoever watches."""
    stored = current_condition(node)
    if stored is not None and (stored.get("status"), stored.get("reason")) == (wanted.status, wanted.reason):
        return None
    before = f"{stored.get('status')}/{stored.get('reason')}" if stored else "not set"
    kind: Literal["Normal", "Warning"] = "Normal" if wanted.healthy else "Warning"
    reason = CONDITION_TYPE if wanted.healthy else f"{CONDITION_TYPE}False"
    return NodeEventSpec(
        kind, reason, _shorten(f"{CONDITION_TYPE} {wanted.status} ({wanted.reason}), was {before}: {wanted.message}")
    )


def node_event(
    node: Mapping[str, Any],
    spec: NodeEventSpec,
    *,
    namespace: str,
    now: datetime,
    reporting_instance: str,
    suffix: str,
) -> dict[str, Any]:
    """A core/v1 Event about the Node, as the kubelet writes its node events (involvedObject
    kind Node, uid, namespace `default` unless told), with gpunode's source."""
    meta = node.get("metadata") or {}
    name = str(meta.get("name", ""))
    stamp = rfc3339(now)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{name}.{suffix}", "namespace": namespace},
        "involvedObject": {"apiVersion": "v1", "kind": "Node", "name": name, "uid": str(meta.get("uid", ""))},
        "reason": spec.reason,
        "message": spec.message,
        "type": spec.type,
        "source": {"component": EVENT_SOURCE, "host": name},
        "reportingComponent": EVENT_SOURCE,
        "reportingInstance": reporting_instance,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
