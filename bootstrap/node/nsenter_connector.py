"""`@nsenter/<pid>`: a pyinfra connector that runs every command inside the namespaces of a
process on this machine, as `nsenter --target <pid> --mount --uts --ipc --net --pid --root
--wd -- env -i PATH=... sh -c <command>`.

This is how the in-cluster agent reaches its node: a pod with `hostPID: true`, privileged,
enters PID 1's namespaces (`@nsenter/1`). Commands then see the host exactly as an SSH
session does (its files, processes, hostname, network, init system), so gpunode's node
steps and snapshot run unchanged. Why not pyinfra's `@chroot`: see
core/kube/agent_manifests.py. The environment is the host's, not the agent's: `env -i` with
a standard PATH, so nothing of the agent's venv leaks into host commands.

Registered as the pyinfra connector `nsenter` (entry point in pyproject.toml).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from tempfile import mkstemp
from typing import Any, cast

from pyinfra import local
from pyinfra.api.command import QuoteString, StringCommand
from pyinfra.api.exceptions import ConnectError, InventoryError, PyinfraError
from pyinfra.api.util import get_file_io
from pyinfra.connectors.chroot import ChrootConnector
from pyinfra.connectors.util import extract_control_arguments, make_unix_command_for_host

HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HOST_ENV = ("PATH=" + HOST_PATH, "HOME=/root", "LANG=C.UTF-8", "USER=root")


@contextmanager
def _local_temp() -> Iterator[str]:
    """A file on this machine that file transfers pass through, removed afterwards."""
    fd, temp = mkstemp()
    os.close(fd)
    try:
        yield temp
    finally:
        os.remove(temp)


def nsenter_argv(pid: int) -> list[str]:
    """The prefix that puts a command into `pid`'s namespaces, with the host's environment."""
    return [
        "nsenter",
        f"--target={pid}",
        "--mount",
        "--uts",
        "--ipc",
        "--net",
        "--pid",
        "--root",
        "--wd",
        "--",
        "env",
        "-i",
        *HOST_ENV,
    ]


class NsenterConnector(ChrootConnector):
    """Runs through the local connector, each command wrapped in nsenter."""

    @staticmethod
    def make_names_data(name: str | None = None) -> Any:
        if not name or not name.isdigit() or int(name) < 1:
            raise InventoryError("@nsenter needs a process id: @nsenter/1 (the host's PID 1 in a hostPID pod)")
        yield f"@nsenter/{name}", {"nsenter_pid": int(name)}, ["@nsenter"]

    def _prefix(self) -> str:
        return " ".join(shlex.quote(part) for part in nsenter_argv(int(self.host.data.nsenter_pid)))

    def argv(self, command: str) -> list[str]:
        """A whole command line for subprocess (the host lock uses it)."""
        return [*nsenter_argv(int(self.host.data.nsenter_pid)), "sh", "-c", command]

    def connect(self) -> None:
        self.local.connect()
        try:
            local.shell(f"{self._prefix()} true", splitlines=True)
        except PyinfraError as exc:
            raise ConnectError(
                f"cannot enter the namespaces of process {self.host.data.nsenter_pid}: {exc.args[0]} "
                "(the agent needs hostPID and privileges: see gpunode render agent)"
            ) from exc
        self.host.connector_data["chroot_directory"] = "/"

    def run_shell_command(
        self, command: Any, print_output: bool = False, print_input: bool = False, **arguments: Any
    ) -> Any:
        local_arguments = extract_control_arguments(cast(Any, arguments))
        command = make_unix_command_for_host(self.state, self.host, command, **arguments)
        wrapped = StringCommand(self._prefix(), "sh", "-c", QuoteString(command))
        return self.local.run_shell_command(
            wrapped, print_output=print_output, print_input=print_input, **local_arguments
        )

    def _through_temp(self, shell: str, temp: str, print_output: bool, print_input: bool) -> Any:
        command = StringCommand(self._prefix(), "sh", "-c", QuoteString(shell))
        return self.local.run_shell_command(
            StringCommand(command, f"{'<' if shell.startswith('cat >') else '>'} {shlex.quote(temp)}"),
            print_output=print_output,
            print_input=print_input,
        )

    def put_file(
        self,
        filename_or_io: Any,
        remote_filename: str,
        remote_temp_filename: Any = None,
        print_output: bool = False,
        print_input: bool = False,
        **kwargs: Any,
    ) -> bool:
        with _local_temp() as temp:
            with get_file_io(filename_or_io) as file_io, open(temp, "wb") as out:
                data = file_io.read()
                out.write(data.encode() if isinstance(data, str) else data)
            status, output = self._through_temp(
                f"cat > {shlex.quote(remote_filename)}", temp, print_output, print_input
            )
        if not status:
            raise OSError(output.stderr)
        return True

    def get_file(
        self,
        remote_filename: str,
        filename_or_io: Any,
        remote_temp_filename: Any = None,
        print_output: bool = False,
        print_input: bool = False,
        **kwargs: Any,
    ) -> bool:
        with _local_temp() as temp:
            status, output = self._through_temp(f"cat {shlex.quote(remote_filename)}", temp, print_output, print_input)
            if not status:
                raise OSError(output.stderr)
            with open(temp, "rb") as source, get_file_io(filename_or_io, "wb") as file_io:
                file_io.write(source.read())
        return True
