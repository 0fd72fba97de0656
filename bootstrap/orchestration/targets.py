"""Which hosts a command works on: names on the command line, or a pyinfra inventory file."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pyinfra.api.inventory import Inventory

from gpunode.bootstrap.errors import UserError


def ssh_data(
    *,
    user: str | None,
    port: int | None,
    key: str | None,
    config_file: str | None,
    known_hosts: str | None,
    sudo: bool | None,
    strict_host_keys: bool = False,
) -> dict[str, Any]:
    """pyinfra host data for the SSH flags that were given (flags override inventory data)."""
    data: dict[str, Any] = {}
    if user is not None:
        data["ssh_user"] = user
    if port is not None:
        data["ssh_port"] = port
    if key is not None:
        if not Path(key).expanduser().is_file():
            raise UserError(f"SSH key {key} does not exist.", fix="give the path of a private key file to --ssh-key")
        data["ssh_key"] = str(Path(key).expanduser())
    if config_file is not None:
        if not Path(config_file).expanduser().is_file():
            raise UserError(f"SSH config {config_file} does not exist.", fix="give an existing file to --ssh-config")
        data["ssh_config_file"] = str(Path(config_file).expanduser())
    if known_hosts is not None:
        data["ssh_known_hosts_file"] = str(Path(known_hosts).expanduser())
    if sudo is not None:
        data["_sudo"] = sudo
    if strict_host_keys:
        data["ssh_strict_host_key_checking"] = "yes"
    return data


def make_inventory(hosts: Sequence[str], inventory_file: str | None, override_data: Mapping[str, Any]) -> Inventory:
    if inventory_file and hosts:
        raise UserError(
            "Give hosts on the command line or an inventory file (-i), not both.",
            fix="move the hosts into the inventory, or drop -i",
        )
    if inventory_file:
        path = Path(inventory_file)
        if not path.is_file():
            raise UserError(
                f"Inventory file {inventory_file} does not exist.",
                fix="give the path of a pyinfra inventory file, e.g. inventory/fleet.py",
            )
        # pyinfra's own loader understands inventory files with group_data/ next to them;
        # it records the file it executes on the current state, so it needs one in context.
        from pyinfra.api.state import State
        from pyinfra.context import ctx_state
        from pyinfra_cli.inventory import make_inventory_from_files

        try:
            with ctx_state.use(State()):
                inventory: Inventory = make_inventory_from_files(str(path), override_data=dict(override_data))
        except Exception as exc:
            raise UserError(
                f"Inventory file {inventory_file} could not be loaded: {exc}",
                fix="fix the inventory file (it is Python; see inventory/fleet.py)",
            ) from exc
        if not list(inventory):
            raise UserError(f"Inventory file {inventory_file} lists no hosts.", fix="add hosts to it")
        return inventory
    if not hosts:
        raise UserError("No hosts given.", fix="name hosts (gpu01.example, @local) or give -i INVENTORY")
    return Inventory(  # type: ignore[no-untyped-call]
        ([parse_target(name) for name in hosts], {}),
        override_data=dict(override_data),
    )


def parse_target(target: str) -> tuple[str, dict[str, Any]]:
    """`gpu01.example`, `admin@gpu01.example`, `gpu01.example:2222`, `@local`, `@ssh/host`."""
    if not target or target.strip() != target or any(c in target for c in "\n\0 \t"):
        raise UserError(f"{target!r} is not a host name.", fix="give host names without spaces")
    if target.startswith("@"):
        return target, {}
    data: dict[str, Any] = {}
    name = target
    if "@" in name:
        user, name = name.rsplit("@", 1)
        data["ssh_user"] = user
    if name.count(":") == 1:
        name, port = name.split(":")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise UserError(
                f"{target!r}: {port!r} is not a port.", fix="write host:port with a number, e.g. gpu01:2222"
            )
        data["ssh_port"] = int(port)
    if not name:
        raise UserError(f"{target!r} names no host.", fix="write user@host or host:port")
    return name, data
