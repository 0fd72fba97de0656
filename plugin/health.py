"""Device health: XID events in, Healthy/Unhealthy out, with recovery.

The policy, per device:
- an XID in the ignore list (application faults, by default 13 31 43 45 68 109) is
  counted and logged, and changes nothing;
- a fatal XID (by default those NVIDIA's catalogue answers with a GPU reset or a reboot:
  46 48 61 62 63 64 74 79 95 119 120 140) or a GPU that NVML reports lost makes the
  device Unhealthy for the life of the process: a kubelet restart or a re-registration
  never forgets it;
- any other XID (94, a contained ECC error that only the application has to restart for,
  among them) makes the device Unhealthy until no further XID has hit it for the
  recovery period (`--health-recovery-seconds`; 0 disables recovery), then Healthy again.

The table behind the defaults, with NVIDIA's action for each XID: plugin/xids.py.

An XID on a whole GPU concerns every device on it (the GPU, or all its MIG devices, and
every replica of a shared GPU); an XID that names a GPU and compute instance concerns that
MIG device only (and its replicas).

Every change bumps `version` and wakes the ListAndWatch streams waiting in `wait_for_change`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from gpunode.plugin.devices import PluginDevice, Resource
from gpunode.plugin.log import log_event
from gpunode.plugin.metrics import Metrics
from gpunode.plugin.nvml import NvmlEvent, XidEventSet

HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"


@dataclass
class _DeviceHealth:
    resource: str
    device: PluginDevice
    fatal: bool = False
    unhealthy_until: float | None = None  # None: healthy; math.inf: until the process ends
    last_xid: int | None = None

    @property
    def healthy(self) -> bool:
        return not self.fatal and self.unhealthy_until is None


class HealthTracker:
    def __init__(
        self,
        resources: Iterable[Resource],
        ignore_xids: frozenset[int],
        fatal_xids: frozenset[int],
        recovery_seconds: float,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # Keyed by (resource, advertised ID): replicas of a shared GPU share its UUID.
        self._states: dict[tuple[str, str], _DeviceHealth] = {}
        self._by_gpu: dict[str, list[_DeviceHealth]] = {}
        for resource in resources:
            for device in resource.devices:
                state = _DeviceHealth(resource=resource.name, device=device)
                self._states[(resource.name, device.id)] = state
                self._by_gpu.setdefault(device.gpu.uuid, []).append(state)
        self.ignore_xids = ignore_xids
        self.fatal_xids = fatal_xids
        self.recovery_seconds = recovery_seconds
        self._metrics = metrics
        self._clock = clock
        self._cond = threading.Condition()
        self.version = 0
        self._publish()

    # -- reading --

    def health(self, device_id: str) -> str:
        """The health of the device advertised as `device_id` (in whichever resource)."""
        with self._cond:
            state = next(s for (_, i), s in self._states.items() if i == device_id)
            return HEALTHY if state.healthy else UNHEALTHY

    def snapshot(self, resource: str) -> list[tuple[PluginDevice, str]]:
        with self._cond:
            return [
                (s.device, HEALTHY if s.healthy else UNHEALTHY) for s in self._states.values() if s.resource == resource
            ]

    def wait_for_change(self, seen_version: int, done: threading.Event) -> int:
        """Block until `version` differs from seen_version or `done` is set (set it, then
        call wake_all: the check happens under the lock, so no wake-up is lost)."""
        with self._cond:
            while self.version == seen_version and not done.is_set():
                self._cond.wait()
            return self.version

    def wake_all(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def fatal_gpus(self) -> set[str]:
        """GPUs (UUIDs) with a fatal fault or lost: a new tracker must not forget them."""
        with self._cond:
            return {uuid for uuid, states in self._by_gpu.items() if any(s.fatal for s in states)}

    def inherit_fatal(self, gpu_uuids: set[str]) -> None:
        """Devices on these GPUs start Unhealthy for good (after a config switch)."""
        with self._cond:
            targets = [s for uuid in gpu_uuids for s in self._by_gpu.get(uuid, [])]
            if targets:
                self._mark(targets, xid=None, fatal=True)

    # -- events --

    def _targets(self, event: NvmlEvent) -> list[_DeviceHealth]:
        on_gpu = self._by_gpu.get(event.gpu_uuid or "", [])
        if event.gpu_instance is None:
            return list(on_gpu)
        exact = [
            s
            for s in on_gpu
            if s.device.mig is not None
            and s.device.mig.gpu_instance == event.gpu_instance
            and (event.compute_instance is None or s.device.mig.compute_instance == event.compute_instance)
        ]
        # A MIG instance we do not advertise on its own (MIG strategy none): the whole GPU.
        return exact or [s for s in on_gpu if s.device.mig is None]

    def record_xid(self, event: NvmlEvent) -> None:
        assert event.xid is not None
        xid = event.xid
        with self._cond:
            targets = self._targets(event)
            if self._metrics:
                self._metrics.xid(event.gpu_uuid or "unknown", xid)
            if xid in self.ignore_xids:
                log_event(
                    "xid",
                    gpu=event.gpu_uuid,
                    xid=xid,
                    gi=event.gpu_instance,
                    ci=event.compute_instance,
                    action="ignored",
                )
                return
            fatal = xid in self.fatal_xids
            log_event(
                "xid",
                gpu=event.gpu_uuid,
                xid=xid,
                gi=event.gpu_instance,
                ci=event.compute_instance,
                action="fatal" if fatal else "unhealthy",
                devices=",".join(s.device.id for s in targets) or "none",
            )
            self._mark(targets, xid=xid, fatal=fatal)

    def record_lost(self, gpu_uuid: str) -> None:
        with self._cond:
            targets = [s for s in self._by_gpu.get(gpu_uuid, []) if not s.fatal]
            if targets:
                log_event("gpu_lost", gpu=gpu_uuid, devices=",".join(s.device.id for s in targets))
                self._mark(targets, xid=None, fatal=True)

    def _mark(self, targets: list[_DeviceHealth], xid: int | None, fatal: bool) -> None:
        now = self._clock()
        changed = False
        for state in targets:
            was_healthy = state.healthy
            state.last_xid = xid
            if fatal:
                state.fatal = True
            elif self.recovery_seconds > 0:
                state.unhealthy_until = now + self.recovery_seconds
            else:
                state.unhealthy_until = math.inf
            if was_healthy:
                changed = True
                log_event(
                    "device_unhealthy",
                    device=state.device.id,
                    resource=state.resource,
                    uuid=state.device.uuid,
                    xid=xid,
                    fatal=str(state.fatal).lower(),
                    recovers_after=None
                    if state.fatal or state.unhealthy_until == math.inf
                    else f"{self.recovery_seconds:g}s",
                )
        if changed:
            self._changed()

    def recover_due(self) -> None:
        """Bring back devices whose quiet period has passed."""
        now = self._clock()
        with self._cond:
            changed = False
            for state in self._states.values():
                if not state.fatal and state.unhealthy_until is not None and state.unhealthy_until <= now:
                    state.unhealthy_until = None
                    changed = True
                    log_event(
                        "device_recovered",
                        device=state.device.id,
                        resource=state.resource,
                        uuid=state.device.uuid,
                        last_xid=state.last_xid,
                        quiet_seconds=f"{self.recovery_seconds:g}",
                    )
            if changed:
                self._changed()

    def next_recovery(self) -> float | None:
        with self._cond:
            due = [
                s.unhealthy_until
                for s in self._states.values()
                if not s.fatal and s.unhealthy_until is not None and s.unhealthy_until != math.inf
            ]
        return min(due) if due else None

    def _changed(self) -> None:
        self.version += 1
        self._publish()
        self._cond.notify_all()

    def _publish(self) -> None:
        if not self._metrics:
            return
        counts: dict[str, list[int]] = {}
        for state in self._states.values():
            counts.setdefault(state.resource, [0, 0])[0 if state.healthy else 1] += 1
        for resource, (healthy, unhealthy) in counts.items():
            self._metrics.set_devices(resource, healthy, unhealthy)


class HealthMonitor(threading.Thread):
    """Waits on NVML's event set and feeds the tracker; wakes for recoveries on time."""

    WAIT_MS = 5000

    def __init__(self, tracker: HealthTracker, events: XidEventSet) -> None:
        super().__init__(name="health-monitor", daemon=True)
        self._tracker = tracker
        self._events = events
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def use(self, tracker: HealthTracker) -> None:
        """Feed another tracker from now on (the plugin's config changed)."""
        self._tracker = tracker

    def run(self) -> None:
        while not self._stop.is_set():
            wait_ms = self.WAIT_MS
            due = self._tracker.next_recovery()
            if due is not None:
                wait_ms = max(1, min(wait_ms, math.ceil((due - time.monotonic()) * 1000)))
            event = self._events.wait(wait_ms)
            if event is not None:
                self._handle(event)
            self._tracker.recover_due()

    def _handle(self, event: NvmlEvent) -> None:
        if event.xid is not None:
            self._tracker.record_xid(event)
            return
        lost = self._events.lost_gpus()
        for uuid in lost:
            self._tracker.record_lost(uuid)
        if not lost:
            log_event("event_wait_failed", error=event.error)
        self._stop.wait(0.5)  # a failing event set may keep failing: do not spin on it
