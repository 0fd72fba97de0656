"""What every node step is made of: its input (NodeFacts), its output (StepPlan), itself (NodeStep).

A planner reads the facts and the host's settings and returns a StepPlan: what would
change (for the summary and --dry-run), the commands that change it (for the pyinfra
operation), the files it writes, or why nothing needs doing. Planners do no I/O on the
host and change nothing outside the plan they return; orchestration runs the commands.

Commands are shell strings or one of the markers below (WriteFiles, UploadFiles,
RuntimeChange), which node.operations turns into what pyinfra runs. The markers keep a
plan readable and comparable in tests (docs/architecture.md: "adding a node step").
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from gpunode.bootstrap.core.host.facts import HostFacts
from gpunode.bootstrap.core.host.os_release import OsRelease
from gpunode.bootstrap.core.nvml.library import NvmlLibrary
from gpunode.bootstrap.core.packages.common import FileSpec
from gpunode.bootstrap.core.packages.driver import DriverRequest
from gpunode.bootstrap.core.packages.toolkit import LocalPackage
from gpunode.bootstrap.core.report import StepStatus
from gpunode.bootstrap.core.settings import NodeSettings
from gpunode.bootstrap.node.remote_files import BACKUP_ROOT, FileWrite

# preflight: read only, decides whether the host goes on. packages: converged first (the
# driver and the toolkit change what the host looks like). config: planned from the host as
# it is after the packages (read again when they changed).
Phase = Literal["preflight", "packages", "config"]
PHASES: tuple[Phase, ...] = ("preflight", "packages", "config")


def backup_stamp() -> str:
    """The name a backup set gets: the time it was planned (sorts by time)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


@dataclass(frozen=True)
class NodeFacts:
    """Everything a planner may read: the host's snapshot and what the run knows besides it."""

    host: HostFacts
    # The gpunode that runs (what the state record and the host plugin's venv name).
    gpunode_version: str
    # Names this planning's backup sets (`backup_stamp()` when orchestration plans).
    stamp: str
    # The --toolkit-packages directory, read on the operator's machine (None: no directory).
    local_packages: tuple[LocalPackage, ...] | None = None
    # The library the nvml-library step resolved earlier in this run (None: not resolved).
    library: NvmlLibrary | None = None

    def backup_dir(self, step: str) -> str:
        return f"{BACKUP_ROOT}/{self.stamp}-{step}"


@dataclass(frozen=True)
class WriteFiles:
    """Write whole files atomically, each backed up under `backup` first (node.remote_files)."""

    files: tuple[FileWrite, ...]
    backup: str


@dataclass(frozen=True)
class UploadFiles:
    """Copy files from the operator's machine to the host: (local, remote, sha256)."""

    files: tuple[tuple[str, str, str], ...]


@dataclass(frozen=True)
class RuntimeChange:
    """Write containerd's config, validate it with `containerd config dump`, restart if it changed.

    Run by node.containerd_apply at execute time; what it finds goes into `messages`
    (the plan's notes, so the report shows them).
    """

    writes: tuple[FileWrite, ...]
    backup: str
    config_path: str
    runtime_name: str
    binary_name: str
    old_dump: str | None
    restart_command: str | None
    has_systemd: bool
    messages: list[str] = field(compare=False, repr=False)


@dataclass(frozen=True)
class InstallContainerd:
    """Install the distribution's containerd and give it kubeadm's config (--install-containerd).

    Run by node.containerd_install at execute time: the config comes from the installed
    binary's `containerd config default`, which exists only then.
    """

    install_commands: tuple[str, ...]
    config_path: str
    backup: str
    has_systemd: bool
    restart_command: str | None
    messages: list[str] = field(compare=False, repr=False)


@dataclass(frozen=True)
class PinInstalledDriver:
    """After installing a branch without --driver-version: hold the release apt installed.

    Run by node.driver_pin at execute time (the release is known only then), with the pin
    file the next run's plan computes from that release.
    """

    os: OsRelease
    arch: str
    request: DriverRequest
    kernel_release: str
    version_package: str
    backup: str
    messages: list[str] = field(compare=False, repr=False)


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
    # What the nvml-library step decided: the run's library from here on.
    library: NvmlLibrary | None = None

    @property
    def will_change(self) -> bool:
        return bool(self.commands) and self.failed is None and self.skipped is None

    @property
    def status(self) -> StepStatus:
        if self.failed is not None:
            return "failed"
        if self.skipped is not None:
            return "skipped"
        # A step without commands can still change something: what it decided (the library
        # moved), which the state step then records.
        if self.will_change or self.changes:
            return "changed"
        return "unchanged"

    @property
    def files_written(self) -> tuple[FileWrite, ...]:
        """Every whole file the commands write, in order."""
        written: list[FileWrite] = []
        for command in self.commands:
            if isinstance(command, (WriteFiles, RuntimeChange)):
                written += command.files if isinstance(command, WriteFiles) else command.writes
        return tuple(written)

    def summary(self) -> str:
        if self.failed is not None:
            return self.failed
        if self.skipped is not None:
            return self.skipped
        return "; ".join(self.changes) if self.changes else self.unchanged


Planner = Callable[[NodeFacts, NodeSettings], StepPlan]


@dataclass(frozen=True)
class NodeStep:
    """One node step: its name in reports, its phase, its planner and the files it reads back."""

    name: str
    phase: Phase
    plan: Planner
    # Files the snapshot reads back so that the planner can compare before writing.
    managed_paths: Callable[[NodeSettings], tuple[str, ...]] = lambda settings: ()
    # Packages the step may install, whose apt candidates the snapshot reads when they are not
    # installed (`linux-headers-KERNEL_RELEASE`: the running kernel's headers).
    apt_names: Callable[[NodeSettings], tuple[str, ...]] = lambda settings: ()
    # Planned only once the driver is what it will be: a dry run whose driver step would
    # change the driver skips it (what it decides depends on the installed library).
    needs_settled_driver: bool = False
    # Changes the driver (and so unsettles the steps above).
    changes_driver: bool = False


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


def write_files(facts: NodeFacts, step: str, files: Sequence[FileSpec]) -> list[WriteFiles]:
    """The command that writes `files` (none when there is nothing to write)."""
    writes = tuple(FileWrite(f.path, f.content, f.mode) for f in files)
    return [WriteFiles(writes, facts.backup_dir(step))] if writes else []
