"""The node steps of a bootstrap, in the order they run: one module per step, one registry.

Adding a step: a module here with a planner `(NodeFacts, NodeSettings) -> StepPlan` and a
`STEP = NodeStep(name, phase, planner, ...)`, one line in NODE_STEPS below, and a directory
of cases in tests/unit/steps/ (docs/architecture.md).
"""

from __future__ import annotations

from gpunode.bootstrap.core.settings import NodeSettings
from gpunode.bootstrap.node.steps import (
    container_runtime,
    containerd,
    driver,
    nouveau,
    nvml_library,
    plugin_service,
    preflight,
    state,
    toolkit,
)
from gpunode.bootstrap.node.steps.base import NodeFacts, NodeStep, Phase, StepPlan, UploadFiles, WriteFiles

NODE_STEPS: tuple[NodeStep, ...] = (
    preflight.STEP,
    container_runtime.STEP,
    driver.STEP,
    nouveau.STEP,
    toolkit.STEP,
    containerd.STEP,
    nvml_library.STEP,
    plugin_service.STEP,
    state.STEP,
)


def steps_of(phase: Phase) -> tuple[NodeStep, ...]:
    return tuple(step for step in NODE_STEPS if step.phase == phase)


def step_named(name: str) -> NodeStep:
    return next(step for step in NODE_STEPS if step.name == name)


def managed_paths(settings: NodeSettings) -> tuple[str, ...]:
    """Files the snapshot reads back so that steps can compare before writing."""
    paths: list[str] = []
    for step in NODE_STEPS:
        paths += [path for path in step.managed_paths(settings) if path not in paths]
    return tuple(paths)


def apt_names(settings: NodeSettings) -> tuple[str, ...]:
    """Packages the steps may install, whose apt candidates the snapshot reads."""
    names: list[str] = []
    for step in NODE_STEPS:
        names += [name for name in step.apt_names(settings) if name not in names]
    return tuple(names)


__all__ = [
    "apt_names",
    "NODE_STEPS",
    "NodeFacts",
    "NodeStep",
    "StepPlan",
    "UploadFiles",
    "WriteFiles",
    "managed_paths",
    "step_named",
    "steps_of",
]
