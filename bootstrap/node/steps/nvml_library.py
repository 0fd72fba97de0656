"""Step nvml-library: resolve the real libnvidia-ml.so.<version>; nothing is written, only decided.

The plan carries the library it chose (StepPlan.library): the plugin-service and state
steps, and the cluster steps' DaemonSet, use it from here on.
"""

from __future__ import annotations

from gpunode.bootstrap.core.host.record import STATE_PATH, parse_record
from gpunode.bootstrap.core.nvml.library import LibraryProblem, choose_nvml_library
from gpunode.bootstrap.core.settings import NodeSettings
from gpunode.bootstrap.node.steps.base import NodeFacts, NodeStep, StepPlan


def plan_library_step(node: NodeFacts, settings: NodeSettings) -> StepPlan:
    facts = node.host
    plan = StepPlan("nvml-library")
    try:
        library = choose_nvml_library(facts.nvml)
    except LibraryProblem as exc:
        plan.failed = str(exc)
        if exc.evidence:
            plan.failed += " Evidence: " + "; ".join(exc.evidence)
        plan.reboot_required = exc.reboot_required
        return plan
    plan.library = library
    plan.notes += list(library.notes)
    description = f"{library.path} (driver {library.version})"
    if facts.module_version is None:
        if settings.kernel_module == "none":
            plan.notes.append(
                "no nvidia kernel module is loaded; in kernel module mode none whoever "
                "manages the module must load it before pods can use the GPUs"
            )
        else:
            plan.reboot_required = True
            plan.notes.append(
                "no nvidia kernel module is loaded yet: reboot (or `modprobe nvidia`) to load the one just installed"
            )
    recorded = parse_record(facts.managed_file(STATE_PATH))
    if recorded is not None and recorded.nvml_library and recorded.nvml_library != library.path:
        plan.changes.append(f"library moved from {recorded.nvml_library} to {description}")
    plan.unchanged = description
    return plan


STEP = NodeStep("nvml-library", "config", plan_library_step, needs_settled_driver=True)
