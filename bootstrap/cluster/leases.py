"""The disruption budget on the API server: coordination.k8s.io/v1 Leases, written with the
resourceVersion that was read (`kubectl replace`), so the API server's optimistic
concurrency decides between agents: a stale write is 409 Conflict, a slot two agents create
at once is 409 AlreadyExists for the second. Either way the loser reads again.

`DisruptionBudget.hold()` takes a slot (or says who holds them all), and keeps it renewed
from a thread for as long as the disruptive work runs; `release()` empties the slot.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from gpunode.bootstrap.cluster.kubectl import Kubectl, KubectlResult
from gpunode.bootstrap.cluster.objects import FIELD_MANAGER
from gpunode.bootstrap.core.kube.lease_budget import (
    LEASE_SELECTOR,
    LeaseAction,
    plan_acquire,
    release_body,
)
from gpunode.bootstrap.log import log_event

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _lost_race(result: KubectlResult) -> bool:
    """The API server's answer to a write from a stale read (409: Conflict, AlreadyExists)."""
    return not result.ok and ("(Conflict)" in result.stderr or "(AlreadyExists)" in result.stderr)


@dataclass
class Holding:
    """The outcome of one attempt: a slot held, or the holders that fill the budget."""

    slot: str | None
    holders: tuple[str, ...] = ()
    conflicts: int = 0  # 409s met on the way (the race was real and was lost)


@dataclass
class DisruptionBudget:
    kubectl: Kubectl
    namespace: str
    me: str
    max_unavailable: int
    duration_seconds: int = 60
    clock: Clock = utc_now
    attempts: int = 5
    _slot: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _renewer: threading.Thread | None = None

    def _list(self) -> list[dict[str, Any]]:
        return self.kubectl.list("leases.coordination.k8s.io", namespace=self.namespace, selector=LEASE_SELECTOR)

    def _write(self, action: LeaseAction) -> KubectlResult:
        verb = "create" if action.kind == "create" else "replace"
        return self.kubectl.run(
            verb,
            "-f",
            "-",
            f"--field-manager={FIELD_MANAGER}",
            "-o",
            "name",
            stdin=json.dumps(action.body),
            check=False,
        )

    def try_hold(self) -> Holding:
        """One decision at a time, re-read after every lost race, at most `attempts` times."""
        conflicts = 0
        for _ in range(self.attempts):
            action = plan_acquire(
                self._list(),
                self.me,
                self.clock(),
                max_unavailable=self.max_unavailable,
                namespace=self.namespace,
                duration_seconds=self.duration_seconds,
            )
            if action.kind == "wait":
                return Holding(None, action.holders, conflicts)
            result = self._write(action)
            if _lost_race(result):
                conflicts += 1
                log_event("lease_conflict", node=self.me, lease=action.name, verb=action.kind)
                continue
            if not result.ok:
                raise self.kubectl.error(result)
            if action.kind != "renew":
                log_event("lease_taken", node=self.me, lease=action.name)
            self._slot = action.name
            return Holding(action.name, (), conflicts)
        return Holding(None, (), conflicts)

    def hold(self) -> Holding:
        """try_hold, and on success keep renewing in the background until release()."""
        holding = self.try_hold()
        if holding.slot is not None and self._renewer is None:
            self._stop.clear()
            self._renewer = threading.Thread(target=self._renew_loop, name="lease-renewer", daemon=True)
            self._renewer.start()
        return holding

    def _renew_loop(self) -> None:
        while not self._stop.wait(max(1.0, self.duration_seconds / 3)):
            try:
                self.try_hold()
            except Exception as exc:  # a missed renewal is retried; expiry is the safety net
                log_event("lease_renew_failed", node=self.me, error=str(exc))

    @property
    def slot(self) -> str | None:
        return self._slot

    def release(self) -> None:
        """Stop renewing and empty my slot (with its resourceVersion: a slot that expired and
        was taken by another node meanwhile is left to that node)."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=30)
            self._renewer = None
        if self._slot is None:
            return
        name, self._slot = self._slot, None
        for _ in range(self.attempts):
            lease = self.kubectl.get("lease.coordination.k8s.io", name, namespace=self.namespace)
            if lease is None:
                return
            body = release_body(lease, self.me, self.clock())
            if body is None:
                return
            result = self.kubectl.run("replace", "-f", "-", "-o", "name", stdin=json.dumps(body), check=False)
            if result.ok:
                log_event("lease_released", node=self.me, lease=name)
                return
            if not _lost_race(result):
                raise self.kubectl.error(result)
