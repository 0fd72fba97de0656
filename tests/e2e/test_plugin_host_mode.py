"""Homelab mode (--plugin-mode host): the plugin in its own venv on the node, from a local
wheelhouse (no index reachable from the host), and its systemd unit.

The test hosts have no systemd, so the unit is written and the step says it could not be
started; the installed plugin is then run by hand on the host against Debian's real
libnvidia-ml, which, with no GPU driver loaded, must fail loudly with the right reason.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from standins.debian_host import DebianHost, start_debian_host
from standins.toolkit_packages import build_toolkit_packages

from e2e.bootstrap_harness import bootstrap
from e2e.host_gpus import nvidia_gpus, set_pci_functions
from gpunode.bootstrap.core.plugin_dependencies import PLUGIN_DEPENDENCIES

UNIT = "/etc/systemd/system/gpunode-device-plugin.service"


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """gpunode built from this checkout, and the plugin's dependencies for Debian 12's Python."""
    out = tmp_path_factory.mktemp("wheels")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "-w", str(out), str(REPO_ROOT)], check=True, capture_output=True, text=True
    )
    subprocess.run(
        [
            *pip,
            "download",
            "-d",
            str(out),
            "--only-binary=:all:",
            "--python-version",
            "3.11",
            "--platform",
            "manylinux2014_x86_64",
            "--platform",
            "manylinux_2_28_x86_64",
            *PLUGIN_DEPENDENCIES,
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return out


@pytest.fixture(scope="module")
def homelab(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DebianHost, Path]]:
    toolkit = tmp_path_factory.mktemp("toolkit")
    build_toolkit_packages(toolkit)
    host = start_debian_host(cache_dir, name="homelab")
    set_pci_functions(host, nvidia_gpus(1))
    host.set_loaded_nvidia_module("535.261.03")
    host.start_containerd()
    try:
        yield host, toolkit
    finally:
        host.stop()


def test_host_mode_installs_the_plugin_in_its_own_venv_and_writes_the_unit(
    homelab: tuple[DebianHost, Path], wheelhouse: Path
) -> None:
    host, toolkit = homelab
    run = bootstrap(host, "--plugin-mode", "host", "--plugin-wheels", str(wheelhouse), toolkit_dir=toolkit)
    assert run.result.returncode == 0, run.explain()
    step = run.step("plugin-service")
    assert step["status"] == "changed", run.explain()
    assert "no systemd on this host" in run.said("plugin-service")
    unit = host.ssh(f"cat {UNIT}").stdout
    assert 'ExecStart="/opt/gpunode/venv/bin/python" -m gpunode.plugin serve' in unit
    assert '"GPUNODE_KUBELET_DIR=/var/lib/kubelet/device-plugins"' in unit
    assert '"GPUNODE_DRIVER_VERSION=535.261.03"' in unit
    # Only the plugin's dependencies: the operator side (pyinfra, gevent) stays out.
    imports = host.ssh(
        "/opt/gpunode/venv/bin/python -c 'import gpunode.plugin.serve, grpc, pynvml' "
        "&& ! /opt/gpunode/venv/bin/python -c 'import pyinfra' 2>/dev/null && echo plugin-only",
        check=False,
    )
    assert imports.stdout.strip() == "plugin-only", imports.stderr

    # The installed plugin, run as the unit would, on a host whose driver has no kernel
    # side: Debian's real libnvidia-ml loads and NVML says the driver is not loaded.
    served = host.ssh(
        "GPUNODE_KUBELET_DIR=/var/lib/kubelet/device-plugins timeout 20 "
        "/opt/gpunode/venv/bin/python -m gpunode.plugin serve",
        check=False,
    )
    assert served.returncode == 1, served
    assert "nvml_init_failed reason=driver_not_loaded" in served.stderr, served.stderr

    again = bootstrap(host, "--plugin-mode", "host", "--plugin-wheels", str(wheelhouse), toolkit_dir=toolkit)
    assert again.result.returncode == 0, again.explain()
    assert again.step("plugin-service")["status"] == "unchanged", again.explain()


def test_an_empty_wheelhouse_is_refused_with_the_fix(homelab: tuple[DebianHost, Path], tmp_path: Path) -> None:
    host, toolkit = homelab
    host.exec("rm -rf /opt/gpunode")
    run = bootstrap(host, "--plugin-mode", "host", "--plugin-wheels", str(tmp_path), toolkit_dir=toolkit)
    assert run.result.returncode == 1
    detail = run.step("plugin-service")["detail"]
    assert "holds no .whl files" in detail and "Fix:" in detail
