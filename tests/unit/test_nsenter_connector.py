"""The `@nsenter/<pid>` connector's names and command lines (its runs against a real host
are in tests/e2e/test_agent.py)."""

from __future__ import annotations

import pytest
from pyinfra.api.exceptions import InventoryError
from pyinfra.api.inventory import Inventory

from gpunode.bootstrap.node.nsenter_connector import NsenterConnector, nsenter_argv


def test_names_need_a_process_id() -> None:
    (name, data, groups), *_ = NsenterConnector.make_names_data("1")
    assert name == "@nsenter/1" and data == {"nsenter_pid": 1} and groups == ["@nsenter"]
    for bad in ("", "init", "0", "-3"):
        with pytest.raises(InventoryError):
            list(NsenterConnector.make_names_data(bad))


def test_commands_enter_every_namespace_with_the_hosts_environment() -> None:
    argv = nsenter_argv(1234)
    assert argv[:2] == ["nsenter", "--target=1234"]
    assert {"--mount", "--uts", "--ipc", "--net", "--pid", "--root", "--wd"} <= set(argv)
    env = argv[argv.index("-i") + 1 :]
    assert env[0].startswith("PATH=/usr/local/sbin:") and not any("venv" in e for e in env)


def test_pyinfra_finds_the_connector_by_its_entry_point() -> None:
    inventory = Inventory((["@nsenter/1"], {}))  # type: ignore[no-untyped-call]
    host = next(iter(inventory))
    assert host.connector_cls is NsenterConnector
    assert host.data.nsenter_pid == 1
