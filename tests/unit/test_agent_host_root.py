"""What the agent reads from the host's root without a process: whether gpunode set the
node up (its record), and the driver's fingerprint (module version, NVML symlink chain)."""

from __future__ import annotations

import os
from pathlib import Path

from gpunode.bootstrap.orchestration.agent import driver_fingerprint, set_up_by_gpunode


def test_the_record_decides_the_default_mode(tmp_path: Path) -> None:
    assert not set_up_by_gpunode(tmp_path)
    (tmp_path / "var/lib/gpunode").mkdir(parents=True)
    (tmp_path / "var/lib/gpunode/state.json").write_text("{}")
    assert set_up_by_gpunode(tmp_path)


def test_fingerprint_follows_the_hosts_links_inside_its_root(tmp_path: Path) -> None:
    lib = tmp_path / "usr/lib/x86_64-linux-gnu"
    (lib / "nvidia/current").mkdir(parents=True)
    (tmp_path / "etc/alternatives").mkdir(parents=True)
    (tmp_path / "sys/module/nvidia").mkdir(parents=True)
    (tmp_path / "sys/module/nvidia/version").write_text("535.261.03\n")
    # Debian's chain: an absolute link into /etc/alternatives, then on to the versioned file.
    os.symlink("/etc/alternatives/nvidia--libnvidia-ml.so.1-x86_64-linux-gnu", lib / "libnvidia-ml.so.1")
    os.symlink(
        "/usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.535.261.03",
        tmp_path / "etc/alternatives/nvidia--libnvidia-ml.so.1-x86_64-linux-gnu",
    )
    before = driver_fingerprint(tmp_path)
    assert before.startswith("535.261.03|") and "libnvidia-ml.so.535.261.03" in before
    # An upgrade moves the alternative to the new file: the fingerprint changes.
    os.remove(tmp_path / "etc/alternatives/nvidia--libnvidia-ml.so.1-x86_64-linux-gnu")
    os.symlink(
        "/usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.535.309.01",
        tmp_path / "etc/alternatives/nvidia--libnvidia-ml.so.1-x86_64-linux-gnu",
    )
    after = driver_fingerprint(tmp_path)
    assert after != before and "535.309.01" in after
    (tmp_path / "sys/module/nvidia/version").write_text("535.309.01\n")
    assert driver_fingerprint(tmp_path).startswith("535.309.01|")


def test_a_host_without_a_driver_has_a_stable_empty_fingerprint(tmp_path: Path) -> None:
    assert driver_fingerprint(tmp_path) == driver_fingerprint(tmp_path) == "|||"
