"""Step nouveau: nouveau blacklisted so that the nvidia module can claim the GPUs."""

from __future__ import annotations

from gpunode.bootstrap.core.packages.common import FileSpec
from gpunode.bootstrap.core.settings import NodeSettings
from gpunode.bootstrap.node.steps.base import NodeFacts, NodeStep, StepPlan, file_diff, write_files

NOUVEAU_BLACKLIST = "/etc/modprobe.d/gpunode-blacklist-nouveau.conf"
NOUVEAU_BLACKLIST_TEXT = (
    "# Written by gpunode: nouveau must not claim NVIDIA GPUs, or the nvidia module cannot load.\n"
    "blacklist nouveau\n"
    "options nouveau modeset=0\n"
)


def plan_nouveau_step(node: NodeFacts, settings: NodeSettings) -> StepPlan:
    facts = node.host
    plan = StepPlan("nouveau")
    loaded = "nouveau" in facts.loaded_modules
    if settings.kernel_module == "none":
        if loaded:
            plan.failed = (
                "nouveau is loaded, so no nvidia module can drive the GPUs (kernel module "
                "mode none: gpunode leaves module configuration to you). Fix: blacklist "
                "nouveau, rebuild the initramfs and reboot"
            )
        else:
            plan.skipped = "kernel module mode none: module configuration is managed elsewhere"
        return plan
    others = [path for path in facts.nouveau_blacklisted_by if path != NOUVEAU_BLACKLIST]
    current = facts.managed_file(NOUVEAU_BLACKLIST)
    if others and current is None:
        plan.unchanged = f"already blacklisted by {', '.join(others)}"
    elif current == NOUVEAU_BLACKLIST_TEXT:
        plan.unchanged = f"blacklisted in {NOUVEAU_BLACKLIST}"
    else:
        plan.commands += write_files(node, "nouveau", [FileSpec(NOUVEAU_BLACKLIST, NOUVEAU_BLACKLIST_TEXT)])
        plan.changes.append(f"write {NOUVEAU_BLACKLIST}")
        plan.diff += file_diff(NOUVEAU_BLACKLIST, current, NOUVEAU_BLACKLIST_TEXT)
        if "update-initramfs" in facts.initramfs_tools:
            plan.commands.append("update-initramfs -u")
            plan.changes.append("rebuild the initramfs")
        elif "dracut" in facts.initramfs_tools:
            plan.commands.append("dracut -f")
            plan.changes.append("rebuild the initramfs")
        else:
            plan.notes.append("no initramfs tool on this host (update-initramfs, dracut): nothing to rebuild")
    if loaded:
        plan.reboot_required = True
        plan.notes.append("nouveau is loaded now: reboot for the blacklist to take effect")
    return plan


STEP = NodeStep("nouveau", "packages", plan_nouveau_step, managed_paths=lambda settings: (NOUVEAU_BLACKLIST,))
