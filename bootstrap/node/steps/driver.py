"""Step driver: the distribution's driver packages for the chosen branch, pinned."""

from __future__ import annotations

from gpunode.bootstrap.core.host.facts import HostFacts
from gpunode.bootstrap.core.packages.apt_sources import GPUNODE_NONFREE_SOURCES, plan_apt_components
from gpunode.bootstrap.core.packages.common import FileSpec, apt_update_command, upstream_version
from gpunode.bootstrap.core.packages.driver import DRIVER_PIN_PATH, DriverRequest, plan_driver
from gpunode.bootstrap.core.settings import NodeSettings
from gpunode.bootstrap.errors import GpunodeError
from gpunode.bootstrap.node.steps.base import (
    NodeFacts,
    NodeStep,
    PinInstalledDriver,
    StepPlan,
    changed_files,
    file_diff,
    write_files,
)


def effective_driver_version(facts: HostFacts, settings: NodeSettings) -> str | None:
    """The version to hold: the one asked for, else the one installed (so it stays put)."""
    if settings.driver_version:
        return settings.driver_version
    current = facts.packages.get("libnvidia-ml1") or facts.packages.get("nvidia-driver-cuda")
    if current and (
        settings.driver_branch is None or upstream_version(current).startswith(settings.driver_branch + ".")
    ):
        return current
    return None


def plan_driver_step(node: NodeFacts, settings: NodeSettings) -> StepPlan:
    facts = node.host
    plan = StepPlan("driver")
    request = DriverRequest(
        branch=settings.driver_branch,
        version=effective_driver_version(facts, settings),
        kernel_module=settings.kernel_module,
        flavour=settings.driver_flavour,
    )
    try:
        driver = plan_driver(facts.os, facts.arch, request, facts.kernel_release, facts.packages)
    except GpunodeError as exc:
        plan.failed = str(exc)
        return plan
    plan.notes += list(driver.notes)
    files: list[FileSpec | None] = []
    if facts.os.family == "debian" and driver.components:
        files.append(plan_apt_components(facts.apt_sources, facts.os, driver.components))
    if driver.repo is not None:
        files += list(driver.repo.files)
    files.append(driver.pin)
    to_write = changed_files(facts, files)
    repo_missing = (
        driver.repo is not None
        and driver.repo.keyring_path is not None
        and facts.managed_file(driver.repo.keyring_path) is None
    )
    if repo_missing and driver.repo is not None and driver.repo.setup_command:
        plan.commands.append(f"{driver.repo.check_command} || {driver.repo.setup_command}")
        plan.changes.append(f"add the {driver.repo.name} repository and its verified key")
    for spec in to_write:
        plan.changes.append(f"write {spec.path}")
        plan.diff += file_diff(spec.path, facts.managed_file(spec.path), spec.content)
    plan.commands += write_files(node, "driver", to_write)
    if driver.install_command is not None:
        if facts.package_manager == "dpkg":
            plan.commands.append(apt_update_command())
        plan.commands += list(driver.pre_install_commands)
        plan.commands.append(driver.install_command)
        plan.commands += list(driver.post_install_commands)
        plan.changes.append("install " + ", ".join(spec.apt_arg() for spec in driver.to_install))
        if request.version is None and facts.os.id == "debian" and driver.pin is not None:
            # Only the branch is known now; hold the release apt installs, as the next run would.
            plan.commands.append(
                PinInstalledDriver(
                    os=facts.os,
                    arch=facts.arch,
                    request=request,
                    kernel_release=facts.kernel_release,
                    version_package="libnvidia-ml1",
                    backup=node.backup_dir("driver-pin"),
                    messages=plan.notes,
                )
            )
            plan.changes.append(
                f"then hold the driver at the release installed (pinned to {driver.branch}.* until then)"
            )
    installed = [f"{spec.name} {facts.packages[spec.name]}" for spec in driver.packages if spec.name in facts.packages]
    plan.unchanged = (f"branch {driver.branch}: " + ", ".join(installed)) if installed else f"branch {driver.branch}"
    if driver.pin is not None:
        plan.unchanged += " (pinned)"
    return plan


STEP = NodeStep(
    "driver",
    "packages",
    plan_driver_step,
    managed_paths=lambda settings: (DRIVER_PIN_PATH, GPUNODE_NONFREE_SOURCES),
    changes_driver=True,
)
