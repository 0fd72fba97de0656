"""The config a bare host's new containerd starts from, as kubeadm's documentation sets it up.

kubeadm's container runtime page: write `containerd config default` to
/etc/containerd/config.toml, and set `SystemdCgroup = true` for runc when the host's init
system is systemd (the kubelet's cgroup driver must match the runtime's; kubeadm defaults
the kubelet to systemd). Without systemd, cgroupfs stays (`SystemdCgroup = false`).
The default text comes from the installed binary at execute time; this only edits it.
"""

from __future__ import annotations

import tomlkit
from tomlkit.items import Table

from gpunode.bootstrap.core.containerd.plan import config_schema_version
from gpunode.bootstrap.core.containerd.schema import ContainerdConfigError, runtimes_path

INITIAL_HEADER = (
    "# Written by gpunode (--install-containerd) from `containerd config default`, with\n"
    "# SystemdCgroup set for runc to match this host's init system, as kubeadm's documentation\n"
    "# says. Edit it as your own: gpunode keeps what it finds here from now on.\n"
)


def initial_config(default_text: str, *, systemd_cgroup: bool, path: str) -> str:
    """`containerd config default`'s output with runc's SystemdCgroup set, and a header."""
    schema = config_schema_version(default_text, path)
    if schema is None or schema < 2:
        raise ContainerdConfigError(
            f"`containerd config default` printed no config of schema 2 or later for {path}.",
            fix="check the installed containerd (`containerd config default`), then run gpunode again.",
        )
    document = tomlkit.parse(default_text)
    table: Table | tomlkit.TOMLDocument = document
    for key in (*runtimes_path(schema), "runc", "options"):
        if key not in table:
            table[key] = tomlkit.table()
        child = table[key]
        if not isinstance(child, Table):
            raise ContainerdConfigError(
                f"`containerd config default` has no table at {key} for runc's options.",
                fix="set SystemdCgroup for runc in the config by hand.",
            )
        table = child
    table["SystemdCgroup"] = systemd_cgroup
    return INITIAL_HEADER + tomlkit.dumps(document)
