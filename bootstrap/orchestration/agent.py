"""`gpunode agent`: gpunode's node logic on the node itself, as a DaemonSet pod, with
Kubernetes as the engine (one agent per GPU node, no scheduler of gpunode's own).

One tick:
1. read the Node and the ConfigMap `gpunode-agent`; settings = ConfigMap settings, the
   overrides whose selector matches the Node's labels, the agent's flags (core/kube/agent_settings);
2. in apply mode, plan the node steps exactly as `gpunode bootstrap` does (a dry run through
   the host's namespaces, `@nsenter/<pid>`); if a disruptive step would change (driver,
   toolkit, containerd, host plugin), take a slot of the Lease budget first, or wait and say
   so in the condition; then run bootstrap's node steps for real and label the Node;
3. judge the node with doctor's chain (the host through its namespaces, the cluster through
   this node's objects only) and publish `GPUNodeReady` and, when it changed, an Event.

Ticks run on start, every `interval`, and as soon as the driver changes (the loaded module's
version or the NVML library behind `libnvidia-ml.so.1`, read through /proc/<pid>/root every
`driver_poll` seconds: a stat and a readlink, no process).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pyinfra.api.inventory import Inventory

from gpunode.bootstrap.cluster import drain
from gpunode.bootstrap.cluster.evidence import ClusterReader
from gpunode.bootstrap.cluster.kubectl import KubeAccess, Kubectl
from gpunode.bootstrap.cluster.leases import DisruptionBudget
from gpunode.bootstrap.cluster.node_status import publish, read_node
from gpunode.bootstrap.cluster.objects import patch_metadata
from gpunode.bootstrap.core.doctor.engine import Diagnosis, diagnose
from gpunode.bootstrap.core.doctor.evidence import DoctorCase, Unavailable
from gpunode.bootstrap.core.host.record import STATE_PATH, HostRecord
from gpunode.bootstrap.core.kube.agent_settings import CONFIGMAP_KEY, CONFIGMAP_NAME, node_settings
from gpunode.bootstrap.core.kube.cluster_plan import (
    GPU_COUNT_ANNOTATION,
    GPUS_ANNOTATION,
    metadata_patch,
    normalize_bus_id,
)
from gpunode.bootstrap.core.kube.node_condition import (
    REASON_DRAIN_BLOCKED,
    NodeCondition,
    NodeEventSpec,
    condition_from_verdicts,
    unknown_condition,
    waiting_condition,
)
from gpunode.bootstrap.core.kube.plugin_deployment import DRIVER_VERSION_LABEL, NVML_LIBRARY_ANNOTATION
from gpunode.bootstrap.core.kube.rollout_plan import CORDONED_BY_ANNOTATION, disruption_of, plan_drain
from gpunode.bootstrap.core.report import HostReport
from gpunode.bootstrap.core.settings import DATA_PREFIX, NodeSettings
from gpunode.bootstrap.errors import GpunodeError
from gpunode.bootstrap.log import log_event
from gpunode.bootstrap.orchestration.bootstrap import BootstrapRequest, run_bootstrap
from gpunode.bootstrap.orchestration.doctor import DoctorRequest, read_hosts

LIBRARY_LINKS = (
    "usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
    "usr/lib/aarch64-linux-gnu/libnvidia-ml.so.1",
    "usr/lib64/libnvidia-ml.so.1",
)


@dataclass
class AgentRequest:
    node_name: str
    kube: KubeAccess
    host_pid: int = 1
    mode: str | None = None  # None: apply where gpunode set the node up, else check
    namespace: str = "kube-system"
    interval: float = 300.0
    max_unavailable: int = 1
    heartbeat: float = 300.0
    lease_duration: int = 60
    driver_poll: float = 10.0
    drain_timeout: float = 600.0
    delete_emptydir_data: bool = False
    flags: Mapping[str, Any] = field(default_factory=dict)  # bootstrap settings given as agent flags
    progress: Callable[[str], None] | None = None


@dataclass
class TickOutcome:
    node: str
    mode: str
    condition: NodeCondition
    event: NodeEventSpec | None = None
    written: bool = False
    disruptive: tuple[str, ...] = ()
    slot: str | None = None
    waited_for: tuple[str, ...] = ()
    reports: list[HostReport] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "mode": self.mode,
            "condition": asdict(self.condition),
            "event": asdict(self.event) if self.event else None,
            "written": self.written,
            "disruptive": list(self.disruptive),
            "slot": self.slot,
            "waited_for": list(self.waited_for),
            "steps": [r.as_dict() for r in self.reports],
            "seconds": round(self.seconds, 3),
        }


# --------------------------------------------------------------------------------------
# the host, through its namespaces


def host_root(pid: int) -> Path:
    """The host's root directory as this process sees it (hostPID: PID 1's root)."""
    return Path(f"/proc/{pid}/root")


def _read_link_in(root: Path, relative: str, hops: int = 16) -> str:
    """Follow a symlink chain inside `root` (absolute targets are the host's, not ours)."""
    path = "/" + relative.lstrip("/")
    seen = []
    for _ in range(hops):
        try:
            target = os.readlink(root / path.lstrip("/"))
        except OSError:
            break
        path = target if target.startswith("/") else os.path.normpath(os.path.join(os.path.dirname(path), target))
        seen.append(path)
    return "->".join(seen)


def driver_fingerprint(root: Path) -> str:
    """The loaded module's version and where each libnvidia-ml.so.1 leads: what changes
    when the driver does. Reads files only (no process), so it can run every few seconds."""
    try:
        module = (root / "sys/module/nvidia/version").read_text().strip()
    except OSError:
        module = ""
    return "|".join([module, *(_read_link_in(root, link) for link in LIBRARY_LINKS)])


def set_up_by_gpunode(root: Path) -> bool:
    return (root / STATE_PATH.lstrip("/")).is_file()


def _inventory(pid: int, settings: NodeSettings) -> Inventory:
    data = {DATA_PREFIX + k: v for k, v in asdict(settings).items() if v is not None}
    return Inventory(([(f"@nsenter/{pid}", data)], {}))  # type: ignore[no-untyped-call]


# --------------------------------------------------------------------------------------
# one tick


class Agent:
    def __init__(self, request: AgentRequest, clock: Callable[[], datetime] | None = None) -> None:
        self.request = request
        self.kubectl = Kubectl(request.kube)
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.root = host_root(request.host_pid)
        self.budget = DisruptionBudget(
            self.kubectl,
            request.namespace,
            request.node_name,
            request.max_unavailable,
            duration_seconds=request.lease_duration,
            clock=self.clock,
        )

    def _say(self, text: str) -> None:
        if self.request.progress is not None:
            self.request.progress(f"[{self.request.node_name}] {text}")

    def _settings(self, node: Mapping[str, Any]) -> NodeSettings:
        config = self.kubectl.get("configmap", CONFIGMAP_NAME, namespace=self.request.namespace)
        text = ((config or {}).get("data") or {}).get(CONFIGMAP_KEY)
        labels = (node.get("metadata") or {}).get("labels") or {}
        # The agent never reboots its own host: its pod would go down with it mid-step.
        # A needed reboot is said in the condition (F14 / reboot required) instead.
        return node_settings(self.request.node_name, labels, text, {**self.request.flags, "reboot": False})

    def tick(self) -> TickOutcome:
        started = time.monotonic()
        node = read_node(self.kubectl, self.request.node_name)
        mode = self.request.mode or ("apply" if set_up_by_gpunode(self.root) else "check")
        outcome = TickOutcome(self.request.node_name, mode, unknown_condition("not judged yet"))
        try:
            settings = self._settings(node)
        except GpunodeError as exc:
            outcome.condition = unknown_condition(f"the agent's settings are refused: {exc}")
            settings = None
        if settings is not None:
            if mode == "apply":
                self._resume_if_ours(node, outcome)
                self._converge(settings, node, outcome)
            if not outcome.waited_for and outcome.condition.reason != REASON_DRAIN_BLOCKED:
                # Check mode changed nothing: the Node read above is still the one to judge.
                outcome.condition = self._judge(settings, node if mode == "check" else None)
            if mode == "apply":
                self._bring_back(outcome)
        after, outcome.event = publish(
            self.kubectl,
            read_node(self.kubectl, self.request.node_name) if mode == "apply" else node,
            outcome.condition,
            now=self.clock(),
            heartbeat_seconds=self.request.heartbeat,
            event_namespace=self.request.namespace,
            reporting_instance=os.environ.get("HOSTNAME", self.request.node_name),
        )
        outcome.written = after is not None
        outcome.seconds = time.monotonic() - started
        log_event(
            "agent_tick",
            node=self.request.node_name,
            mode=mode,
            status=outcome.condition.status,
            reason=outcome.condition.reason,
            written=outcome.written,
            disruptive="; ".join(outcome.disruptive),
            slot=outcome.slot or "",
            waited_for=",".join(outcome.waited_for),
            failed=",".join(s.name for r in outcome.reports for s in r.steps if s.status == "failed"),
            seconds=f"{outcome.seconds:.2f}",
        )
        return outcome

    # -- apply --------------------------------------------------------------------------

    def _bootstrap(self, settings: NodeSettings, dry_run: bool) -> HostReport:
        result = run_bootstrap(
            _inventory(self.request.host_pid, settings), BootstrapRequest(overrides={}, dry_run=dry_run)
        )
        return result.reports[0]

    def _converge(self, settings: NodeSettings, node: Mapping[str, Any], outcome: TickOutcome) -> None:
        """Plan as bootstrap plans; a run that disrupts the node first takes a slot of the
        budget, cordons and drains (the rollout's own cordon and drain), then runs."""
        planned = self._bootstrap(settings, dry_run=True)
        outcome.reports.append(planned)
        statuses = {step.name: step.status for step in planned.steps}
        if planned.error is not None or "changed" not in statuses.values():
            self._label(node)
            return
        disruption = disruption_of(statuses, reboot=False)  # the agent never reboots its own host
        if disruption.disrupts:
            outcome.disruptive = disruption.reasons
            if not self._take_slot(outcome):
                return
            problem = self._take_out(disruption.scope or "all")
            if problem is not None:
                outcome.condition = NodeCondition(
                    "False",
                    REASON_DRAIN_BLOCKED,
                    f"{problem}. Fix: let the blocking pods move (or give --delete-emptydir-data), the agent tries "
                    "again every interval; the node stays cordoned and keeps its disruption slot meanwhile.",
                )
                return
        outcome.reports.append(self._bootstrap(settings, dry_run=False))
        self._label(read_node(self.kubectl, self.request.node_name))

    def _take_slot(self, outcome: TickOutcome) -> bool:
        holding = self.budget.hold()
        if holding.slot is None:
            outcome.waited_for = holding.holders
            outcome.condition = waiting_condition(
                holding.holders, self.request.max_unavailable, "; ".join(outcome.disruptive)
            )
            self._say(f"waiting for the disruption budget (held by {', '.join(holding.holders) or '?'})")
            return False
        if outcome.slot is None:
            log_event("disruption_started", node=self.request.node_name, lease=holding.slot, at=f"{time.time():.3f}")
        outcome.slot = holding.slot
        return True

    def _take_out(self, scope: str) -> str | None:
        """Cordon (as gpunode's: someone else's cordon is kept and never lifted) and drain
        through the Eviction API; what stood in the way, or None."""
        name = self.request.node_name
        drain.cordon(self.kubectl, drain.read_node(self.kubectl, name))
        plan = plan_drain(
            name,
            drain.pods_on(self.kubectl, name),
            "gpu" if scope == "gpu" else "all",
            delete_emptydir_data=self.request.delete_emptydir_data,
        )
        result = drain.drain(self.kubectl, plan, self.request.drain_timeout, self.request.progress)
        return result.problem

    def _resume_if_ours(self, node: Mapping[str, Any], outcome: TickOutcome) -> None:
        """A node this agent cordoned (an earlier tick, or before a restart) is still in its
        disruption: it keeps (or takes back) its slot until the node is proven."""
        if self.budget.slot is None and CORDONED_BY_ANNOTATION not in _annotations(node):
            return
        holding = self.budget.hold()
        outcome.slot = holding.slot

    def _bring_back(self, outcome: TickOutcome) -> None:
        """Proven (GPUNodeReady True): uncordon (only gpunode's cordon) and give the slot
        back. Not proven: the node stays cordoned and the slot stays taken, so a change
        that breaks nodes stops at the first one, as the rolling upgrade stops."""
        if outcome.slot is None or not outcome.condition.healthy:
            return
        drain.uncordon(self.kubectl, self.request.node_name)
        log_event("disruption_ended", node=self.request.node_name, lease=outcome.slot, at=f"{time.time():.3f}")
        self.budget.release()

    def _label(self, node: Mapping[str, Any]) -> None:
        """The labels and annotations bootstrap's node-label step sets, from what it recorded
        on the host. The device-plugin label is not set: the agent deploys no DaemonSet
        (the per-version DaemonSets of `gpunode render` select by the version label)."""
        record = self._record()
        if record is None or not record.driver_version:
            return
        labels = {DRIVER_VERSION_LABEL: record.driver_version}
        annotations: dict[str, str | None] = {
            GPU_COUNT_ANNOTATION: str(record.gpu_count),
            GPUS_ANNOTATION: ",".join(normalize_bus_id(g.split(" ", 1)[0]) for g in record.gpus),
            NVML_LIBRARY_ANNOTATION: record.nvml_library,
        }
        patch = metadata_patch(node, labels, annotations)
        if patch is not None:
            patch_metadata(self.kubectl, "node", self.request.node_name, patch)

    def _record(self) -> HostRecord | None:
        from gpunode.bootstrap.core.host.record import parse_record

        try:
            return parse_record((self.root / STATE_PATH.lstrip("/")).read_text())
        except OSError:
            return None

    # -- judge --------------------------------------------------------------------------

    def diagnose(self, settings: NodeSettings, node: Mapping[str, Any] | None = None) -> tuple[Diagnosis, str | None]:
        """Doctor's verdicts for this node, and why the host could not be read (or None)."""
        inventory = _inventory(self.request.host_pid, settings)
        hosts = read_hosts(DoctorRequest(inventory=inventory, containerd_config=settings.containerd_config))
        host = hosts[0]
        reader = ClusterReader(self.kubectl)
        snapshot = reader.node_snapshot(self.request.node_name, dict(node) if node is not None else None)
        view = reader.node_view(snapshot, self.request.node_name)
        case = DoctorCase(
            subject=f"node {self.request.node_name}",
            node_name=self.request.node_name,
            host=host.facts,
            host_unavailable=Unavailable(host.problem) if host.problem else None,
            record=host.record,
            cluster=view,
            named_gpu_node=True,
        )
        return diagnose([case]), host.problem

    def _judge(self, settings: NodeSettings, node: Mapping[str, Any] | None = None) -> NodeCondition:
        diagnosis, host_problem = self.diagnose(settings, node)
        problems = diagnosis.problems
        if self.budget.slot is not None:
            # The agent's own cordon during its disruption is not a finding about the node:
            # it is lifted as soon as the rest of the chain holds.
            problems = tuple(v for v in problems if v.id != "NODE-CORDONED")
        if host_problem is not None and not problems:
            return unknown_condition(f"the host could not be read: {host_problem}")
        record = self._record()
        return condition_from_verdicts(problems, record.gpu_count if record else None)


# --------------------------------------------------------------------------------------
# the loop


def run_agent(request: AgentRequest, stop: threading.Event, on_tick: Callable[[TickOutcome], None]) -> None:
    """Tick on start, every interval, and when the driver changes, until `stop` is set. A
    tick that fails (API server away, a refused grant) is logged and retried next time."""
    agent = Agent(request)
    fingerprint = driver_fingerprint(agent.root)
    while not stop.is_set():
        try:
            on_tick(agent.tick())
        except GpunodeError as exc:
            log_event("agent_tick_failed", node=request.node_name, error=str(exc))
        deadline = time.monotonic() + request.interval
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            stop.wait(min(left, request.driver_poll))
            now = driver_fingerprint(agent.root)
            if now != fingerprint:
                log_event("driver_changed", node=request.node_name, was=fingerprint, now=now)
                fingerprint = now
                break


def _annotations(node: Mapping[str, Any]) -> Mapping[str, Any]:
    return (node.get("metadata") or {}).get("annotations") or {}
