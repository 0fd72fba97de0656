"""What runs on the host when the containerd step changes the runtime (node.steps.containerd plans it).

The new file(s) are written atomically with a backup, validated with the host's own
`containerd config dump` (the runtime must be there, as asked, in the *effective*
config), and containerd is restarted only when the effective config changed. If
validation or the restart fails, the backup goes back and containerd is started again on
the old config, and the step fails loudly.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Sequence

from pyinfra.api.command import StringCommand
from pyinfra.api.host import Host
from pyinfra.api.state import State

from gpunode.bootstrap.core.containerd.effective import runtime_problems
from gpunode.bootstrap.errors import HostStateError
from gpunode.bootstrap.node.remote_files import FileWrite, restore_files_script, sh, write_files_script

# How long a restarted containerd gets to answer before the restart counts as failed.
RESTART_DEADLINE = 30.0


def _run(host: Host, command: str) -> tuple[bool, str]:
    status, output = host.run_shell_command(
        StringCommand(command),
        _sudo=bool(host.data.get("_sudo")),
    )
    text = "\n".join(output.stdout_lines + output.stderr_lines)
    return bool(status), text


def _dump(host: Host, config_path: str) -> tuple[bool, str]:
    return _run(host, f"containerd --config {shlex.quote(config_path)} config dump")


def _restart(host: Host, restart_command: str | None, has_systemd: bool) -> tuple[bool, str]:
    if restart_command:
        ok, output = _run(host, restart_command)
    elif has_systemd:
        ok, output = _run(host, "systemctl restart containerd")
    else:
        return False, "no systemd"
    if not ok:
        return False, output
    return _wait_healthy(host)


def _wait_healthy(host: Host) -> tuple[bool, str]:
    """containerd answers on its socket (ctr) within the deadline."""
    deadline = time.monotonic() + RESTART_DEADLINE
    output = ""
    while time.monotonic() < deadline:
        ok, output = _run(
            host,
            "ctr --connect-timeout 2s --timeout 5s version >/dev/null 2>&1 "
            "|| { command -v ctr >/dev/null || pgrep -x containerd; }",
        )
        if ok:
            return True, ""
        time.sleep(0.5)
    return False, output or "containerd did not answer after the restart"


def apply_runtime_change(
    state: State,
    host: Host,
    *,
    writes: Sequence[FileWrite],
    backup: str,
    config_path: str,
    runtime_name: str,
    binary_name: str,
    old_dump: str | None,
    restart_command: str | None,
    has_systemd: bool,
    messages: list[str],
) -> bool:
    ok, output = _run(host, sh(write_files_script(writes, backup)))
    if not ok:
        messages.append(f"writing the config failed: {output}")
        _run(host, sh(restore_files_script(writes, backup)))
        return False
    valid, dump = _dump(host, config_path)
    problems: tuple[str, ...]
    try:
        problems = (
            runtime_problems(dump, runtime_name=runtime_name, binary_name=binary_name)
            if valid
            else (f"`containerd config dump` failed: {dump.strip()}",)
        )
    except HostStateError as exc:
        problems = (str(exc),)
    if problems:
        _run(host, sh(restore_files_script(writes, backup)))
        messages.append(
            f"the new config did not validate, so the previous files are back (backup {backup}): " + " ".join(problems)
        )
        return False
    messages.append(f"validated with `containerd config dump`; backup of the previous files in {backup}")
    if old_dump is not None and dump.strip() == old_dump.strip():
        messages.append("the effective config did not change: containerd not restarted")
        return True
    restarted, why = _restart(host, restart_command, has_systemd)
    if restarted:
        messages.append("containerd restarted and answering")
        return True
    if why == "no systemd":
        messages.append(
            "no systemd on this host and no --containerd-restart-command: containerd "
            "was NOT restarted; restart it yourself to load the runtime"
        )
        return True
    _run(host, sh(restore_files_script(writes, backup)))
    back, again = _restart(host, restart_command, has_systemd)
    messages.append(
        f"restarting containerd failed ({why.strip() or 'no output'}); the previous config is back "
        + ("and containerd is running on it again" if back else f"but containerd did not come back: {again}")
    )
    return False


__all__ = ["apply_runtime_change"]
