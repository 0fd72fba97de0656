"""Step toolkit: NVIDIA's container toolkit, from its repository or a local directory, pinned."""

from __future__ import annotations

from dataclasses import dataclass

from gpunode.bootstrap.core.host.facts import HostFacts
from gpunode.bootstrap.core.packages.common import FileSpec, PackageSpec, apt_update_command
from gpunode.bootstrap.core.packages.toolkit import (
    TOOLKIT_APT_KEYRING,
    TOOLKIT_APT_LIST,
    TOOLKIT_PIN_PATH,
    LocalPackage,
    installed_toolkit_version,
    plan_local_toolkit,
    plan_toolkit_packages,
    plan_toolkit_repo,
)
from gpunode.bootstrap.core.settings import NodeSettings
from gpunode.bootstrap.errors import GpunodeError
from gpunode.bootstrap.node.steps.base import (
    NodeFacts,
    NodeStep,
    StepPlan,
    UploadFiles,
    changed_files,
    file_diff,
    write_files,
)


@dataclass
class _Source:
    """Where the packages come from, and what that takes."""

    pin: FileSpec | None
    install: str | None
    to_install: tuple[PackageSpec, ...]
    notes: tuple[str, ...]
    uploads: tuple[tuple[str, str, str], ...] = ()
    repo_files: tuple[FileSpec, ...] = ()
    repo_command: str | None = None


def _local_source(facts: HostFacts, local: tuple[LocalPackage, ...]) -> _Source:
    family = facts.os.family
    if family == "unknown":
        raise GpunodeError(f"gpunode cannot install packages on {facts.os.describe()}")
    plan = plan_local_toolkit(local, facts.packages, facts.arch, family=family)
    uploads = tuple((u.local_path, u.remote_path, u.sha256) for u in plan.uploads)
    return _Source(plan.pin, plan.install_command, tuple(plan.to_install), tuple(plan.notes), uploads=uploads)


def _repo_source(facts: HostFacts, settings: NodeSettings) -> _Source:
    family = facts.os.family
    if family == "unknown":
        raise GpunodeError(f"gpunode cannot install packages on {facts.os.describe()}")
    repo = plan_toolkit_repo(facts.os, facts.arch)
    packages = plan_toolkit_packages(settings.toolkit_version, facts.packages, family=family)
    command = None
    if repo.keyring_path and facts.managed_file(repo.keyring_path) is None:
        command = f"{repo.check_command} || {repo.setup_command}"
    return _Source(
        packages.pin,
        packages.install_command,
        tuple(packages.to_install),
        tuple(packages.notes) + tuple(repo.notes),
        repo_files=tuple(repo.files),
        repo_command=command,
    )


def plan_toolkit_step(node: NodeFacts, settings: NodeSettings) -> StepPlan:
    facts = node.host
    local = node.local_packages if settings.toolkit_packages else None
    plan = StepPlan("toolkit")
    try:
        source = _local_source(facts, local) if local is not None else _repo_source(facts, settings)
    except GpunodeError as exc:
        plan.failed = str(exc)
        return plan
    plan.notes += list(source.notes)
    if source.repo_command is not None:
        plan.commands.append(source.repo_command)
        plan.changes.append("add NVIDIA's container toolkit repository and its verified key")
    to_write = changed_files(facts, [*source.repo_files, source.pin])
    for spec in to_write:
        plan.changes.append(f"write {spec.path}")
        plan.diff += file_diff(spec.path, facts.managed_file(spec.path), spec.content)
    plan.commands += write_files(node, "toolkit", to_write)
    pending = tuple(upload for upload in source.uploads if facts.uploads.get(upload[1]) != upload[2])
    if pending:
        plan.commands.append(UploadFiles(pending))
        plan.changes.append(f"upload {len(pending)} package file(s)")
    if source.install is not None:
        if facts.package_manager == "dpkg" and local is None:
            plan.commands.append(apt_update_command())
        plan.commands.append(source.install)
        plan.changes.append("install " + ", ".join(spec.apt_arg() for spec in source.to_install))
    version = installed_toolkit_version(facts.packages)
    plan.unchanged = f"nvidia-container-toolkit {version} (all four packages, pinned)" if version else "installed"
    return plan


STEP = NodeStep(
    "toolkit",
    "packages",
    plan_toolkit_step,
    managed_paths=lambda settings: (TOOLKIT_PIN_PATH, TOOLKIT_APT_LIST, TOOLKIT_APT_KEYRING),
)
