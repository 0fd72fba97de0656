"""`gpunode bootstrap` across a fleet without killing anyone's job: cordon, drain, upgrade,
prove, uncordon, in batches of --max-unavailable nodes.

1. A dry run of every host decides which runs disrupt their node (core.kube.rollout_plan:
   driver packages, containerd restart, reboot, the device plugin replaced). Nodes that
   gpunode cordoned in an earlier, interrupted run are part of the rollout whatever their
   plan says: they are out of service until proven.
2. Batch by batch: cordon each node (annotated as gpunode's; someone else's cordon is left
   as it is, and stays after the rollout), drain it through the Eviction API, run the whole
   bootstrap on the batch (node steps, --reboot and the wait for SSH, cluster steps,
   verify: Allocatable = the GPUs found), wait for the node Ready, uncordon. The next batch
   starts only when every node of this one is proven.
3. The first node that fails stops the rollout: it stays cordoned, the nodes after it are
   not touched, and the message says how to resume (run the same command again: that node
   is finished first) or undo (kubectl uncordon).
4. Hosts whose run disrupts nothing are bootstrapped together at the end, uncordoned.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from pyinfra.api.host import Host
from pyinfra.api.inventory import Inventory

from gpunode.bootstrap.cluster import drain
from gpunode.bootstrap.cluster.kubectl import Kubectl
from gpunode.bootstrap.cluster.steps import verify_only
from gpunode.bootstrap.core.kube.rollout_plan import (
    Disruption,
    MaxUnavailable,
    NodeState,
    blocking_budgets,
    disruption_of,
    node_state,
    nowhere_to_go,
    plan_batches,
    plan_drain,
)
from gpunode.bootstrap.core.report import HostReport
from gpunode.bootstrap.core.settings import resolve_settings
from gpunode.bootstrap.errors import GpunodeError, UserError
from gpunode.bootstrap.orchestration.bootstrap import BootstrapRequest, BootstrapResult, check_cluster, run_bootstrap


@dataclass
class RolloutRequest:
    bootstrap: BootstrapRequest  # its cluster is required; dry_run and progress come from it
    max_unavailable: MaxUnavailable = field(default_factory=lambda: MaxUnavailable(1))
    drain_timeout: float = 600
    delete_emptydir_data: bool = False
    # Asked when a drain's pods have nowhere else to go (a single-node homelab); None: --yes.
    confirm_nowhere: Callable[[str], bool] | None = None


@dataclass
class Phase:
    name: str  # cordon, drain, steps, ready, uncordon
    status: str  # done, skipped, failed
    seconds: float
    detail: str = ""
    started: float = 0.0  # seconds after the rollout began


@dataclass
class NodeRollout:
    host: str
    node: str
    batch: int  # 1-based; 0: not disrupted, bootstrapped at the end without a cordon
    disruption: Disruption
    status: str = "not started"  # not started, done, failed, planned
    phases: list[Phase] = field(default_factory=list)
    cordoned: bool = False  # cordoned when the run ended
    drain: list[str] = field(default_factory=list)  # dry run: the pods its drain would evict
    blocks: list[str] = field(default_factory=list)  # dry run: the budgets that would refuse
    origin: float = field(default_factory=time.monotonic, repr=False)  # when the rollout began
    gpus: int = 0  # GPUs the host had when the rollout planned it: verify must prove them

    def as_dict(self) -> dict[str, object]:
        return {
            "host": self.host,
            "node": self.node,
            "batch": self.batch,
            "disrupts": self.disruption.disrupts,
            "reasons": list(self.disruption.reasons),
            "drain_scope": self.disruption.scope,
            "status": self.status,
            "cordoned": self.cordoned,
            "phases": [
                {
                    "name": p.name,
                    "status": p.status,
                    "started": round(p.started, 3),
                    "seconds": round(p.seconds, 3),
                    "detail": p.detail,
                }
                for p in self.phases
            ],
            "would_evict": self.drain,
            "blocked_by": self.blocks,
        }


@dataclass
class RolloutResult:
    reports: list[HostReport]
    nodes: list[NodeRollout]
    batches: int
    max_unavailable: str
    plan: str = ""  # --dry-run: the node steps' plan with file diffs
    stopped: str | None = None  # why the rollout stopped, and how to resume or undo

    @property
    def ok(self) -> bool:
        return self.stopped is None and all(r.ok for r in self.reports)

    def as_dict(self) -> dict[str, object]:
        return {
            "max_unavailable": self.max_unavailable,
            "batches": self.batches,
            "stopped": self.stopped,
            "nodes": [n.as_dict() for n in self.nodes],
        }


def sub_inventory(hosts: Sequence[Host]) -> Inventory:
    """An inventory of these hosts alone, each with the data it had (group data merged in)."""
    return Inventory(([(h.name, h.data.dict()) for h in hosts], {}))  # type: ignore[no-untyped-call]


def _say(request: RolloutRequest, text: str) -> None:
    if request.bootstrap.progress is not None:
        request.bootstrap.progress(text)


def run_rollout(inventory: Inventory, request: RolloutRequest) -> RolloutResult:
    cluster = request.bootstrap.cluster
    if cluster is None:
        raise UserError("a rollout needs the cluster.", fix="drop --skip-cluster, or use --max-parallel-reboots")
    try:
        check_cluster(cluster.access)
    except GpunodeError:
        if not request.bootstrap.dry_run:
            raise
        # A dry run still shows the node plan; its cluster half says why there is none.
        shown = run_bootstrap(inventory, request.bootstrap)
        return RolloutResult(shown.reports, [], 0, str(request.max_unavailable), shown.plan)
    kubectl = Kubectl(cluster.access)
    hosts = list(inventory)
    origin = time.monotonic()
    _say(request, f"planning the rollout of {len(hosts)} host(s)")
    # Quiet unless the user asked for the dry run: its "would change" lines are not this run's.
    quiet = None if not request.bootstrap.dry_run else request.bootstrap.progress
    planned = run_bootstrap(inventory, replace(request.bootstrap, dry_run=True, confirm=None, progress=quiet))
    reports = {r.host: r for r in planned.reports}
    nodes: list[NodeRollout] = []
    states: list[NodeState] = []
    for host in hosts:
        report = reports[host.name]
        statuses = {s.name: s.status for s in report.steps}
        disruption = disruption_of(statuses, reboot=report.reboot_required and _may_reboot(host, request))
        node = NodeRollout(host.name, report.node_name or "", 0, disruption, origin=origin)
        node.gpus = report.gpu_count or 0
        nodes.append(node)
        if report.error is not None or not node.node:
            continue  # it fails on its own in the run; nothing to cordon
        found = kubectl.get("node", node.node)
        if found is None:
            continue  # not in the cluster: its node-label step says so in the run
        state = node_state(host.name, found)
        if disruption.disrupts or state.cordoned_by_us:
            if not disruption.disrupts:
                node.disruption = Disruption(("gpunode cordoned it in an earlier run that did not finish",), "all")
            states.append(state)
    batches = plan_batches(states, request.max_unavailable)
    by_node = {n.node: n for n in nodes}
    for number, batch in enumerate(batches, 1):
        for state in batch:
            by_node[state.node].batch = number
    result = RolloutResult(
        reports=[reports[h.name] for h in hosts],
        nodes=nodes,
        batches=len(batches),
        max_unavailable=str(request.max_unavailable),
        plan=planned.plan,
    )
    if request.bootstrap.dry_run:
        _dry_run(kubectl, request, batches, by_node)
        return result
    confirm = request.bootstrap.confirm
    if confirm is not None and planned.plan and not confirm(planned.plan + _batches_text(batches)):
        for report in result.reports:
            report.error = "not applied: the plan was not confirmed"
        return result
    # Asked once, above; each batch's run then goes ahead.
    request = replace(request, bootstrap=replace(request.bootstrap, confirm=None))
    by_name = {h.name: h for h in hosts}
    for number, batch in enumerate(batches, 1):
        _say(request, f"batch {number} of {len(batches)}: {', '.join(s.node for s in batch)}")
        stopped = _roll_batch(kubectl, request, [by_name[s.host] for s in batch], batch, by_node, reports)
        if stopped is not None:
            untouched = [n for n in nodes if n.status == "not started" and n.node]
            result.stopped = stopped + (f" Not started: {', '.join(n.node for n in untouched)}." if untouched else "")
            for node in untouched:
                reports[node.host] = HostReport(node.host, node_name=node.node)
                reports[node.host].error = "not started: the rollout stopped before this host"
            result.reports = [reports[h.name] for h in hosts]
            return result
    _finish_calm(kubectl, request, [by_name[n.host] for n in nodes if n.batch == 0], planned, reports)
    for node in nodes:
        if node.batch == 0:
            node.status = "done" if reports[node.host].ok else "failed"
    result.reports = [reports[h.name] for h in hosts]
    return result


def _settled(report: HostReport) -> bool:
    """Its planned run changes nothing: the planning dry run was its run, but for verify."""
    return (
        report.ok
        and not report.reboot_required
        and all(s.status in ("unchanged", "skipped") for s in report.steps)
        and report.step("verify") is not None
    )


def _finish_calm(
    kubectl: Kubectl,
    request: RolloutRequest,
    calm: list[Host],
    planned: BootstrapResult,
    reports: dict[str, HostReport],
) -> None:
    """The hosts whose run disrupts nothing, without a cordon: those whose plan changes
    nothing are only verified (planning them again would read and compare it all twice),
    the others get their run."""
    settled = [h for h in calm if h.name in planned.targets and _settled(reports[h.name])]
    rest = [h for h in calm if h not in settled]
    if settled and request.bootstrap.cluster is not None:
        _say(request, f"{len(settled)} host(s) with nothing to change: verified")
        targets = [planned.targets[h.name] for h in settled]
        proofs = verify_only(kubectl, targets, request.bootstrap.cluster.settings, request.bootstrap.progress)
        for host in settled:
            proof = proofs.get(host.name)
            if proof is not None:
                reports[host.name].record("verify", proof.status, proof.detail)
    if rest:
        _say(request, f"{len(rest)} host(s) whose run disrupts nothing: bootstrapped without a cordon")
        for report in run_bootstrap(sub_inventory(rest), request.bootstrap).reports:
            reports[report.host] = report


def _batches_text(batches: list[list[NodeState]]) -> str:
    if not batches:
        return ""
    lines = ["rollout, one batch after the other (cordon, drain, steps, ready, uncordon):"]
    lines += [f"  batch {n}: {', '.join(s.node for s in batch)}" for n, batch in enumerate(batches, 1)]
    return "\n".join(lines) + "\n"


def _may_reboot(host: Host, request: RolloutRequest) -> bool:
    try:
        settings = resolve_settings(host.name, host.data.dict(), request.bootstrap.overrides)  # type: ignore[no-untyped-call]
    except UserError:
        return False
    return bool(settings.reboot)


def _dry_run(
    kubectl: Kubectl, request: RolloutRequest, batches: list[list[NodeState]], by_node: dict[str, NodeRollout]
) -> None:
    budgets = drain.disruption_budgets(kubectl) if batches else []
    all_nodes = drain.list_nodes(kubectl) if batches else []
    for batch in batches:
        for state in batch:
            node = by_node[state.node]
            node.status = "planned"
            scope = node.disruption.scope or "all"
            plan = plan_drain(
                state.node, drain.pods_on(kubectl, state.node), scope, delete_emptydir_data=request.delete_emptydir_data
            )
            node.drain = [f"{p['metadata'].get('namespace')}/{p['metadata']['name']}" for p in plan.evict]
            node.blocks = [b.text() for b in blocking_budgets(plan, budgets)]
            node.blocks += [f"{pod}: {why}" for pod, why in plan.blocking]
        if nowhere_to_go(all_nodes, [s.node for s in batch]):
            for state in batch:
                by_node[state.node].blocks.append(
                    "no other schedulable node can take its pods: they stay Pending until it is back (asked, or --yes)"
                )


def _timed(node: NodeRollout, name: str, work: Callable[[], str]) -> bool:
    """Run one phase of a node, record it with its duration; False when it failed."""
    start = time.monotonic()
    try:
        detail = work()
    except GpunodeError as exc:
        node.phases.append(Phase(name, "failed", time.monotonic() - start, str(exc), start - node.origin))
        return False
    node.phases.append(Phase(name, "done", time.monotonic() - start, detail, start - node.origin))
    return True


class _PhaseFailed(GpunodeError):
    pass


def _roll_batch(
    kubectl: Kubectl,
    request: RolloutRequest,
    hosts: list[Host],
    batch: list[NodeState],
    by_node: dict[str, NodeRollout],
    reports: dict[str, HostReport],
) -> str | None:
    """One batch, cordon to uncordon; the reason it stopped, or None when every node is proven."""
    if nowhere_to_go(drain.list_nodes(kubectl), [s.node for s in batch]):
        question = (
            f"No node outside {', '.join(s.node for s in batch)} can take its pods (a single-node cluster?): "
            "drained pods stay Pending until the node is back."
        )
        if request.confirm_nowhere is not None and not request.confirm_nowhere(question):
            return f"Rollout not started on {', '.join(s.node for s in batch)}: {question} Not confirmed."
        _say(request, question + " Going on (--yes).")
    for state in batch:
        node = by_node[state.node]
        node.status = "failed"  # until proven
        node.cordoned = True
        failed_phase = _take_out(kubectl, request, state, node)
        if failed_phase is not None:
            return _stopped(node, failed_phase, batch, by_node)
    _run_steps(request, hosts, batch, by_node, reports)
    failed_nodes = [by_node[s.node] for s in batch if by_node[s.node].phases[-1].status == "failed"]
    for state in batch:
        node = by_node[state.node]
        if node not in failed_nodes and not _bring_back(kubectl, request, state, node):
            failed_nodes.append(node)
    if failed_nodes:
        return " ".join(_stopped(node, node.phases[-1].name, batch, by_node) for node in failed_nodes)
    return None


def _take_out(kubectl: Kubectl, request: RolloutRequest, state: NodeState, node: NodeRollout) -> str | None:
    """Cordon and drain one node; the phase that failed, or None."""

    def cordon() -> str:
        if drain.cordon(kubectl, drain.read_node(kubectl, state.node)):
            return "cordoned"
        return "already cordoned by gpunode" if state.cordoned_by_us else "already cordoned by someone else: kept"

    def drain_node() -> str:
        scope = node.disruption.scope or "all"
        pods = drain.pods_on(kubectl, state.node)
        plan = plan_drain(state.node, pods, scope, delete_emptydir_data=request.delete_emptydir_data)
        outcome = drain.drain(kubectl, plan, request.drain_timeout, request.bootstrap.progress)
        if not outcome.ok:
            raise _PhaseFailed(str(outcome.problem))
        return plan.summary()

    if not _timed(node, "cordon", cordon):
        return "cordon"
    if not _timed(node, "drain", drain_node):
        return "drain"
    return None


def _run_steps(
    request: RolloutRequest,
    hosts: list[Host],
    batch: list[NodeState],
    by_node: dict[str, NodeRollout],
    reports: dict[str, HostReport],
) -> None:
    """The whole bootstrap of the batch's hosts (node steps, reboot, cluster steps, verify)."""
    start = time.monotonic()
    outcome = run_bootstrap(sub_inventory(hosts), request.bootstrap)
    seconds = time.monotonic() - start
    for report in outcome.reports:
        reports[report.host] = report
    for state in batch:
        node = by_node[state.node]
        report = reports[state.host]
        failed = [
            f"{s.name}: {s.detail.splitlines()[0] if s.detail else ''}" for s in report.steps if s.status == "failed"
        ]
        if report.error:
            failed.insert(0, report.error)
        proof = report.step("verify")
        if not failed and node.gpus and (proof is None or proof.status != "unchanged"):
            # A node with GPUs is proven by verify alone (skipped: e.g. its GPUs gone after the reboot).
            failed.append(f"not proven: verify {proof.status + ': ' + proof.detail if proof else 'did not run'}")
        node.phases.append(
            Phase("steps", "failed" if failed else "done", seconds, "; ".join(failed), start - node.origin)
        )


def _bring_back(kubectl: Kubectl, request: RolloutRequest, state: NodeState, node: NodeRollout) -> bool:
    """Ready, then uncordoned (unless someone else's cordon); False when it failed."""

    def ready() -> str:
        return _ready(kubectl, state, request)

    def uncordon() -> str:
        if state.cordoned_by_others:
            return "left cordoned: someone else cordoned it before gpunode"
        drain.uncordon(kubectl, state.node)
        return "uncordoned"

    if not _timed(node, "ready", ready) or not _timed(node, "uncordon", uncordon):
        return False
    node.status = "done"
    node.cordoned = state.cordoned_by_others
    return True


def _ready(kubectl: Kubectl, state: NodeState, request: RolloutRequest) -> str:
    timeout = request.bootstrap.cluster.settings.verify_timeout if request.bootstrap.cluster else 120
    drain.wait_node_ready(kubectl, state.node, timeout)
    return "Ready"


def _stopped(node: NodeRollout, phase: str, batch: list[NodeState], by_node: dict[str, NodeRollout]) -> str:
    # Batch-mates cordoned before the stop and not proven: resumed first by the next run.
    for state in batch:
        mate = by_node[state.node]
        if mate is not node and mate.status == "failed" and not any(p.status == "failed" for p in mate.phases):
            mate.status = "interrupted"
    detail = node.phases[-1].detail if node.phases else ""
    return (
        f"Rollout stopped at node {node.node} ({node.host}), batch {node.batch}: {phase} failed: {detail} "
        f"The node is left cordoned. To resume: fix that and run the same command again (gpunode finishes "
        f"{node.node} first). To undo: kubectl uncordon {node.node}."
    )
