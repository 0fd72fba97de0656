"""The node steps of a bootstrap, planned from one host snapshot.

Each planner reads HostFacts and the host's settings, asks the core what the host should
look like, and returns a StepPlan: what would change (for the summary and --dry-run), the
commands that change it (for the pyinfra operation), or why nothing needs doing.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gpunode.bootstrap.core.containerd.plan import parse_containerd_version
from gpunode.bootstrap.core.host.facts import HostFacts
from gpunode.bootstrap.core.host.record import STATE_PATH, HostRecord
from gpunode.bootstrap.core.nvml.library import LibraryProblem, NvmlLibrary, choose_nvml_library
from gpunode.bootstrap.core.packages.apt_sources import plan_apt_components
from gpunode.bootstrap.core.packages.common import FileSpec, apt_update_command, upstream_version
from gpunode.bootstrap.core.packages.driver import DriverRequest, plan_driver
from gpunode.bootstrap.core.packages.toolkit import (
    LocalPackage,
    installed_toolkit_version,
    plan_local_toolkit,
    plan_toolkit_packages,
    plan_toolkit_repo,
)
from gpunode.bootstrap.core.settings import NodeSettings
from gpunode.bootstrap.errors import GpunodeError
from gpunode.bootstrap.node.remote_files import BACKUP_ROOT, FileWrite, sh, write_files_script

NOUVEAU_BLACKLIST = "/etc/modprobe.d/gpunode-blacklist-nouveau.conf"
NOUVEAU_BLACKLIST_TEXT = (
    "# Written by gpunode: nouveau must not claim NVIDIA GPUs, or the nvidia module cannot load.\n"
    "blacklist nouveau\n"
    "options nouveau modeset=0\n"
)


@dataclass
class StepPlan:
    name: str
    changes: list[str] = field(default_factory=list)
    commands: list[Any] = field(default_factory=list)
    unchanged: str = ""
    diff: str = ""
    skipped: str | None = None
    failed: str | None = None
    reboot_required: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def will_change(self) -> bool:
        return bool(self.commands) and self.failed is None and self.skipped is None

    def summary(self) -> str:
        if self.failed is not None:
            return self.failed
        if self.skipped is not None:
            return self.skipped
        return "; ".join(self.changes) if self.changes else self.unchanged


def backup_dir(step: str) -> str:
    return f"{BACKUP_ROOT}/{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{step}"


def file_diff(path: str, old: str | None, new: str) -> str:
    return "".join(
        difflib.unified_diff(
            (old or "").splitlines(keepends=True),
            new.splitlines(keepends=True),
            fromfile=f"a{path}" if old is not None else "/dev/null",
            tofile=f"b{path}",
        )
    )


def changed_files(facts: HostFacts, specs: Sequence[FileSpec | None]) -> list[FileSpec]:
    return [spec for spec in specs if spec is not None and facts.managed_file(spec.path) != spec.content]


def file_commands(step: str, files: Sequence[FileSpec]) -> list[str]:
    writes = [FileWrite(f.path, f.content, f.mode) for f in files]
    return [sh(write_files_script(writes, backup_dir(step)))] if writes else []


# --------------------------------------------------------------------------------------
# preflight
# --------------------------------------------------------------------------------------


def plan_preflight(facts: HostFacts, settings: NodeSettings) -> StepPlan:
    plan = StepPlan("preflight")
    gpus = facts.gpus
    if gpus:
        names = sorted({gpu.name for gpu in gpus})
        found = f"{len(gpus)} NVIDIA GPU{'s' if len(gpus) > 1 else ''} ({', '.join(names)})"
    elif settings.allow_no_gpu:
        found = "no NVIDIA GPU on the PCI bus (continuing: --allow-no-gpu)"
    else:
        plan.failed = (
            "no NVIDIA GPU on the PCI bus of this host, so there is nothing to set up. "
            "Fix: check `lspci -d 10de:` on the host (a GPU passed through to a VM must be "
            "attached to it), or pass --allow-no-gpu to set up the software anyway"
        )
        return plan
    if facts.os.family == "unknown":
        plan.failed = f"gpunode does not support {facts.os.describe()}. Fix: use Debian, Ubuntu or a RHEL-family host"
        return plan
    parts = [found, facts.os.describe(), f"kernel {facts.kernel_release} {facts.arch}"]
    if facts.containerd.version_text:
        try:
            parts.append("containerd " + ".".join(map(str, parse_containerd_version(facts.containerd.version_text))))
        except GpunodeError:
            parts.append(facts.containerd.version_text)
    elif not facts.is_k3s:
        parts.append("no containerd")
    if facts.module_version:
        parts.append(f"nvidia module {facts.module_version} loaded")
    plan.unchanged = ", ".join(parts)
    if "nouveau" in facts.loaded_modules:
        plan.notes.append("nouveau is loaded: it holds the GPUs until the host reboots with it blacklisted")
    if facts.secure_boot and settings.kernel_module == "dkms":
        plan.notes.append(
            "Secure Boot is on: a DKMS-built nvidia module loads only if it is signed with a "
            "key enrolled in MOK (mokutil --import); otherwise use signed precompiled modules"
        )
    return plan


# --------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------


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


def plan_driver_step(facts: HostFacts, settings: NodeSettings) -> StepPlan:
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
    plan.commands += file_commands("driver", to_write)
    if driver.install_command is not None:
        if facts.package_manager == "dpkg":
            plan.commands.append(apt_update_command())
        plan.commands += list(driver.pre_install_commands)
        plan.commands.append(driver.install_command)
        plan.commands += list(driver.post_install_commands)
        plan.changes.append("install " + ", ".join(spec.apt_arg() for spec in driver.to_install))
    installed = [f"{spec.name} {facts.packages[spec.name]}" for spec in driver.packages if spec.name in facts.packages]
    plan.unchanged = (f"branch {driver.branch}: " + ", ".join(installed)) if installed else f"branch {driver.branch}"
    if driver.pin is not None:
        plan.unchanged += " (pinned)"
    return plan


# --------------------------------------------------------------------------------------
# nouveau
# --------------------------------------------------------------------------------------


def plan_nouveau_step(facts: HostFacts, settings: NodeSettings) -> StepPlan:
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
        plan.commands += file_commands("nouveau", [FileSpec(NOUVEAU_BLACKLIST, NOUVEAU_BLACKLIST_TEXT)])
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


# --------------------------------------------------------------------------------------
# toolkit
# --------------------------------------------------------------------------------------


def plan_toolkit_step(facts: HostFacts, settings: NodeSettings, local: Sequence[LocalPackage] | None) -> StepPlan:
    plan = StepPlan("toolkit")
    family = facts.os.family
    try:
        if local is not None:
            if family == "unknown":
                raise GpunodeError(f"gpunode cannot install packages on {facts.os.describe()}")
            local_plan = plan_local_toolkit(local, facts.packages, facts.arch, family=family)
            pin, install, to_install, notes = (
                local_plan.pin,
                local_plan.install_command,
                local_plan.to_install,
                local_plan.notes,
            )
            uploads = [(u.local_path, u.remote_path, u.sha256) for u in local_plan.uploads]
            repo_files: list[FileSpec] = []
            repo_command: str | None = None
        else:
            if family == "unknown":
                raise GpunodeError(f"gpunode cannot install packages on {facts.os.describe()}")
            repo = plan_toolkit_repo(facts.os, facts.arch)
            package_plan = plan_toolkit_packages(settings.toolkit_version, facts.packages, family=family)
            pin, install, to_install, notes = (
                package_plan.pin,
                package_plan.install_command,
                package_plan.to_install,
                package_plan.notes + repo.notes,
            )
            uploads = []
            repo_files = list(repo.files)
            repo_command = None
            if repo.keyring_path and facts.managed_file(repo.keyring_path) is None:
                repo_command = f"{repo.check_command} || {repo.setup_command}"
    except GpunodeError as exc:
        plan.failed = str(exc)
        return plan
    plan.notes += list(notes)
    if repo_command is not None:
        plan.commands.append(repo_command)
        plan.changes.append("add NVIDIA's container toolkit repository and its verified key")
    to_write = changed_files(facts, [*repo_files, pin])
    for spec in to_write:
        plan.changes.append(f"write {spec.path}")
        plan.diff += file_diff(spec.path, facts.managed_file(spec.path), spec.content)
    plan.commands += file_commands("toolkit", to_write)
    pending = [(src, dst, digest) for src, dst, digest in uploads if facts.uploads.get(dst) != digest]
    if pending:
        plan.commands.append(UploadFiles(tuple(pending)))
        plan.changes.append(f"upload {len(pending)} package file(s)")
    if install is not None:
        if facts.package_manager == "dpkg" and local is None:
            plan.commands.append(apt_update_command())
        plan.commands.append(install)
        plan.changes.append("install " + ", ".join(spec.apt_arg() for spec in to_install))
    version = installed_toolkit_version(facts.packages)
    plan.unchanged = f"nvidia-container-toolkit {version} (all four packages, pinned)" if version else "installed"
    return plan


@dataclass(frozen=True)
class UploadFiles:
    """A marker the operation turns into pyinfra file uploads: (local, remote, sha256)."""

    files: tuple[tuple[str, str, str], ...]


# --------------------------------------------------------------------------------------
# NVML library
# --------------------------------------------------------------------------------------


@dataclass
class LibraryOutcome:
    plan: StepPlan
    library: NvmlLibrary | None


def plan_library_step(facts: HostFacts, settings: NodeSettings, recorded: HostRecord | None) -> LibraryOutcome:
    """Resolve the real libnvidia-ml.so.<version>; nothing is written here, only decided."""
    plan = StepPlan("nvml-library")
    try:
        library = choose_nvml_library(facts.nvml)
    except LibraryProblem as exc:
        plan.failed = str(exc)
        if exc.evidence:
            plan.failed += " Evidence: " + "; ".join(exc.evidence)
        plan.reboot_required = exc.reboot_required
        return LibraryOutcome(plan, None)
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
    if recorded is not None and recorded.nvml_library and recorded.nvml_library != library.path:
        plan.changes.append(f"library moved from {recorded.nvml_library} to {description}")
    plan.unchanged = description
    return LibraryOutcome(plan, library)


# --------------------------------------------------------------------------------------
# state file
# --------------------------------------------------------------------------------------


def plan_state_step(facts: HostFacts, record: HostRecord) -> StepPlan:
    plan = StepPlan("state")
    text = record.to_json()
    current = facts.managed_file(STATE_PATH)
    if current == text:
        plan.unchanged = f"{STATE_PATH} up to date"
        return plan
    plan.commands += file_commands("state", [FileSpec(STATE_PATH, text, 0o644)])
    plan.changes.append(f"record {STATE_PATH}")
    plan.diff = file_diff(STATE_PATH, current, text)
    return plan
