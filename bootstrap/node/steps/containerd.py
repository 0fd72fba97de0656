"""Step containerd: the `nvidia` runtime in the host's real config, safely.

The core merge decides the new file(s); the plan's RuntimeChange writes, validates and
restarts at execute time (node.containerd_apply). On k3s, k3s writes the runtime itself
when it starts and finds the toolkit, so the step only restarts it.
"""

from __future__ import annotations

from gpunode.bootstrap.core.containerd.effective import runtime_problems
from gpunode.bootstrap.core.containerd.plan import (
    DEFAULT_DROPIN_PATH,
    MergePlan,
    RuntimeSettings,
    plan_runtime_merge,
)
from gpunode.bootstrap.core.settings import NodeSettings
from gpunode.bootstrap.errors import GpunodeError
from gpunode.bootstrap.node.remote_files import FileWrite
from gpunode.bootstrap.node.steps.base import NodeFacts, NodeStep, RuntimeChange, StepPlan

K3S_CONFIG = "/var/lib/rancher/k3s/agent/etc/containerd/config.toml"


def containerd_managed_paths(settings: NodeSettings) -> tuple[str, ...]:
    return (DEFAULT_DROPIN_PATH, K3S_CONFIG)


def runtime_settings(settings: NodeSettings) -> RuntimeSettings:
    return RuntimeSettings(
        binary_name=settings.runtime_path,
        set_default_runtime=settings.set_default_runtime,
        in_place=settings.containerd_in_place,
    )


def plan_containerd_step(node: NodeFacts, settings: NodeSettings) -> StepPlan:
    facts = node.host
    plan = StepPlan("containerd")
    wanted = runtime_settings(settings)
    if facts.is_k3s:
        return _plan_k3s(node, wanted, plan)
    containerd = facts.containerd
    for path in (containerd.config_path, wanted.dropin_path):
        problem = facts.not_a_file(path)
        if problem is not None:
            plan.failed = problem + ". Nothing was written"
            return plan
    if containerd.binary is None and settings.install_containerd:
        # A dry run: the container-runtime step installs it first; a run plans this step
        # from the host as it is afterwards.
        plan.changes.append(
            f'add runtime "{wanted.runtime_name}" -> {wanted.binary_name} to the config the '
            "container-runtime step writes (the files are planned once containerd is installed)"
        )
        return plan
    if containerd.binary is None or containerd.version_text is None:
        plan.failed = (
            "containerd is not installed on this host; gpunode configures the containerd "
            "your kubelet uses. Fix: install containerd (Debian: apt-get install "
            "containerd) and set up the kubelet, then run gpunode again"
        )
        return plan
    if containerd.dump_error is not None:
        plan.failed = (
            f"containerd cannot load its current configuration, so gpunode leaves it "
            f"untouched: {containerd.dump_error.strip().splitlines()[-1]}. Fix: repair "
            f"{containerd.config_path} (`containerd config dump` must succeed), then run "
            "gpunode again"
        )
        return plan
    try:
        merge = plan_runtime_merge(
            containerd.config_text,
            containerd_version=containerd.version_text,
            settings=wanted,
            config_path=containerd.config_path,
            dropin_text=facts.managed_file(wanted.dropin_path),
        )
    except GpunodeError as exc:
        plan.failed = str(exc) + " Nothing was written."
        return plan
    plan.notes += list(merge.notes)
    where = " and ".join(change.path for change in merge.files) or containerd.config_path
    plan.unchanged = f'runtime "{wanted.runtime_name}" -> {wanted.binary_name} in {where}'
    if not merge.changed:
        problems = (
            runtime_problems(containerd.dump_text or "", binary_name=wanted.binary_name) if containerd.dump_text else ()
        )
        if problems:
            plan.failed = (
                "the files already say what gpunode would write, but containerd's "
                "effective config disagrees: "
                + " ".join(problems)
                + " Fix: look for another file in `imports` that overrides the runtime"
            )
        return plan
    # A drop-in carries tables taken from config.toml (containerd 1.x replaces a plugin table
    # from an import wholesale, registry credentials included): it is no more readable than
    # config.toml. config.toml itself keeps its own mode and owner (remote_files).
    writes = tuple(
        FileWrite(
            change.path,
            change.new_text,
            mode_from=None if change.path == containerd.config_path else containerd.config_path,
        )
        for change in merge.files
        if change.changed
    )
    plan.diff = merge.diff
    plan.changes.append(
        f'add runtime "{wanted.runtime_name}" -> {wanted.binary_name}: write ' + ", ".join(w.path for w in writes)
    )
    plan.commands.append(
        RuntimeChange(
            writes=writes,
            backup=node.backup_dir("containerd"),
            config_path=containerd.config_path,
            runtime_name=wanted.runtime_name,
            binary_name=wanted.binary_name,
            old_dump=containerd.dump_text,
            restart_command=settings.containerd_restart_command,
            has_systemd=facts.has_systemd,
            messages=plan.notes,
        )
    )
    return plan


def _plan_k3s(node: NodeFacts, wanted: RuntimeSettings, plan: StepPlan) -> StepPlan:
    facts = node.host
    generated = facts.managed_file(K3S_CONFIG)
    try:
        merge: MergePlan = plan_runtime_merge(
            generated,
            containerd_version=facts.containerd.version_text or "1.7.0",
            settings=wanted,
            config_path=K3S_CONFIG,
            k3s=True,
        )
    except GpunodeError as exc:
        plan.failed = str(exc) + " Nothing was written."
        return plan
    plan.notes += list(merge.notes)
    has_runtime = generated is not None and f"runtimes.{wanted.runtime_name}]" in generated.replace('"', "")
    if has_runtime:
        plan.unchanged = f'k3s generated the runtime "{wanted.runtime_name}" itself ({K3S_CONFIG})'
        return plan
    service = "k3s" if facts.k3s_binary and any("server" in arg for arg in facts.kubelet.args) else "k3s-agent"
    if facts.has_systemd:
        plan.commands.append(f"systemctl restart {service} || systemctl restart k3s")
        plan.changes.append(
            f"restart {service}: k3s adds the nvidia runtime itself when it finds nvidia-container-runtime at start"
        )
    else:
        plan.skipped = (
            "k3s adds the nvidia runtime itself at its next start; no systemd here to restart it. Fix: restart k3s"
        )
    return plan


STEP = NodeStep("containerd", "config", plan_containerd_step, managed_paths=containerd_managed_paths)
