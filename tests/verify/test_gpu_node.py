"""The testinfra verify suite: is this host the GPU node gpunode recorded it to be?

Run it against your own hosts after `gpunode bootstrap`:

    pytest tests/verify --hosts=ssh://gpu01.example
    pytest tests/verify --hosts=local://            # on the node itself (the Vagrant VM)

It reads what bootstrap recorded in /var/lib/gpunode/state.json and checks the host
against it, link by link: driver packages, the real NVML library, the loaded module, the
container toolkit, the nvidia runtime in containerd's *effective* config, and leftovers.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from gpunode.bootstrap.core.containerd.effective import runtime_problems
from gpunode.bootstrap.core.host.record import STATE_PATH, HostRecord, parse_record
from gpunode.bootstrap.core.packages.toolkit import TOOLKIT_PACKAGES
from gpunode.bootstrap.node.remote_files import BACKUP_ROOT, BACKUPS_KEPT


@pytest.fixture(scope="module")
def record(host: Any) -> HostRecord:
    state = host.file(STATE_PATH)
    assert state.exists, f"{STATE_PATH} is missing: gpunode bootstrap has not completed on this host"
    parsed = parse_record(state.content_string)
    assert parsed is not None, f"{STATE_PATH} is not a gpunode record: {state.content_string[:200]!r}"
    return parsed


def test_record_is_complete(record: HostRecord) -> None:
    assert record.driver_version, "no driver version recorded"
    assert record.nvml_library, "no NVML library recorded"
    assert record.toolkit_version, "no container toolkit version recorded"


def test_driver_packages_are_installed_at_the_recorded_versions(host: Any, record: HostRecord) -> None:
    assert record.driver_packages, "the record lists no driver packages"
    for name, version in record.driver_packages.items():
        package = host.package(name)
        assert package.is_installed, f"{name} is not installed"
        assert package.version == version, f"{name} is {package.version}, recorded {version}"


def test_the_nvml_library_is_the_real_file_libnvidia_ml_so_1_resolves_to(host: Any, record: HostRecord) -> None:
    assert record.nvml_library is not None
    library = host.file(record.nvml_library)
    assert library.exists and library.is_file and not library.is_symlink, (
        f"{record.nvml_library} is not a regular file (a hostPath mount of it would fail: F2)"
    )
    assert record.nvml_library.endswith(f".so.{record.driver_version}")
    cache = host.run("ldconfig -p")
    entries = re.findall(r"libnvidia-ml\.so\.1 \(([^)]*)\) => (\S+)", cache.stdout)
    native = [path for flags, path in entries if "x86-64" in flags or "AArch64" in flags]
    assert native, f"ldconfig does not know libnvidia-ml.so.1:\n{cache.stdout}"
    resolved = host.run("readlink -f %s", native[0]).stdout.strip()
    assert resolved == record.nvml_library


def test_a_loaded_module_matches_the_library(host: Any, record: HostRecord) -> None:
    module = host.file("/sys/module/nvidia/version")
    if not module.exists:
        assert record.kernel_module == "none", "no nvidia kernel module is loaded"
        pytest.skip("kernel module mode none and no module loaded on this host")
    assert module.content_string.strip() == record.driver_version, (
        "Driver/library version mismatch (F14): reboot onto the new module"
    )


def test_container_toolkit_is_installed_as_one_version(host: Any, record: HostRecord) -> None:
    versions = {name: host.package(name).version for name in TOOLKIT_PACKAGES}
    assert set(versions.values()) == {record.toolkit_version}, versions
    assert record.runtime_path is not None
    runtime = host.file(record.runtime_path)
    assert runtime.exists and runtime.mode & 0o111, f"{record.runtime_path} is missing or not executable"


def test_containerd_effective_config_has_the_nvidia_runtime(host: Any, record: HostRecord) -> None:
    dump = host.run("containerd config dump")
    assert dump.rc == 0, f"containerd cannot load its config: {dump.stderr}"
    assert runtime_problems(dump.stdout, binary_name=record.runtime_path) == ()


def test_no_stray_files(host: Any) -> None:
    leftovers = host.run(
        "find /etc/containerd /etc/apt /etc/modprobe.d /etc/systemd/system /var/lib/gpunode "
        "-name '*.gpunode-new' 2>/dev/null"
    ).stdout.split()
    assert leftovers == [], f"temporary files left behind: {leftovers}"
    in_etc = host.run("find /etc/containerd -name '*.bak' -o -name '*.orig' -o -name '*~' 2>/dev/null").stdout.split()
    assert in_etc == [], f"backups belong in {BACKUP_ROOT}, not next to the config: {in_etc}"
    sets = host.run("ls -1 %s 2>/dev/null", BACKUP_ROOT).stdout.split()
    assert len(sets) <= BACKUPS_KEPT


def test_host_plugin_service(host: Any, record: HostRecord) -> None:
    if record.plugin_mode != "host":
        pytest.skip("the plugin runs as a DaemonSet on this node")
    unit = host.file("/etc/systemd/system/gpunode-device-plugin.service")
    assert unit.exists
    assert f"GPUNODE_DRIVER_VERSION={record.driver_version}" in unit.content_string
    if host.file("/run/systemd/system").exists:
        assert host.service("gpunode-device-plugin").is_running


def test_state_record_is_valid_json(host: Any) -> None:
    json.loads(host.file(STATE_PATH).content_string)
