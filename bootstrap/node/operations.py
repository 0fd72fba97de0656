"""pyinfra operations for the node steps.

A step's plan (gpunode.bootstrap.node.steps) already holds the commands that move the
host to the wanted state, computed from the snapshot before anything runs; the operation
yields them, or tells pyinfra why there is nothing to do. The plan's markers become what
pyinfra runs here.
"""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Generator, Sequence
from typing import Any

from pyinfra.api.command import FileUploadCommand, FunctionCommand
from pyinfra.api.operation import operation
from pyinfra.context import host

from gpunode.bootstrap.node.containerd_apply import apply_runtime_change
from gpunode.bootstrap.node.containerd_install import install_containerd
from gpunode.bootstrap.node.driver_pin import pin_installed_driver
from gpunode.bootstrap.node.remote_files import sh, write_files_script
from gpunode.bootstrap.node.steps.base import (
    InstallContainerd,
    PinInstalledDriver,
    RuntimeChange,
    UploadFiles,
    WriteFiles,
)


def _expand(command: Any) -> Generator[Any, None, None]:
    if isinstance(command, UploadFiles):
        directories = sorted({posixpath.dirname(remote) for _, remote, _ in command.files})
        yield "mkdir -p " + " ".join(shlex.quote(d) for d in directories)
        for local, remote, _ in command.files:
            yield FileUploadCommand(local, remote)
    elif isinstance(command, WriteFiles):
        yield sh(write_files_script(command.files, command.backup))
    elif isinstance(command, RuntimeChange):
        yield FunctionCommand(
            apply_runtime_change,
            (),
            {
                "writes": command.writes,
                "backup": command.backup,
                "config_path": command.config_path,
                "runtime_name": command.runtime_name,
                "binary_name": command.binary_name,
                "old_dump": command.old_dump,
                "restart_command": command.restart_command,
                "has_systemd": command.has_systemd,
                "messages": command.messages,
            },
        )
    elif isinstance(command, PinInstalledDriver):
        yield FunctionCommand(pin_installed_driver, (), {"pin": command})
    elif isinstance(command, InstallContainerd):
        yield FunctionCommand(install_containerd, (), {"change": command})
    else:
        yield command


@operation()
def converge(commands: Sequence[Any], unchanged: str) -> Generator[Any, None, None]:
    """Run a step's planned commands in order; none planned means the host is already right."""
    if not commands:
        host.noop(unchanged or "nothing to do")
        return
    for command in commands:
        yield from _expand(command)
