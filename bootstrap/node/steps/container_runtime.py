"""Step container-runtime: a bare host gets the distribution's containerd (--install-containerd).

Without the flag this step only says what runtime the host has (preflight has refused a
host with none). With it, a host without containerd gets Debian's or Ubuntu's package and
kubeadm's config (`containerd config default`, SystemdCgroup matching the init system);
a host that has containerd is left alone.
"""

from __future__ import annotations

from gpunode.bootstrap.core.packages.common import apt_install_command, apt_update_command
from gpunode.bootstrap.core.settings import NodeSettings
from gpunode.bootstrap.node.steps.base import InstallContainerd, NodeFacts, NodeStep, StepPlan


def plan_container_runtime(node: NodeFacts, settings: NodeSettings) -> StepPlan:
    facts = node.host
    plan = StepPlan("container-runtime")
    if facts.is_k3s:
        plan.unchanged = "k3s brings its own containerd"
        return plan
    if facts.containerd.binary is not None:
        plan.unchanged = f"containerd present ({facts.containerd.binary})"
        return plan
    if not settings.install_containerd:
        plan.skipped = "no containerd and no --install-containerd (preflight says what to do)"
        return plan
    if facts.os.family != "debian" or facts.package_manager != "dpkg":
        plan.failed = (
            f"gpunode installs containerd from the distribution on Debian and Ubuntu only, not on "
            f"{facts.os.describe()}. Fix: install containerd (RHEL family: containerd.io from Docker's "
            "repository), then run gpunode again without --install-containerd"
        )
        return plan
    cgroup = (
        "SystemdCgroup = true: systemd is the init system" if facts.has_systemd else "SystemdCgroup = false: no systemd"
    )
    plan.changes.append(
        f"install containerd (the distribution's package) and write {settings.containerd_config} "
        f"from `containerd config default` ({cgroup})"
    )
    plan.commands.append(
        InstallContainerd(
            install_commands=(apt_update_command(), apt_install_command(["containerd"], allow_downgrades=False)),
            config_path=settings.containerd_config,
            backup=node.backup_dir("container-runtime"),
            has_systemd=facts.has_systemd,
            restart_command=settings.containerd_restart_command,
            messages=plan.notes,
        )
    )
    return plan


STEP = NodeStep("container-runtime", "packages", plan_container_runtime)
