"""One bootstrap per host at a time.

The lock is a `flock` held by a process on the host for as long as our connection lives:
when gpunode exits or its connection drops, the process ends and the lock is gone, so a
crashed run never leaves a stale lock behind.
"""

from __future__ import annotations

import getpass
import shlex
import socket
import subprocess
import time
from importlib.metadata import version
from typing import Any, Protocol

from pyinfra.api.host import Host

from gpunode.bootstrap.errors import HostStateError, TransientError

LOCK_PATH = "/run/gpunode.lock"
OWNER_PATH = "/run/gpunode.owner"
# Exit status of the lock script when someone else holds the lock (EX_TEMPFAIL).
LOCKED_ELSEWHERE = 75


def lock_script(owner: str) -> str:
    return (
        f"exec 9>>{LOCK_PATH} || exit 70; "
        f"if ! flock -n 9; then cat {OWNER_PATH} 2>/dev/null; exit {LOCKED_ELSEWHERE}; fi; "
        f"printf '%s\\n' {shlex.quote(owner)} > {OWNER_PATH}; "
        "echo locked; exec cat >/dev/null"
    )


def owner_text() -> str:
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return f"gpunode {version('gpunode')} run by {getpass.getuser()}@{socket.gethostname()} since {started}"


class _Holder(Protocol):
    def release(self) -> None: ...


class _ChannelHolder:
    def __init__(self, channel: Any) -> None:
        self._channel = channel

    def release(self) -> None:
        try:
            self._channel.shutdown_write()
            self._channel.recv_exit_status()
        finally:
            self._channel.close()


class _ProcessHolder:
    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self._process = process

    def release(self) -> None:
        assert self._process.stdin is not None
        self._process.stdin.close()
        self._process.wait(timeout=10)


class HostLock:
    """`with HostLock(host): ...` holds the host's gpunode lock for the block."""

    def __init__(self, host: Host, *, sudo: bool = False) -> None:
        self.host = host
        self.sudo = sudo
        self._holder: _Holder | None = None

    def _command(self) -> str:
        command = "sh -c " + shlex.quote(lock_script(owner_text()))
        return f"sudo -n {command}" if self.sudo else command

    def acquire(self) -> None:
        client = getattr(self.host.connector, "client", None)
        if client is not None:
            channel = client.get_transport().open_session()
            channel.exec_command(self._command())
            first = channel.makefile("r").readline().strip()
            if first == "locked":
                self._holder = _ChannelHolder(channel)
                return
            status = channel.recv_exit_status()
            rest = first
            channel.close()
        elif self.host.name == "@local" or callable(getattr(self.host.connector, "argv", None)):
            # @local, or a connector that runs local processes in the host (@nsenter/PID).
            wrap = getattr(self.host.connector, "argv", None)
            argv: list[str] = wrap(self._command()) if callable(wrap) else ["sh", "-c", self._command()]
            process = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            assert process.stdout is not None
            first = process.stdout.readline().decode().strip()
            if first == "locked":
                self._holder = _ProcessHolder(process)
                return
            status = process.wait()
            rest = first
        else:
            raise HostStateError(
                f"{self.host.name}: gpunode can lock only SSH, @local and @nsenter hosts.",
                fix="use an SSH target (user@host), @local or @nsenter/PID",
            )
        if status == LOCKED_ELSEWHERE:
            raise TransientError(
                f"{self.host.name}: another gpunode bootstrap holds this host's lock ({rest or 'owner unknown'}).",
                fix="wait for it to finish and run again; the lock disappears with that run's connection",
            )
        raise HostStateError(
            f"{self.host.name}: could not take gpunode's lock {LOCK_PATH} (exit status {status}: {rest}).",
            fix="check that flock (util-linux) is installed and /run is writable by the SSH user or sudo",
        )

    def release(self) -> None:
        if self._holder is not None:
            holder, self._holder = self._holder, None
            holder.release()

    def __enter__(self) -> HostLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
