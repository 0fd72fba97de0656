"""Which hosts bootstrap reboots (--reboot) and which get the cluster steps, and why not.

The reboot itself (pyinfra's server.reboot, then the wait for the host) cannot run here:
the test hosts' PID 1 is sshd and they cannot reboot. What is decided before it is pinned
down here.
"""

from __future__ import annotations

from typing import Any

from gpunode.bootstrap.core.report import HostReport
from gpunode.bootstrap.core.settings import NodeSettings
from gpunode.bootstrap.node.steps import StepPlan
from gpunode.bootstrap.orchestration.bootstrap import HostRun, _cluster_target, _rebootable


def host_run(*, reboot: bool, required: bool, failed: dict[str, bool] | None = None) -> HostRun:
    """`failed`: step name -> whether a reboot would fix that step's failure."""
    report = HostReport("gpu01")
    report.reboot_required = required
    report.record("driver", "changed", "install libnvidia-ml1 535.309.01-1")
    plans: dict[str, StepPlan] = {}
    for name, reboot_fixes in (failed or {}).items():
        plan = StepPlan(name, failed="[F14] Driver/library version mismatch", reboot_required=reboot_fixes)
        plans[name] = plan
        report.record(name, "failed", plan.failed or "")
    run = HostRun(host=None, report=report, settings=NodeSettings(reboot=reboot), plans=plans)  # type: ignore[arg-type]
    return run


def test_reboot_only_when_asked_needed_and_it_fixes_every_failure() -> None:
    assert _rebootable(host_run(reboot=True, required=True, failed={"nvml-library": True}))
    assert _rebootable(host_run(reboot=True, required=True))  # e.g. nouveau still loaded
    assert not _rebootable(host_run(reboot=False, required=True, failed={"nvml-library": True}))
    assert not _rebootable(host_run(reboot=True, required=False))
    assert not _rebootable(host_run(reboot=True, required=True, failed={"nvml-library": True, "containerd": False}))
    unreachable = host_run(reboot=True, required=True)
    unreachable.report.error = "could not connect"
    assert not _rebootable(unreachable)


def reason(run: HostRun) -> Any:
    return _cluster_target(run)


def test_the_cluster_steps_wait_for_a_host_that_is_ready_for_them() -> None:
    assert (
        reason(host_run(reboot=False, required=True, failed={"nvml-library": True}))
        == "an earlier step failed on this host"
    )
    assert reason(host_run(reboot=False, required=True)).startswith("reboot required first")
    unsettled = host_run(reboot=False, required=False)
    assert reason(unsettled).startswith("the driver is not settled yet")
    never = HostRun(host=None, report=HostReport("gpu02"))  # type: ignore[arg-type]
    never.report.error = "could not connect"
    assert reason(never) == "the node steps did not run"
