"""Step state: the record of what this run set up (/var/lib/gpunode/state.json).

verify, doctor and the next run read it (core.host.record).
"""

from __future__ import annotations

from gpunode.bootstrap.core.host.record import STATE_PATH, HostRecord
from gpunode.bootstrap.core.packages.common import FileSpec
from gpunode.bootstrap.core.settings import NodeSettings
from gpunode.bootstrap.node.steps.base import NodeFacts, NodeStep, StepPlan, file_diff, write_files
from gpunode.bootstrap.node.steps.containerd import runtime_settings


def containerd_files(node: NodeFacts, settings: NodeSettings) -> tuple[str, ...]:
    """The containerd files this host's run manages: config.toml and, unless in place, the drop-in.

    None on k3s (k3s writes its own config; gpunode only restarts it) or without containerd.
    """
    facts = node.host
    if facts.is_k3s or (facts.containerd.binary is None and not settings.install_containerd):
        return ()
    config = facts.containerd.config_path or settings.containerd_config
    if settings.containerd_in_place:
        return (config,)
    return (config, runtime_settings(settings).dropin_path)


def host_record(node: NodeFacts, settings: NodeSettings) -> HostRecord:
    facts = node.host
    library = node.library
    return HostRecord(
        gpunode_version=node.gpunode_version,
        node_name=facts.node_name,
        gpu_count=len(facts.gpus),
        gpus=tuple(f"{gpu.bus_id} {gpu.name}" for gpu in facts.gpus),
        driver_version=library.version if library else None,
        driver_packages={
            k: v
            for k, v in sorted(facts.packages.items())
            if k.startswith(("libnvidia", "nvidia-", "libcuda"))
            and not k.startswith(("nvidia-container", "libnvidia-container"))
        },
        kernel_module=settings.kernel_module,
        nvml_library=library.path if library else None,
        toolkit_version=facts.packages.get("nvidia-container-toolkit"),
        containerd_files=containerd_files(node, settings),
        runtime_path=settings.runtime_path,
        plugin_mode=settings.plugin_mode,
    )


def plan_state_step(node: NodeFacts, settings: NodeSettings) -> StepPlan:
    plan = StepPlan("state")
    text = host_record(node, settings).to_json()
    current = node.host.managed_file(STATE_PATH)
    if current == text:
        plan.unchanged = f"{STATE_PATH} up to date"
        return plan
    plan.commands += write_files(node, "state", [FileSpec(STATE_PATH, text, 0o644)])
    plan.changes.append(f"record {STATE_PATH}")
    plan.diff = file_diff(STATE_PATH, current, text)
    return plan


STEP = NodeStep(
    "state", "config", plan_state_step, managed_paths=lambda settings: (STATE_PATH,), needs_settled_driver=True
)
