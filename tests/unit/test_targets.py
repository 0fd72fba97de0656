"""Which hosts a command works on, and with what data."""

from __future__ import annotations

import pytest
from conftest import REPO_ROOT

from gpunode.bootstrap.core.settings import resolve_settings
from gpunode.bootstrap.errors import UserError
from gpunode.bootstrap.orchestration.targets import make_inventory, parse_target, ssh_data


def test_host_arguments_carry_user_and_port() -> None:
    assert parse_target("gpu01.example") == ("gpu01.example", {})
    assert parse_target("admin@gpu01.example:2222") == ("gpu01.example", {"ssh_user": "admin", "ssh_port": 2222})
    assert parse_target("@local") == ("@local", {})
    for bad in ("gpu01:http", "gpu 01", "", "admin@", "gpu01:70000"):
        with pytest.raises(UserError):
            parse_target(bad)


def test_the_example_fleet_inventory_loads_with_its_group_data() -> None:
    inventory = make_inventory(
        (),
        str(REPO_ROOT / "inventory" / "fleet.py"),
        ssh_data(user=None, port=None, key=None, config_file=None, known_hosts=None, sudo=None),
    )
    hosts = {host.name: host for host in inventory}
    assert set(hosts) == {"gpu01.example", "gpu02.example", "gpu03.example", "gpu04.example", "gpu10.example"}
    gpu04 = hosts["gpu04.example"].data.dict()
    assert gpu04["ssh_user"] == "admin" and gpu04["_sudo"] is True
    settings = resolve_settings("gpu04.example", gpu04, {})
    assert settings.kernel_module == "none" and settings.driver_branch == "535"
    assert settings.toolkit_version == "1.17.8-1"
    airgapped = resolve_settings("gpu10.example", hosts["gpu10.example"].data.dict(), {})
    assert airgapped.toolkit_packages == "packages/nvidia-container-toolkit"
    assert hosts["gpu03.example"].data.get("ssh_port") == 2222


def test_flags_override_inventory_data() -> None:
    inventory = make_inventory(
        (),
        str(REPO_ROOT / "inventory" / "fleet.py"),
        ssh_data(user="root", port=None, key=None, config_file=None, known_hosts=None, sudo=False),
    )
    for host in inventory:
        assert host.data.get("ssh_user") == "root" and host.data.get("_sudo") is False


def test_homelab_inventory_is_local() -> None:
    inventory = make_inventory((), str(REPO_ROOT / "inventory" / "homelab.py"), {})
    (host,) = list(inventory)
    assert host.name == "@local"
    assert resolve_settings("@local", host.data.dict(), {}).plugin_mode == "host"


def test_hosts_and_an_inventory_together_are_refused() -> None:
    with pytest.raises(UserError):
        make_inventory(("gpu01",), str(REPO_ROOT / "inventory" / "fleet.py"), {})
    with pytest.raises(UserError):
        make_inventory((), "no/such/inventory.py", {})
    with pytest.raises(UserError):
        make_inventory((), None, {})
