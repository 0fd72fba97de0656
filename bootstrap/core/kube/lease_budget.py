"""The disruption budget of the agents: at most N nodes in a disruptive step at once. Pure.

The budget is N `coordination.k8s.io/v1` Leases, `gpunode-disruption-0` ... `-<N-1>`, in the
agent's namespace: a node may disrupt itself (driver packages, containerd restart, reboot)
only while it holds one. No controller decides anything: each agent reads the slots, picks
one and writes it with the resourceVersion it read. The API server's optimistic concurrency
does the rest: of two agents that write the same slot from the same read, one gets 409
Conflict (or AlreadyExists for a slot both create) and reads again. A holder that dies stops
renewing; its slot is free once `renewTime + leaseDurationSeconds` has passed.

This module decides (leases and the clock in, one action out); the cluster layer does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from gpunode.bootstrap.core.kube.node_condition import parse_rfc3339
from gpunode.bootstrap.core.kube.plugin_deployment import MANAGED_BY_LABELS

LEASE_PREFIX = "gpunode-disruption-"
LEASE_LABEL = ("gpunode.io/lease", "disruption")
LEASE_SELECTOR = f"{LEASE_LABEL[0]}={LEASE_LABEL[1]}"


def _micro(moment: datetime) -> str:
    """Leases carry MicroTime: RFC 3339 with microseconds."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_micro(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    base = text.split(".")[0].rstrip("Z") + "Z"
    return parse_rfc3339(base)


@dataclass(frozen=True)
class Slot:
    name: str
    holder: str | None
    expires: datetime | None
    resource_version: str | None
    transitions: int

    def live(self, now: datetime) -> bool:
        return bool(self.holder) and self.expires is not None and self.expires > now


def read_slot(lease: Mapping[str, Any]) -> Slot:
    meta = lease.get("metadata") or {}
    spec = lease.get("spec") or {}
    holder = spec.get("holderIdentity") or None
    renewed = _parse_micro(spec.get("renewTime")) or _parse_micro(spec.get("acquireTime"))
    duration = spec.get("leaseDurationSeconds")
    expires = renewed + timedelta(seconds=int(duration)) if renewed and isinstance(duration, int) else None
    return Slot(
        name=str(meta.get("name", "")),
        holder=str(holder) if holder else None,
        expires=expires,
        resource_version=str(meta["resourceVersion"]) if meta.get("resourceVersion") else None,
        transitions=int(spec.get("leaseTransitions") or 0),
    )


def slot_name(index: int) -> str:
    return f"{LEASE_PREFIX}{index}"


@dataclass(frozen=True)
class LeaseAction:
    """What to do: `renew` or `take` (update `name` at `resource_version`), `create` it, or
    `wait` (the budget is used up by `holders`)."""

    kind: Literal["renew", "take", "create", "wait"]
    name: str = ""
    resource_version: str | None = None
    body: Mapping[str, Any] | None = None
    holders: tuple[str, ...] = ()


def lease_body(
    name: str,
    namespace: str,
    holder: str | None,
    now: datetime,
    duration_seconds: int,
    *,
    resource_version: str | None = None,
    transitions: int = 0,
    acquired: datetime | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"leaseDurationSeconds": duration_seconds, "leaseTransitions": transitions}
    if holder:
        spec["holderIdentity"] = holder
        spec["acquireTime"] = _micro(acquired or now)
        spec["renewTime"] = _micro(now)
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": {**MANAGED_BY_LABELS, LEASE_LABEL[0]: LEASE_LABEL[1]},
    }
    if resource_version:
        metadata["resourceVersion"] = resource_version
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}


def plan_acquire(
    leases: Sequence[Mapping[str, Any]],
    me: str,
    now: datetime,
    *,
    max_unavailable: int,
    namespace: str,
    duration_seconds: int,
) -> LeaseAction:
    """Renew my slot, else take a free one among the first `max_unavailable`, else wait.

    Slots past `max_unavailable` (left from a larger budget) still count while held: a
    budget lowered from 3 to 1 lets nobody new in until two of the three have finished."""
    slots = {s.name: s for s in (read_slot(lease) for lease in leases) if s.name.startswith(LEASE_PREFIX)}
    mine = next((s for s in slots.values() if s.holder == me), None)
    if mine is not None:
        acquired = None
        for lease in leases:
            if (lease.get("metadata") or {}).get("name") == mine.name:
                acquired = _parse_micro((lease.get("spec") or {}).get("acquireTime"))
        body = lease_body(
            mine.name,
            namespace,
            me,
            now,
            duration_seconds,
            resource_version=mine.resource_version,
            transitions=mine.transitions,
            acquired=acquired,
        )
        return LeaseAction("renew", mine.name, mine.resource_version, body)
    others = tuple(sorted(s.holder for s in slots.values() if s.holder and s.live(now)))
    if len(others) >= max_unavailable:
        return LeaseAction("wait", holders=others)
    for index in range(max_unavailable):
        name = slot_name(index)
        slot = slots.get(name)
        if slot is None:
            return LeaseAction("create", name, None, lease_body(name, namespace, me, now, duration_seconds))
        if not slot.live(now):
            body = lease_body(
                name,
                namespace,
                me,
                now,
                duration_seconds,
                resource_version=slot.resource_version,
                transitions=slot.transitions + 1,
            )
            return LeaseAction("take", name, slot.resource_version, body)
    return LeaseAction("wait", holders=others)


def release_body(lease: Mapping[str, Any], me: str, now: datetime) -> dict[str, Any] | None:
    """The slot emptied, at the resourceVersion read; None when it is not mine (any more)."""
    slot = read_slot(lease)
    if slot.holder != me:
        return None
    namespace = str((lease.get("metadata") or {}).get("namespace", ""))
    duration = int((lease.get("spec") or {}).get("leaseDurationSeconds") or 1)
    return lease_body(
        slot.name, namespace, None, now, duration, resource_version=slot.resource_version, transitions=slot.transitions
    )
