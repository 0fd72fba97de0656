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
from gpunode.bootstrap.core.host.record import STATE_PATH, HostRecord, parse_record
from gpunode.bootstrap.core.kube.cluster_plan import ClusterSettings, NodeTarget
from gpunode.bootstrap.core.packages.apt_sources import GPUNODE_NONFREE_SOURCES
from gpunode.bootstrap.core.packages.driver import DRIVER_PIN_PATH
from gpunode.bootstrap.core.packages.toolkit import (
    TOOLKIT_APT_KEYRING,
    TOOLKIT_APT_LIST,
    TOOLKIT_PIN_PATH,
    LocalPackage,
)
from gpunode.bootstrap.core.report import HostReport
from gpunode.bootstrap.core.settings import NodeSettings, resolve_settings
from gpunode.bootstrap.errors import GpunodeError, UserError
from gpunode.bootstrap.node.containerd_step import containerd_managed_paths, plan_containerd_step
from gpunode.bootstrap.node.host_lock import HostLock
from gpunode.bootstrap.node.local_packages import read_local_packages
from gpunode.bootstrap.node.operations import converge
from gpunode.bootstrap.node.plugin_service import plan_plugin_service_step, plugin_service_paths
from gpunode.bootstrap.node.steps import (
    NOUVEAU_BLACKLIST,
    StepPlan,
    plan_driver_step,
    plan_library_step,
    plan_nouveau_step,
    plan_preflight,
    plan_state_step,
    plan_toolkit_step,
)
from gpunode.bootstrap.orchestration.session import OpOutcome, PlannedOp, Session

PHASE_ONE = ("driver", "nouveau", "toolkit")
PHASE_TWO = ("containerd", "nvml-library", "plugin-service", "state")


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
    library_version: str | None = None

    @property
    def active(self) -> bool:
        return self.report.error is None and all(s.status != "failed" for s in self.report.steps)


def managed_paths(settings: NodeSettings) -> tuple[str, ...]:
    """Files the snapshot reads back so that steps can compare before writing."""
    return (
        STATE_PATH,
        NOUVEAU_BLACKLIST,
        DRIVER_PIN_PATH,
        GPUNODE_NONFREE_SOURCES,
        TOOLKIT_PIN_PATH,
        TOOLKIT_APT_LIST,
        TOOLKIT_APT_KEYRING,
        *containerd_managed_paths(settings),
        *plugin_service_paths(settings),
    )


def _say(request: BootstrapRequest, text: str) -> None:
    if request.progress is not None:
        request.progress(text)


def _load_local_packages(runs: Sequence[HostRun]) -> dict[str, list[LocalPackage]]:
    """Read each distinct --toolkit-packages directory once, on the operator's machine."""
    loaded: dict[str, list[LocalPackage]] = {}
    for run in runs:
        directory = run.settings.toolkit_packages if run.settings else None
        if directory and directory not in loaded:
            path = Path(directory).expanduser()
            if not path.is_dir():
                raise UserError(
                    f"--toolkit-packages {directory} is not a directory.",
                    fix="give the directory that holds the toolkit's .deb or .rpm files",
                )
            loaded[directory] = read_local_packages(path)
    return loaded


def _record(run: HostRun, plan: StepPlan, request: BootstrapRequest) -> None:
    if plan.failed is not None:
        status = "failed"
    elif plan.skipped is not None:
        status = "skipped"
    elif plan.will_change or plan.changes:
        # A step without commands can still change something: what it decided (the library
        # moved), which the state step then records.
        status = "changed"
    else:
        status = "unchanged"
    run.report.record(plan.name, status, _detail(plan))  # type: ignore[arg-type]
    run.report.reboot_required |= plan.reboot_required
    if status == "changed":
        # Planned, not done: the line that says "changed" comes when the commands have run.
        shown = "would change" if request.dry_run else "will change"
    else:
        shown = status
    _say(request, f"[{run.report.host}] {plan.name}: {shown}")


def _detail(plan: StepPlan, output: str = "") -> str:
    text = plan.summary()
    if output:
        text += f"\n{output.strip()}"
    if plan.notes:
        text += "\n" + "\n".join(f"note: {note}" for note in plan.notes)
    return text


def _plan_phase(
    runs: Sequence[HostRun],
    names: Sequence[str],
    planner: Callable[[HostRun, str], StepPlan],
    request: BootstrapRequest,
) -> None:
    for run in runs:
        for name in names:
            if not run.active:
                run.report.record(name, "skipped", "an earlier step failed on this host")
                continue
            plan = planner(run, name)
            run.plans[name] = plan
            _record(run, plan, request)


def _execute(session: Session, runs: Sequence[HostRun], names: Sequence[str], request: BootstrapRequest) -> None:
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
            run.report.record(outcome.step, "changed", _detail(plan))
            _say(request, f"[{run.report.host}] {outcome.step}: changed")
        else:
            run.report.record(outcome.step, "failed", "failed: " + _detail(plan, outcome.output))
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


def _phase_one_planner(local: Mapping[str, list[LocalPackage]]) -> Callable[[HostRun, str], StepPlan]:
    def planner(run: HostRun, name: str) -> StepPlan:
        assert run.facts is not None and run.settings is not None
        if name == "driver":
            return plan_driver_step(run.facts, run.settings)
        if name == "nouveau":
            return plan_nouveau_step(run.facts, run.settings)
        packages = local.get(run.settings.toolkit_packages) if run.settings.toolkit_packages else None
        return plan_toolkit_step(run.facts, run.settings, packages)

    return planner


def _phase_two_planner(run: HostRun, name: str) -> StepPlan:
    assert run.facts is not None and run.settings is not None
    facts, settings = run.facts, run.settings
    recorded = parse_record(facts.managed_file(STATE_PATH))
    if name == "containerd":
        return plan_containerd_step(facts, settings)
    if name == "nvml-library":
        outcome = plan_library_step(facts, settings, recorded)
        if outcome.library is not None:
            run.report.nvml_library = outcome.library.path
            run.report.driver_version = outcome.library.version
            run.library_version = outcome.library.version
        return outcome.plan
    if name == "plugin-service":
        return plan_plugin_service_step(facts, settings, run.report.driver_version, recorded)
    record = HostRecord(
        gpunode_version=version("gpunode"),
        node_name=facts.node_name,
        gpu_count=len(facts.gpus),
        gpus=tuple(f"{gpu.bus_id} {gpu.name}" for gpu in facts.gpus),
        driver_version=run.report.driver_version,
        driver_packages={
            k: v
            for k, v in sorted(facts.packages.items())
            if k.startswith(("libnvidia", "nvidia-", "libcuda"))
            and not k.startswith(("nvidia-container", "libnvidia-container"))
        },
        kernel_module=settings.kernel_module,
        nvml_library=run.report.nvml_library,
        toolkit_version=facts.packages.get("nvidia-container-toolkit"),
        containerd_files=tuple(containerd_managed_paths(settings)),
        runtime_path=settings.runtime_path,
        plugin_mode=settings.plugin_mode,
    )
    return plan_state_step(facts, record)


@dataclass
class BootstrapResult:
    reports: list[HostReport]
    # Every change per host with its file diffs: what --dry-run shows after the summary.
    plan: str


def _dry_run_phase_two_planner(run: HostRun, name: str) -> StepPlan:
    driver = run.plans.get("driver")
    if driver is not None and driver.will_change and name in ("nvml-library", "state"):
        plan = StepPlan(name)
        plan.skipped = "decided after the driver step has installed the driver (it would change first)"
        return plan
    return _phase_two_planner(run, name)


def run_bootstrap(inventory: Inventory, request: BootstrapRequest) -> BootstrapResult:
    session = Session(inventory, parallel=request.parallel)
    runs = [HostRun(host, HostReport(host.name)) for host in session.hosts]
    try:
        reports = _run(session, runs, request)
        return BootstrapResult(reports, plan_text(runs))
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
        exc.problem += " Nothing was changed on the hosts."
        exc.fix = (exc.fix + "; " if exc.fix else "") + "or pass --skip-cluster to set up the nodes alone"
        raise


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
        assert run.facts is not None and run.settings is not None
        run.report.gpu_count = len(run.facts.gpus)
        run.report.node_name = run.facts.node_name
        preflight = plan_preflight(run.facts, run.settings)
        run.plans["preflight"] = preflight
        _record(run, preflight, request)
    _plan_phase(live, PHASE_ONE, _phase_one_planner(local), request)

    if request.dry_run:
        # Phase 2 is planned from the host as it is now. Where the driver step would install
        # or change the library first, what depends on the library cannot be known yet.
        _plan_phase(live, PHASE_TWO, _dry_run_phase_two_planner, request)
        _cluster(runs, request, unreachable)
        return [run.report for run in runs]

    if request.confirm is not None and any(plan.will_change for run in live for plan in run.plans.values()):
        if not request.confirm(plan_text(live)):
            for run in live:
                run.report.error = "not applied: the plan was not confirmed"
            return [run.report for run in runs]

    _execute(session, live, PHASE_ONE, request)
    changed = [
        run
        for run in live
        if run.active and any((s := run.report.step(n)) is not None and s.status == "changed" for n in PHASE_ONE)
    ]
    if changed:
        _say(request, f"reading {len(changed)} host(s) again after package changes")
        _read(session, changed)
    live = [run for run in live if run.active]
    _plan_phase(live, PHASE_TWO, _phase_two_planner, request)
    _execute(session, live, PHASE_TWO, request)
    _reboot_where_asked(session, runs, request)
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


def _reboot_where_asked(session: Session, runs: Sequence[HostRun], request: BootstrapRequest) -> None:
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
        for name in PHASE_TWO:  # planned again from the host as it is after the reboot
            run.plans.pop(name, None)
            step = run.report.step(name)
            if step is not None:
                run.report.steps.remove(step)
        rebooted.append(run)
    if not rebooted:
        return
    _read(session, rebooted)
    again = [run for run in rebooted if run.report.error is None]
    _plan_phase(again, PHASE_TWO, _phase_two_planner, request)
    _execute(session, again, PHASE_TWO, request)


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
            lines.append(f"  {name}: {plan.summary()}")
            if plan.diff:
                lines += ["    " + line for line in plan.diff.rstrip("\n").splitlines()]
    return "\n".join(lines) + "\n" if lines else ""
