"""pyinfra operations for the node steps.

A step's plan (gpunode.bootstrap.node.steps) already holds the commands that move the
host to the wanted state, computed from the snapshot before anything runs; the operation
yields them, or tells pyinfra why there is nothing to do.
"""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Generator, Sequence
from typing import Any

from pyinfra.api.command import FileUploadCommand
from pyinfra.api.operation import operation
from pyinfra.context import host

from gpunode.bootstrap.node.steps import UploadFiles


def _expand(command: Any) -> Generator[Any, None, None]:
    if isinstance(command, UploadFiles):
        directories = sorted({posixpath.dirname(remote) for _, remote, _ in command.files})
        yield "mkdir -p " + " ".join(shlex.quote(d) for d in directories)
        for local, remote, _ in command.files:
            yield FileUploadCommand(local, remote)
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
