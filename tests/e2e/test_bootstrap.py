"""`gpunode bootstrap` over real SSH against a real Debian 12 host: first run, second run,
the verify suite, a driver upgrade, and the ways a containerd config can go wrong.

The hosts get NVIDIA GPUs on their (private) PCI bus and, where a test says so, a loaded
nvidia module of a given version; everything else is real: apt installs the driver
userspace from Debian non-free, the toolkit comes from a local package directory,
containerd runs inside the host and validates what gpunode writes.
"""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomlkit
from conftest import REPO_ROOT
from standins.debian_host import DebianHost, start_debian_host
from standins.toolkit_packages import DEFAULT_VERSION, build_toolkit_packages

from e2e.bootstrap_harness import DRIVER, NEWER_DRIVER, RESTART_CONTAINERD, bootstrap, gpunode, target_args
from e2e.host_gpus import nvidia_gpus, set_pci_functions

LIBRARY = f"/usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.{DRIVER}"
NEWER_LIBRARY = f"/usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.{NEWER_DRIVER}"


@pytest.fixture(scope="module")
def toolkit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("toolkit")
    build_toolkit_packages(out, version=DEFAULT_VERSION)
    return out


def gpu_host(cache_dir: Path, name: str) -> DebianHost:
    host = start_debian_host(cache_dir, name=name)
    set_pci_functions(host, nvidia_gpus(2))
    host.set_loaded_nvidia_module(DRIVER)
    host.start_containerd()
    return host


@pytest.fixture(scope="module")
def node(cache_dir: Path) -> Iterator[DebianHost]:
    host = gpu_host(cache_dir, "gpu01")
    try:
        yield host
    finally:
        host.stop()


@pytest.fixture(scope="module")
def first_run(node: DebianHost, toolkit_dir: Path):  # type: ignore[no-untyped-def]
    return bootstrap(node, toolkit_dir=toolkit_dir)


def test_first_run_sets_up_every_link(node: DebianHost, first_run) -> None:  # type: ignore[no-untyped-def]
    assert first_run.result.returncode == 0, first_run.explain()
    host = first_run.host
    assert host["ok"] is True
    assert host["gpu_count"] == 2
    assert host["driver_version"] == DRIVER
    assert host["nvml_library"] == LIBRARY
    assert host["reboot_required"] is False
    statuses = first_run.statuses()
    assert statuses == {
        "preflight": "unchanged",
        "container-runtime": "unchanged",  # containerd is there: nothing to install
        "driver": "changed",
        "nouveau": "skipped",
        "toolkit": "changed",
        "containerd": "changed",
        "nvml-library": "unchanged",
        "plugin-service": "skipped",
        "state": "changed",
    }, first_run.explain()
    # The host really is configured: packages by apt, the runtime in containerd's own view.
    versions = node.ssh("dpkg-query -W -f='${Package} ${Version}\\n' libnvidia-ml1 nvidia-container-toolkit").stdout
    assert f"libnvidia-ml1 {DRIVER}-1" in versions and f"nvidia-container-toolkit {DEFAULT_VERSION}" in versions
    dump = node.ssh("containerd config dump").stdout
    runtime = tomlkit.parse(dump)["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["nvidia"]
    assert runtime["options"]["BinaryName"] == "/usr/bin/nvidia-container-runtime"
    assert "containerd restarted and answering" in first_run.said("containerd")
    assert node.ssh("readlink -f /lib/x86_64-linux-gnu/libnvidia-ml.so.1").stdout.strip() == LIBRARY


def test_second_run_changes_nothing(node: DebianHost, first_run, toolkit_dir: Path) -> None:  # type: ignore[no-untyped-def]
    assert first_run.result.returncode == 0, first_run.explain()
    containerd = node.containerd_pid()
    before = node.ssh("find /etc /var/lib/gpunode -newer /var/lib/gpunode/state.json -type f | wc -l").stdout
    second = bootstrap(node, toolkit_dir=toolkit_dir)
    assert second.result.returncode == 0, second.explain()
    assert set(second.statuses().values()) <= {"unchanged", "skipped"}, second.explain()
    assert node.containerd_pid() == containerd, "containerd was restarted although nothing changed"
    after = node.ssh("find /etc /var/lib/gpunode -newer /var/lib/gpunode/state.json -type f | wc -l").stdout
    assert before == after, "a no-change run wrote files"


def test_verify_suite_passes_over_ssh(node: DebianHost, first_run) -> None:  # type: ignore[no-untyped-def]
    assert first_run.result.returncode == 0, first_run.explain()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(REPO_ROOT / "tests" / "verify"),
            f"--hosts={node.testinfra_host_spec}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert " failed" not in result.stdout


def test_driver_upgrade_needs_a_reboot_then_moves_to_the_new_library(
    node: DebianHost, first_run, toolkit_dir: Path
) -> None:  # type: ignore[no-untyped-def]
    assert first_run.result.returncode == 0, first_run.explain()
    upgraded = bootstrap(node, toolkit_dir=toolkit_dir, driver=NEWER_DRIVER)
    assert upgraded.result.returncode == 1, upgraded.explain()
    assert upgraded.step("driver")["status"] == "changed"
    library = upgraded.step("nvml-library")
    assert library["status"] == "failed" and "F14" in library["detail"] and "reboot" in library["detail"]
    assert upgraded.host["reboot_required"] is True
    assert upgraded.step("state")["status"] == "skipped"
    # "Reboot": the new module is loaded now.
    node.set_loaded_nvidia_module(NEWER_DRIVER)
    after = bootstrap(node, toolkit_dir=toolkit_dir, driver=NEWER_DRIVER)
    assert after.result.returncode == 0, after.explain()
    assert after.host["nvml_library"] == NEWER_LIBRARY
    assert after.host["driver_version"] == NEWER_DRIVER
    assert after.step("nvml-library")["status"] == "changed"
    assert LIBRARY in after.step("nvml-library")["detail"], "the summary says where the library moved from"
    assert after.step("state")["status"] == "changed"
    state = node.ssh("cat /var/lib/gpunode/state.json").stdout
    assert NEWER_LIBRARY in state


# --------------------------------------------------------------------------------------
# containerd configs that go wrong
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cd_node(cache_dir: Path, toolkit_dir: Path) -> Iterator[DebianHost]:
    """A second host, bootstrapped once, whose containerd config the tests then break."""
    host = gpu_host(cache_dir, "gpu02")
    try:
        run = bootstrap(host, toolkit_dir=toolkit_dir)
        assert run.result.returncode == 0, run.explain()
        yield host
    finally:
        host.stop()


def files_of(host: DebianHost) -> dict[str, bytes]:
    listing = host.ssh("find /etc/containerd -type f | sort").stdout.split()
    return {path: base64.b64decode(host.ssh(f"base64 -w0 {path}").stdout) for path in listing}


def reset_containerd_config(host: DebianHost, main: str, extra: dict[str, str] | None = None) -> None:
    host.exec("rm -rf /etc/containerd/conf.d")
    host.put_file("/etc/containerd/config.toml", main)
    for path, text in (extra or {}).items():
        host.put_file(path, text)


def test_malformed_config_fails_clearly_and_stays_byte_for_byte(cd_node: DebianHost, toolkit_dir: Path) -> None:
    broken = 'version = 2\n# the operator was editing this\n[plugins."io.containerd.grpc.v1.cri"\nsandbox_image = 1\n'
    reset_containerd_config(cd_node, broken)
    before = files_of(cd_node)
    run = bootstrap(cd_node, toolkit_dir=toolkit_dir)
    assert run.result.returncode == 1, run.explain()
    step = run.step("containerd")
    assert step["status"] == "failed"
    assert "/etc/containerd/config.toml" in step["detail"] and "Fix:" in step["detail"]
    assert files_of(cd_node) == before


def test_config_that_fails_validation_is_rolled_back(cd_node: DebianHost, toolkit_dir: Path) -> None:
    # Another file in `imports` (sorted after gpunode's) redefines the runtime: what gpunode
    # writes is correct on its own but not in containerd's effective config.
    main = 'version = 2\nimports = ["/etc/containerd/conf.d/*.toml"]\n'
    override = (
        'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia]\n'
        'runtime_type = "io.containerd.runc.v2"\n'
        '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia.options]\n'
        'BinaryName = "/usr/sbin/runc"\n'
    )
    reset_containerd_config(cd_node, main, {"/etc/containerd/conf.d/zz-local.toml": override})
    before = files_of(cd_node)
    pid = cd_node.containerd_pid()
    run = bootstrap(cd_node, toolkit_dir=toolkit_dir)
    assert run.result.returncode == 1, run.explain()
    step = run.step("containerd")
    assert step["status"] == "failed"
    assert "did not validate" in run.said("containerd") and "/usr/sbin/runc" in run.said("containerd")
    assert files_of(cd_node) == before, "the previous files are back"
    assert cd_node.containerd_pid() == pid, "containerd was not restarted onto a config that failed validation"


def test_failed_restart_restores_the_config_and_containerd_runs_again(cd_node: DebianHost, toolkit_dir: Path) -> None:
    reset_containerd_config(cd_node, "version = 2\n")
    cd_node.ssh(RESTART_CONTAINERD)
    before = files_of(cd_node)
    # A service manager that refuses to start containerd with the new drop-in in place.
    flaky = (
        "if grep -qs nvidia-container-runtime /etc/containerd/conf.d/99-nvidia.toml; then "
        "echo 'Job for containerd.service failed' >&2; exit 1; fi; " + RESTART_CONTAINERD
    )
    run = bootstrap(cd_node, "--containerd-restart-command", flaky, toolkit_dir=toolkit_dir)
    assert run.result.returncode == 1, run.explain()
    step = run.step("containerd")
    detail = " ".join([step["detail"], *step.get("notes", [])])  # what it found while running is in its notes
    assert "restarting containerd failed" in detail and "containerd is running on it again" in detail, detail
    assert files_of(cd_node) == before
    assert cd_node.ssh("ctr --connect-timeout 2s version", check=False).returncode == 0


def test_hostile_values_reach_the_host_quoted(cd_node: DebianHost, toolkit_dir: Path) -> None:
    reset_containerd_config(cd_node, "version = 2\n")
    hostile = "/opt/nvidia'$(touch /tmp/pwned1)\";touch /tmp/pwned2;`touch /tmp/pwned3`/runtime"
    run = bootstrap(cd_node, "--runtime-path", hostile, toolkit_dir=toolkit_dir)
    assert run.step("containerd")["status"] == "changed", run.explain()
    assert cd_node.ssh("ls /tmp/pwned1 /tmp/pwned2 /tmp/pwned3 2>/dev/null | wc -l").stdout.strip() == "0"
    dump = tomlkit.parse(cd_node.ssh("containerd config dump").stdout)
    runtime = dump["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["nvidia"]
    assert runtime["options"]["BinaryName"] == hostile
    newline = gpunode("bootstrap", *target_args(cd_node), "--yes", "--runtime-path", "/usr/bin/x\n;reboot")
    assert newline.returncode == 2 and "newline" in newline.stderr and "Fix:" in newline.stderr
