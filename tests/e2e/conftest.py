"""Fixtures for end-to-end tests against disposable Debian 12 hosts behind a real sshd.

    debian_host            a fresh host per test (function scope), stopped afterwards
    start_hosts(n)         starts n hosts at once (names <prefix>-1 ...), all stopped afterwards
    toolkit_package_dir    a directory with the four NVIDIA toolkit stand-in packages
                           (1.17.8-1) and their `Packages` index, built once per session

Every test under tests/e2e is marked `e2e`. The hosts need root; the first one builds the
root filesystem with mmdebstrap (about a minute and a half, then cached).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from standins.debian_host import DebianHost, start_debian_host, start_debian_hosts, stop_all
from standins.toolkit_packages import DEFAULT_VERSION, build_toolkit_packages

E2E_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_DIR in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture
def debian_host(cache_dir: Path) -> Iterator[DebianHost]:
    host = start_debian_host(cache_dir, name="gpunode-e2e")
    try:
        yield host
    finally:
        host.stop()


@pytest.fixture
def start_hosts(cache_dir: Path) -> Iterator[Callable[..., list[DebianHost]]]:
    started: list[DebianHost] = []

    def start(count: int, name_prefix: str = "gpunode-e2e") -> list[DebianHost]:
        hosts = start_debian_hosts(cache_dir, count, name_prefix=name_prefix)
        started.extend(hosts)
        return hosts

    try:
        yield start
    finally:
        stop_all(started)


@pytest.fixture(scope="session")
def toolkit_package_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("toolkit-packages")
    build_toolkit_packages(out, version=DEFAULT_VERSION)
    return out
