"""Which hosts a command works on: names on the command line, or a pyinfra inventory file."""

from __future__ import annotations

import difflib
import re
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pyinfra.api.inventory import Inventory

from gpunode.bootstrap.errors import UserError
from gpunode.bootstrap.local_paths import check_local_file


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
        if not user or any(c.isspace() or ord(c) < 32 for c in user) or user.startswith("-"):
            raise UserError(f"--ssh-user {user!r} is not a user name.", fix="give the login name on the hosts")
        data["ssh_user"] = user
    if port is not None:
        data["ssh_port"] = port
    if key is not None:
        data["ssh_key"] = str(check_local_file("--ssh-key", key))
    if config_file is not None:
        data["ssh_config_file"] = str(check_local_file("--ssh-config", config_file))
    if known_hosts is not None:
        data["ssh_known_hosts_file"] = str(check_local_file("--known-hosts", known_hosts, may_be_missing=True))
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
        path = check_local_file("-i/--inventory", inventory_file)
        _refuse_other_formats(inventory_file, path)
        # pyinfra's own loader understands inventory files with group_data/ next to them;
        # it records the file it executes on the current state, so it needs one in context.
        from pyinfra.api.state import State
        from pyinfra.context import ctx_state
        from pyinfra_cli.inventory import make_inventory_from_files

        try:
            with ctx_state.use(State()):
                inventory: Inventory = make_inventory_from_files(str(path), override_data=dict(override_data))
        except Exception as exc:
            raise _inventory_error(inventory_file, exc) from None
        if not list(inventory):
            raise UserError(f"Inventory file {inventory_file} lists no hosts.", fix="add hosts to it")
        for host in inventory:
            check_host_name(host.name, f"{inventory_file}: host")
        return inventory
    if not hosts:
        raise UserError("No hosts given.", fix="name hosts (gpu01.example, @local) or give -i INVENTORY")
    targets = [parse_target(name) for name in hosts]
    try:
        return Inventory(  # type: ignore[no-untyped-call]
            (targets, {}),
            override_data=dict(override_data),
        )
    except Exception as exc:
        raise _inventory_error("the command line", exc) from None


_INI_SECTION = re.compile(r"^\s*\[[A-Za-z0-9_.:-]+\]\s*$", re.MULTILINE)


def _refuse_other_formats(given: str, path: Path) -> None:
    """An Ansible-style INI or YAML inventory may even parse as Python; say what it is."""
    try:
        head = path.read_bytes()[:65536].decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return  # the loader says why
    stripped = head.lstrip()
    if _INI_SECTION.search(head) and not stripped.startswith(("#", "import", "from", '"""')):
        kind = "an INI (Ansible-style) inventory"
    elif stripped.startswith(("---", "all:")) or given.endswith((".yml", ".yaml")):
        kind = "a YAML inventory"
    else:
        return
    raise UserError(
        f"Inventory file {given} looks like {kind}; gpunode reads pyinfra inventories, which are Python.",
        fix='write it as Python lists of hosts, e.g. gpus = ["gpu01.example"] (see inventory/fleet.py)',
    )


def _inventory_error(source: str, exc: BaseException) -> UserError:
    """What is wrong with an inventory pyinfra could not load, in one sentence."""
    inner = getattr(exc, "exception", exc)  # pyinfra_cli wraps errors raised by the file's code
    fix = "fix the inventory file: it is Python that sets lists of hosts (see inventory/fleet.py)"
    if isinstance(inner, SyntaxError):
        where = f"line {inner.lineno}" if inner.lineno else "its text"
        problem = f"Inventory file {source} is not Python pyinfra can load ({where}: {inner.msg})."
        if source.endswith((".ini", ".cfg", ".yml", ".yaml", ".txt")) or "[" in (inner.text or "")[:1]:
            fix = "write the inventory in Python (pyinfra reads no INI or YAML inventories): see inventory/fleet.py"
        return UserError(problem, fix=fix)
    if isinstance(inner, UnicodeDecodeError):
        return UserError(
            f"Inventory file {source} is not UTF-8 text (byte {inner.start}): it is not a Python file.", fix=fix
        )
    line = ""
    trace = getattr(inner, "_traceback", None) or inner.__traceback__
    for frame, lineno in traceback.walk_tb(trace):
        if frame.f_code.co_filename == getattr(exc, "filename", None):
            line = f" at line {lineno}"
    name = type(inner).__name__
    connector = re.search(r"Invalid connector: (\S+)", str(inner)) if name == "NoConnectorError" else None
    if connector:
        try:
            check_host_name("@" + connector.group(1), f"{source}: host")
        except UserError as exc:
            return exc
    if name == "NoConnectorError":
        return UserError(f"{source}: {inner}.", fix="use @local for this machine, or a host name for SSH")
    return UserError(f"Inventory file {source} failed{line}: {name}: {inner}.", fix=fix)


def _connectors() -> list[str]:
    from importlib.metadata import entry_points

    return sorted(entry.name for entry in entry_points(group="pyinfra.connectors"))


def check_host_name(name: str, source: str) -> None:
    """A host name gpunode can connect to, checked before any connection: an @connector
    pyinfra has, or a DNS name or address within DNS's limits."""
    if not name or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in name):
        raise UserError(
            f"{source} {name!r} is not a host name.", fix="give host names without spaces or control characters"
        )
    if name.startswith("@"):
        connector = name[1:].split("/", 1)[0]
        known = _connectors()
        if connector not in known:
            close = difflib.get_close_matches(connector, known, n=1)
            hint = f"did you mean @{close[0]}? Otherwise u" if close else "U"
            raise UserError(
                f"{source} {name!r} names no pyinfra connector ({connector!r}).",
                fix=f"{hint}se @local for this machine, a host name for SSH, or one of "
                + ", ".join("@" + c for c in known),
            )
        return
    if len(name) > 253 or any(len(label) > 63 for label in name.split(".")):
        raise UserError(
            f"{source} {name[:40]!r}... ({len(name)} characters) is longer than a host name can be.",
            fix="give a host name of at most 253 characters, each dot-separated part at most 63",
        )
    if name.startswith("-"):
        raise UserError(
            f"{source} {name!r} starts with '-', which ssh would take as an option.", fix="give a host name"
        )


def parse_target(target: str) -> tuple[str, dict[str, Any]]:
    """`gpu01.example`, `admin@gpu01.example`, `gpu01.example:2222`, `@local`, `@ssh/host`."""
    if not target or target.strip() != target or any(c in target for c in "\n\0 \t"):
        raise UserError(f"{target!r} is not a host name.", fix="give host names without spaces")
    if target.startswith("@"):
        check_host_name(target, "host")
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
    check_host_name(name, "host")
    return name, data


def check_inventory(inventory: Inventory, overrides: Mapping[str, Any], source: str) -> None:
    """Every host's settings and SSH data, from the inventory and the flags, checked before
    any host is contacted, each error naming where the value came from."""
    from gpunode.bootstrap.core.settings import DATA_PREFIX, resolve_settings

    for host in inventory:
        where = f"{source}: host {host.name}"
        data = host.data.dict()  # type: ignore[no-untyped-call]
        settings = resolve_settings(where, data, overrides)
        given = {k: v for k, v in overrides.items() if v is not None}
        for name, flag in (("toolkit_packages", "--toolkit-packages"), ("plugin_wheels", "--plugin-wheels")):
            value = getattr(settings, name)
            if value is not None:
                label = flag if name in given else f"{where}: setting {DATA_PREFIX}{name}"
                check_local_file(label, value, directory=True)
        port = data.get("ssh_port")
        if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536):
            raise UserError(f"{where}: ssh_port = {port!r} is not a port.", fix="set ssh_port to a number, e.g. 22")
        for key in ("ssh_key", "ssh_config_file", "ssh_known_hosts_file"):
            value = data.get(key)
            if value is None:
                continue
            if not isinstance(value, str):
                raise UserError(f"{where}: {key} = {value!r} is not a path.", fix=f"set {key} to a file path")
            check_local_file(f"{where}: {key}", value, may_be_missing=key == "ssh_known_hosts_file")
        user = data.get("ssh_user")
        if user is not None and (
            not isinstance(user, str) or not user or any(c.isspace() or ord(c) < 32 for c in user)
        ):
            raise UserError(f"{where}: ssh_user = {user!r} is not a user name.", fix="set ssh_user to a login name")
