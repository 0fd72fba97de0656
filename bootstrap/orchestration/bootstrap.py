"""`gpunode bootstrap`: the node steps on every host, in two phases, then the cluster steps.

Phase 1 converges packages (driver, nouveau blacklist, container toolkit). What the host
looks like after it (the library file, the toolkit's runtime) decides phase 2, so hosts
that changed in phase 1 are read again before phase 2 is planned: nothing is guessed.
Phase 2 writes what depends on it (containerd runtime, state record, host plugin service).

Hosts that need a reboot (a new driver whose module is not loaded yet: F13, F14) stop
there with "reboot required", or with --reboot are rebooted (pyinfra's server.reboot, which
waits for the host to come back), read again and given phase 2 once more.

Then the cluster steps (gpunode.bootstrap.cluster.steps), once for every host whose node
steps went well: RuntimeClass, node labels, the device plugin DaemonSet rolled out, and
Allocatable nvidia.com/gpu verified.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from pyinfra.api.host import Host
from pyinfra.api.inventory import Inventory

from gpunode.bootstrap.cluster.kubectl import KubeAccess, Kubectl
from gpunode.bootstrap.cluster.steps import CLUSTER_STEPS, run_cluster_steps
from gpunode.bootstrap.core.host.facts import HostFacts
from gpunode.bootstrap.core.kube.cluster_plan import ClusterSettings, NodeTarget
from gpunode.bootstrap.core.nvml.library import NvmlLibrary
from gpunode.bootstrap.core.packages.toolkit import LocalPackage
from gpunode.bootstrap.core.report import HostReport
from gpunode.bootstrap.core.settings import NodeSettings, resolve_settings
from gpunode.bootstrap.errors import CouldNotCheck, GpunodeError, UserError
from gpunode.bootstrap.masking import mask_secrets
from gpunode.bootstrap.node.host_lock import HostLock
from gpunode.bootstrap.node.local_packages import read_local_packages
from gpunode.bootstrap.node.operations import converge
from gpunode.bootstrap.node.steps import NodeFacts, NodeStep, StepPlan, apt_names, managed_paths, steps_of
from gpunode.bootstrap.node.steps.base import backup_stamp
from gpunode.bootstrap.orchestration.session import OpOutcome, PlannedOp, Session

PACKAGES = steps_of("packages")
CONFIG = steps_of("config")


@dataclass(frozen=True)
class ClusterRequest:
    """How to reach the cluster, and what to put there (None in BootstrapRequest: --skip-cluster)."""

    access: KubeAccess
    settings: ClusterSettings


@dataclass
class BootstrapRequest:
    overrides: Mapping[str, Any]
    dry_run: bool = False
    parallel: int = 10
    confirm: Callable[[str], bool] | None = None
    progress: Callable[[str], None] | None = None
    cluster: ClusterRequest | None = None
    # How long to wait for a rebooted host to answer again (--reboot).
    reboot_timeout: int = 600
    # At most this many hosts rebooting at once (--max-parallel-reboots); None: up to --parallel.
    max_parallel_reboots: int | None = None


@dataclass
class HostRun:
    """Everything known about one host during a run."""

    host: Host
    report: HostReport
    settings: NodeSettings | None = None
    facts: HostFacts | None = None
    plans: dict[str, StepPlan] = field(default_factory=dict)
    lock: HostLock | None = None
    # What the nvml-library step resolved: the steps after it and the cluster steps use it.
    library: NvmlLibrary | None = None
    # The node as the cluster steps saw it (None: no cluster steps for this host).
    target: NodeTarget | None = None

    @property
    def active(self) -> bool:
        return self.report.error is None and all(s.status != "failed" for s in self.report.steps)


def _say(request: BootstrapRequest, text: str) -> None:
    if request.progress is not None:
        request.progress(text)


def _load_local_packages(runs: Sequence[HostRun]) -> dict[str, tuple[LocalPackage, ...]]:
    """Read each distinct --toolkit-packages directory once, on the operator's machine."""
    loaded: dict[str, tuple[LocalPackage, ...]] = {}
    for run in runs:
        directory = run.settings.toolkit_packages if run.settings else None
        if directory and directory not in loaded:
            path = Path(directory).expanduser()
            if not path.is_dir():
                raise UserError(
                    f"--toolkit-packages {directory} is not a directory.",
                    fix="give the directory that holds the toolkit's .deb or .rpm files",
                )
            loaded[directory] = tuple(read_local_packages(path))
    return loaded


def _record(run: HostRun, plan: StepPlan, request: BootstrapRequest) -> None:
    status = plan.status
    run.report.record(plan.name, status, _detail(plan), tuple(plan.notes), plan.diff or None)
    run.report.reboot_required |= plan.reboot_required
    if plan.library is not None:
        # What a step decided for the run: the report shows it, later steps read it.
        run.library = plan.library
        run.report.nvml_library = plan.library.path
        run.report.driver_version = plan.library.version
    if status == "changed":
        # Planned, not done: the line that says "changed" comes when the commands have run.
        shown = "would change" if request.dry_run else "will change"
    else:
        shown = status
    _say(request, f"[{run.report.host}] {plan.name}: {shown}")


def _detail(plan: StepPlan, output: str = "") -> str:
    """The step's summary (and a failed command's output); its notes are kept apart."""
    text = plan.summary()
    if output:
        text += f"\n{output.strip()}"
    return text


def _node_facts(run: HostRun, local: Mapping[str, tuple[LocalPackage, ...]]) -> NodeFacts:
    assert run.facts is not None and run.settings is not None
    return NodeFacts(
        host=run.facts,
        gpunode_version=version("gpunode"),
        stamp=backup_stamp(),
        local_packages=local.get(run.settings.toolkit_packages) if run.settings.toolkit_packages else None,
        library=run.library,
    )


def _plan_phase(
    runs: Sequence[HostRun],
    steps: Sequence[NodeStep],
    request: BootstrapRequest,
    local: Mapping[str, tuple[LocalPackage, ...]],
) -> None:
    """Plan `steps` in order on every host; a step sees what the steps before it decided."""
    for run in runs:
        for step in steps:
            if not run.active:
                run.report.record(step.name, "skipped", "an earlier step failed on this host")
                continue
            assert run.settings is not None
            if request.dry_run and step.needs_settled_driver and _driver_would_change(run):
                # Planned from the host as it is now: what depends on the installed library
                # cannot be known while the driver step would change it first.
                plan = StepPlan(step.name)
                plan.skipped = "decided after the driver step has installed the driver (it would change first)"
            else:
                plan = step.plan(_node_facts(run, local), run.settings)
            run.plans[step.name] = plan
            _record(run, plan, request)


def _driver_would_change(run: HostRun) -> bool:
    return any(
        (plan := run.plans.get(step.name)) is not None and plan.will_change for step in PACKAGES if step.changes_driver
    )


def _execute(session: Session, runs: Sequence[HostRun], steps: Sequence[NodeStep], request: BootstrapRequest) -> None:
    names = [step.name for step in steps]
    plans: dict[Host, list[PlannedOp]] = {}
    for run in runs:
        ops = []
        for name in names:
            plan = run.plans.get(name)
            if plan is None or not plan.will_change:
                continue
            ops.append(PlannedOp(name, converge, (plan.commands, plan.unchanged)))
        if ops:
            plans[run.host] = ops
    by_host = {run.host: run for run in runs}

    def on_outcome(host: Host, outcome: OpOutcome) -> None:
        run = by_host[host]
        plan = run.plans[outcome.step]
        if outcome.succeeded:
            # The notes again: what the step found while it ran (containerd_apply) is among them.
            run.report.record(outcome.step, "changed", _detail(plan), tuple(plan.notes))
            _say(request, f"[{run.report.host}] {outcome.step}: changed")
        else:
            run.report.record(outcome.step, "failed", "failed: " + _detail(plan, outcome.output), tuple(plan.notes))
            _say(request, f"[{run.report.host}] {outcome.step}: FAILED")

    session.run(plans, on_outcome)
    for run in runs:
        # A step after a failed one never ran: say so instead of claiming a change.
        failed_at = next((i for i, n in enumerate(names) if (s := run.report.step(n)) and s.status == "failed"), None)
        if failed_at is not None:
            for later in names[failed_at + 1 :]:
                step = run.report.step(later)
                if step is not None and step.status == "changed":
                    run.report.record(later, "skipped", "not run: an earlier step failed on this host")


@dataclass
class BootstrapResult:
    reports: list[HostReport]
    # Every change per host with its file diffs: what --dry-run shows after the summary.
    plan: str
    # By host: the nodes the cluster steps worked on (a rollout verifies no-change hosts with them).
    targets: dict[str, NodeTarget] = field(default_factory=dict)


def run_bootstrap(inventory: Inventory, request: BootstrapRequest) -> BootstrapResult:
    session = Session(inventory, parallel=request.parallel)
    runs = [HostRun(host, HostReport(host.name)) for host in session.hosts]
    try:
        reports = _run(session, runs, request)
        targets = {run.report.host: run.target for run in runs if run.target is not None}
        return BootstrapResult(reports, plan_text(runs), targets)
    finally:
        for run in runs:
            if run.lock is not None:
                try:
                    run.lock.release()
                except Exception:
                    pass
        session.disconnect()


def check_cluster(access: KubeAccess) -> None:
    """Reach the cluster before any host is touched: a bootstrap that could not finish its
    cluster half should not have changed the hosts first."""
    try:
        Kubectl(access).get("runtimeclass", "nvidia")
    except GpunodeError as exc:
        fix = (exc.fix.rstrip(".") + "; or " if exc.fix else "") + "pass --skip-cluster to set up the nodes alone"
        raise CouldNotCheck(exc.problem.rstrip(".") + ". Nothing was changed on the hosts.", fix=fix) from None


def _run(session: Session, runs: list[HostRun], request: BootstrapRequest) -> list[HostReport]:
    unreachable: GpunodeError | None = None
    if request.cluster is not None:
        try:
            check_cluster(request.cluster.access)
        except GpunodeError as exc:
            if not request.dry_run:
                raise
            # A dry run still shows the node plan; its cluster half says why there is none.
            unreachable = exc
    for run in runs:
        try:
            run.settings = resolve_settings(
                run.host.name,
                run.host.data.dict(),  # type: ignore[no-untyped-call]
                request.overrides,
            )
        except UserError as exc:
            run.report.error = str(exc)
    _say(request, f"connecting to {len(runs)} host(s)")
    for host, error in session.connect().items():
        run = next(r for r in runs if r.host is host)
        if error is not None and run.report.error is None:
            run.report.error = f"could not connect: {error}"
    live = [run for run in runs if run.report.error is None]
    if not request.dry_run:
        for run in live:
            lock = HostLock(run.host, sudo=bool(run.host.data.get("_sudo")))
            try:
                lock.acquire()
                run.lock = lock
            except GpunodeError as exc:
                run.report.error = str(exc)
        live = [run for run in live if run.report.error is None]
    local = _load_local_packages(live)

    _read(session, live)
    live = [run for run in live if run.active]
    for run in live:
        assert run.facts is not None
        run.report.gpu_count = len(run.facts.gpus)
        run.report.node_name = run.facts.node_name
    _plan_phase(live, steps_of("preflight"), request, local)
    _plan_phase(live, PACKAGES, request, local)

    if request.dry_run:
        # Phase 2 is planned from the host as it is now. Where the driver step would install
        # or change the library first, what depends on the library cannot be known yet.
        _plan_phase(live, CONFIG, request, local)
        _cluster(runs, request, unreachable)
        return [run.report for run in runs]

    if request.confirm is not None and any(plan.will_change for run in live for plan in run.plans.values()):
        if not request.confirm(plan_text(live)):
            for run in live:
                run.report.error = "not applied: the plan was not confirmed"
            return [run.report for run in runs]

    _execute(session, live, PACKAGES, request)
    changed = [
        run
        for run in live
        if run.active and any((s := run.report.step(p.name)) is not None and s.status == "changed" for p in PACKAGES)
    ]
    if changed:
        _say(request, f"reading {len(changed)} host(s) again after package changes")
        _read(session, changed)
    live = [run for run in live if run.active]
    _plan_phase(live, CONFIG, request, local)
    _execute(session, live, CONFIG, request)
    _reboot_where_asked(session, runs, request, local)
    _cluster(runs, request)
    return [run.report for run in runs]


# --------------------------------------------------------------------------------------
# --reboot


def _rebootable(run: HostRun) -> bool:
    """Asked to reboot, needs it, and nothing failed that a reboot would not fix."""
    if run.settings is None or not run.settings.reboot or not run.report.reboot_required:
        return False
    if run.report.error is not None:
        return False
    failed = [s.name for s in run.report.steps if s.status == "failed"]
    return all(run.plans.get(name) is not None and run.plans[name].reboot_required for name in failed)


def _reboot_where_asked(
    session: Session,
    runs: Sequence[HostRun],
    request: BootstrapRequest,
    local: Mapping[str, tuple[LocalPackage, ...]],
) -> None:
    """Reboot the hosts that need it (--reboot), wait for them, then redo phase 2 on them.

    pyinfra's server.reboot starts the reboot detached, then reconnects until the host's
    uptime shows it really went down. The host lock went with the old connection and is
    taken again.
    """
    chosen = [run for run in runs if _rebootable(run)]
    if not chosen:
        return
    # Imported here: pyinfra's operations cost a tenth of a second to import, and a run
    # that reboots nothing should not pay for them.
    from pyinfra.operations import server

    plans: dict[Host, list[PlannedOp]] = {}
    for run in chosen:
        if run.host.name == "@local":
            run.report.record(
                "reboot",
                "failed",
                "gpunode cannot reboot the machine it runs on and wait for it. "
                "Fix: reboot this machine yourself, then run gpunode bootstrap again",
            )
            continue
        plans[run.host] = [
            PlannedOp(
                "reboot", server.reboot, kwargs={"delay": 10, "interval": 2, "reboot_timeout": request.reboot_timeout}
            )
        ]
    if not plans:
        return
    _say(request, f"rebooting {len(plans)} host(s) and waiting for them")
    rebooted: list[HostRun] = []
    by_host = {run.host: run for run in chosen}
    outcomes_by_host: dict[Host, list[OpOutcome]] = {}
    waves = list(plans.items())
    size = request.max_parallel_reboots or len(waves)
    for start in range(0, len(waves), size):
        # A wave is back (or given up on) before the next one goes down.
        outcomes_by_host.update(session.run(dict(waves[start : start + size])))
    for host, outcomes in outcomes_by_host.items():
        run = by_host[host]
        outcome = outcomes[-1] if outcomes else None
        if outcome is None or not outcome.succeeded:
            run.report.record(
                "reboot",
                "failed",
                "rebooting failed or the host did not come back: " + (outcome.output if outcome else "no outcome"),
            )
            continue
        run.report.record("reboot", "changed", "rebooted; the host is back")
        _say(request, f"[{run.report.host}] reboot: changed")
        if run.lock is not None:
            run.lock = None  # its connection is gone, and the lock with it
        lock = HostLock(run.host, sudo=bool(run.host.data.get("_sudo")))
        try:
            lock.acquire()
            run.lock = lock
        except GpunodeError as exc:
            run.report.error = f"after the reboot: {exc}"
            continue
        run.report.reboot_required = False
        for config_step in CONFIG:  # planned again from the host as it is after the reboot
            run.plans.pop(config_step.name, None)
            step = run.report.step(config_step.name)
            if step is not None:
                run.report.steps.remove(step)
        rebooted.append(run)
    if not rebooted:
        return
    _read(session, rebooted)
    again = [run for run in rebooted if run.report.error is None]
    _plan_phase(again, CONFIG, request, local)
    _execute(session, again, CONFIG, request)


# --------------------------------------------------------------------------------------
# the cluster half


def _cluster_target(run: HostRun) -> NodeTarget | str:
    """The node as the cluster steps need it, or why it gets no cluster steps."""
    if run.report.error is not None or not run.report.steps:
        return "the node steps did not run"
    if any(s.status == "failed" for s in run.report.steps):
        return "an earlier step failed on this host"
    if run.report.reboot_required:
        return "reboot required first: reboot the host (or pass --reboot), then run again"
    if run.facts is None or run.settings is None or not run.report.driver_version:
        step = run.report.step("nvml-library")
        why = step.detail if step is not None and step.status == "skipped" else "no NVML library was found"
        return f"the driver is not settled yet ({why})"
    return NodeTarget(
        host=run.report.host,
        node=run.facts.node_name,
        driver_version=run.report.driver_version,
        nvml_library=run.report.nvml_library,
        kubelet_root=run.facts.kubelet.root_dir,
        gpu_bus_ids=tuple(gpu.bus_id for gpu in run.facts.gpus),
        plugin_mode=run.settings.plugin_mode,
        plugin_config=run.settings.plugin_config_name,
    )


def _cluster(runs: Sequence[HostRun], request: BootstrapRequest, unreachable: GpunodeError | None = None) -> None:
    if request.cluster is None:
        return
    targets: list[NodeTarget] = []
    by_name: dict[str, HostRun] = {}
    for run in runs:
        if unreachable is not None and run.report.error is None:
            first, *rest = CLUSTER_STEPS
            run.report.record(first, "failed", f"not planned: {unreachable}")
            run.report.unchecked.add(first)
            for name in rest:
                run.report.record(name, "skipped", f"not planned: see {first}")
            continue
        target = _cluster_target(run)
        if isinstance(target, str):
            if run.report.error is None:
                for name in CLUSTER_STEPS:
                    run.report.record(name, "skipped", target)
            continue
        targets.append(target)
        by_name[target.host] = run
        run.target = target
    if not targets:
        return
    _say(request, f"cluster steps for {len(targets)} node(s) with {request.cluster.access.describe()}")
    results = run_cluster_steps(
        Kubectl(request.cluster.access),
        targets,
        request.cluster.settings,
        dry_run=request.dry_run,
        progress=request.progress,
    )
    for host, steps in results.items():
        for step in steps:
            by_name[host].report.record(step.name, step.status, step.detail)


def _read(session: Session, runs: Sequence[HostRun]) -> None:
    settings = {run.host: run.settings for run in runs if run.settings is not None}
    results = session.snapshot(
        [run.host for run in runs],
        containerd_config={h: s.containerd_config for h, s in settings.items()},
        managed_files={h: managed_paths(s) for h, s in settings.items()},
        apt_names={h: apt_names(s) for h, s in settings.items()},
    )
    for run in runs:
        value = results[run.host]
        if isinstance(value, Exception):
            run.report.error = f"could not read the host: {value}"
        else:
            run.facts = value


def plan_text(runs: Sequence[HostRun]) -> str:
    """What a confirmation prompt shows: every change per host, with file diffs."""
    lines: list[str] = []
    for run in runs:
        changes = [(name, plan) for name, plan in run.plans.items() if plan.will_change]
        if not changes:
            continue
        lines.append(f"{run.report.host}:")
        for name, plan in changes:
            lines.append(f"  {name}: {mask_secrets(plan.summary())}")
            if plan.diff:
                lines += ["    " + line for line in mask_secrets(plan.diff).rstrip("\n").splitlines()]
    return "\n".join(lines) + "\n" if lines else ""
