"""Converged in one run: for every setting that changes what a step writes, a second run on
the unchanged host reports `unchanged` for every step and writes no file.

Real Debian 12 hosts over SSH, real apt (Debian's driver userspace), the toolkit from a
local package directory, containerd validating what gpunode writes. What this machine
cannot vary: kernel module mode dkms and precompiled (Debian has no headers for this
machine's kernel, and no precompiled modules at all), the toolkit from NVIDIA's repository
(not reachable here) and host plugin mode (tests/e2e/test_plugin_host_mode.py runs it, and
its second run).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from standins.debian_host import DebianHost, start_debian_host

from e2e.bootstrap_harness import DRIVER, NEWER_DRIVER, bootstrap
from e2e.host_gpus import nvidia_gpus, set_pci_functions

MARKER = "/run/gpunode-test-run2"
WATCHED = "/etc /var/lib/gpunode /opt /usr /root"


@pytest.fixture
def gpu_host(cache_dir: Path) -> Iterator[DebianHost]:
    host = start_debian_host(cache_dir, name="gpu-converge")
    try:
        set_pci_functions(host, nvidia_gpus(1))
        host.start_containerd()
        yield host
    finally:
        host.stop()


@pytest.mark.parametrize("driver", [DRIVER, None], ids=["driver-version-given", "no-driver-version"])
@pytest.mark.parametrize("placement", ["drop-in", "in-place"])
def test_second_run_is_unchanged_and_writes_nothing(
    gpu_host: DebianHost, toolkit_package_dir: Path, driver: str | None, placement: str
) -> None:
    extra = ("--in-place",) if placement == "in-place" else ()
    # Without --driver-version apt installs the branch's current release (bookworm-security's):
    # the loaded module is that one, as on a host that booted the driver it was given.
    gpu_host.set_loaded_nvidia_module(driver or NEWER_DRIVER)
    first = bootstrap(gpu_host, *extra, toolkit_dir=toolkit_package_dir, driver=driver)
    assert first.result.returncode == 0, first.explain()
    assert first.statuses()["driver"] == "changed"

    gpu_host.exec(f"touch {MARKER}; sleep 1.1")  # file times have a resolution of a tick
    second = bootstrap(gpu_host, *extra, toolkit_dir=toolkit_package_dir, driver=driver)
    assert second.result.returncode == 0, second.explain()
    changed = {name: status for name, status in second.statuses().items() if status not in ("unchanged", "skipped")}
    assert changed == {}, second.explain()
    written = gpu_host.exec(f"find {WATCHED} -xdev -newer {MARKER} -not -type d 2>/dev/null | sort").stdout.split()
    assert written == [], written


def test_a_package_apt_cannot_install_fails_the_plan(gpu_host: DebianHost, toolkit_package_dir: Path) -> None:
    """This machine's kernel is no Debian kernel: apt has no headers for it, and the plan says so."""
    gpu_host.set_loaded_nvidia_module(DRIVER)
    release = gpu_host.exec("uname -r").stdout.strip()
    assert gpu_host.exec(
        f"apt-cache policy linux-headers-{release} | grep -c Candidate", check=False
    ).stdout.strip() in (
        "",
        "0",
    ), "the premise: Debian ships no headers for this kernel"
    packages = gpu_host.exec("dpkg-query -W | sort").stdout
    for extra in (("--dry-run",), ()):
        run = bootstrap(gpu_host, "--kernel-module", "dkms", *extra, toolkit_dir=toolkit_package_dir)
        driver = run.step("driver")
        assert driver["status"] == "failed", run.explain()
        assert (
            f"no installation candidate for linux-headers-{release}" in driver["detail"] and "Fix:" in driver["detail"]
        )
        assert gpu_host.exec("dpkg-query -W | sort").stdout == packages, "nothing installed"
