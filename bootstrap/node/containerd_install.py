"""What runs on the host when the container-runtime step installs containerd (--install-containerd).

The distribution's package is installed; its config is replaced by `containerd config
default` of the binary just installed, with runc's SystemdCgroup set to the host's init
system (core.containerd.initial), written atomically with a backup of what the package
shipped; then containerd is restarted on it and must answer. The containerd step, planned
from the host as it is afterwards, adds the nvidia runtime to that config.
"""

from __future__ import annotations

import shlex

from pyinfra.api.host import Host
from pyinfra.api.state import State

from gpunode.bootstrap.core.containerd.initial import initial_config
from gpunode.bootstrap.errors import GpunodeError
from gpunode.bootstrap.node.containerd_apply import _restart, _run
from gpunode.bootstrap.node.remote_files import FileWrite, restore_files_script, sh, write_files_script
from gpunode.bootstrap.node.steps.base import InstallContainerd


def install_containerd(state: State, host: Host, *, change: InstallContainerd) -> bool:
    messages = change.messages
    for command in change.install_commands:
        ok, output = _run(host, command)
        if not ok:
            messages.append(f"installing containerd failed: {output.strip()[-2000:]}")
            return False
    ok, default = _run(host, "containerd config default")
    if not ok:
        messages.append(f"`containerd config default` failed: {default.strip()}")
        return False
    try:
        text = initial_config(default, systemd_cgroup=change.has_systemd, path=change.config_path)
    except GpunodeError as exc:
        messages.append(str(exc))
        return False
    writes = [FileWrite(change.config_path, text, 0o644)]
    ok, output = _run(host, sh(write_files_script(writes, change.backup)))
    if not ok:
        messages.append(f"writing {change.config_path} failed: {output}")
        _run(host, sh(restore_files_script(writes, change.backup)))
        return False
    ok, dump = _run(host, f"containerd --config {shlex.quote(change.config_path)} config dump")
    if not ok:
        _run(host, sh(restore_files_script(writes, change.backup)))
        messages.append(
            f"the new config did not load (`containerd config dump`: {dump.strip()}); the package's is back"
        )
        return False
    cgroup = "systemd" if change.has_systemd else "cgroupfs"
    messages.append(
        f"containerd installed; {change.config_path} from `containerd config default` with the {cgroup} "
        f"cgroup driver for runc (backup of the package's file in {change.backup})"
    )
    restarted, why = _restart(host, change.restart_command, change.has_systemd)
    if restarted:
        messages.append("containerd restarted on it and answering")
        return True
    if why == "no systemd":
        messages.append(
            "no systemd on this host and no --containerd-restart-command: containerd was NOT started; "
            "start it yourself (the kubelet needs it running)"
        )
        return True
    messages.append(f"starting containerd failed: {why.strip() or 'no output'}")
    return False


__all__ = ["install_containerd"]
