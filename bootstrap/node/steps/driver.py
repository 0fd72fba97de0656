"""Step driver: the distribution's driver packages for the chosen branch, pinned."""

from __future__ import annotations

from collections.abc import Sequence

from gpunode.bootstrap.core.host.facts import HostFacts
from gpunode.bootstrap.core.packages.apt_sources import GPUNODE_NONFREE_SOURCES, plan_apt_components
from gpunode.bootstrap.core.packages.common import FileSpec, PackageSpec, apt_update_command, upstream_version
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
    repo_files = list(driver.repo.files) if driver.repo is not None else []
    sources_change = bool(changed_files(facts, [*files, *repo_files]))
    unavailable = _without_candidate(facts, driver.to_install) if not sources_change else []
    if unavailable:
        plan.failed = _no_candidate_message(unavailable, settings)
        return plan
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


def _without_candidate(facts: HostFacts, specs: Sequence[PackageSpec]) -> list[str]:
    """Packages to install that apt has no candidate for (only the ones the snapshot asked about).

    Judged only when this step adds no apt source: a component or repository it adds brings
    candidates the host's lists do not have yet.
    """
    candidates = facts.apt_candidates
    if candidates is None:
        return []
    return [spec.name for spec in specs if spec.name in candidates and candidates[spec.name] is None]


def _no_candidate_message(names: list[str], settings: NodeSettings) -> str:
    what = ", ".join(names)
    text = f"apt has no installation candidate for {what} on this host, so installing would fail. "
    if any(name.startswith("linux-headers-") for name in names):
        return text + (
            "The running kernel is not one the distribution ships headers for, and the dkms kernel module "
            "needs them. Fix: boot a kernel of the distribution (Debian: apt-get install linux-image-amd64 "
            "linux-headers-amd64, then reboot), or pass --kernel-module none when the nvidia module is "
            "managed elsewhere"
        )
    return text + "Fix: run apt-get update, and check that the host's apt sources carry them"


def driver_apt_names(settings: NodeSettings) -> tuple[str, ...]:
    """Debian's names of what the driver step installs (other distributions are not judged)."""
    names: tuple[str, ...] = ("libnvidia-ml1", "nvidia-smi", "libcuda1")
    if settings.kernel_module == "dkms":
        module = "nvidia-open-kernel-dkms" if settings.driver_flavour == "open" else "nvidia-kernel-dkms"
        names += (module, "nvidia-persistenced", "linux-headers-KERNEL_RELEASE")
    return names


STEP = NodeStep(
    "driver",
    "packages",
    plan_driver_step,
    managed_paths=lambda settings: (DRIVER_PIN_PATH, GPUNODE_NONFREE_SOURCES),
    apt_names=driver_apt_names,
    changes_driver=True,
)
