"""The doctor's part of the host snapshot, run for real on this machine: the live NVML check
(against the fake libnvidia-ml, through the real ABI), the GPU Operator's driver container
root, and what bootstrap's snapshot leaves out."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import replace
from pathlib import Path

from doctor_support import case, healthy_view, ids, judge
from standins.fake_nvml import build_fake_nvml

from gpunode.bootstrap.core.host.diagnostics import CommandRun, parse_nvml_check
from gpunode.bootstrap.core.host.facts import HostFacts, PciGpu, parse_snapshot
from gpunode.bootstrap.node.snapshot import snapshot_command

DRIVER = "550.54.15"


def snapshot(command: str, env: dict[str, str] | None = None) -> HostFacts:
    result = subprocess.run(
        ["sh", "-c", command], capture_output=True, text=True, check=True, env={**os.environ, **(env or {})}
    )
    return parse_snapshot(result.stdout)


def test_bootstraps_snapshot_is_unchanged_and_carries_no_diagnostics() -> None:
    facts = snapshot(snapshot_command("/etc/containerd/config.toml", ()))
    assert facts.diagnostics is None
    command = snapshot_command("/etc/containerd/config.toml", ())
    assert "GPUNODE_NVML_CHECK=" not in command and "nvmlInit" not in command


def test_this_machine_has_no_nvml_and_doctor_reads_that_as_it_is() -> None:
    began = time.monotonic()
    facts = snapshot(snapshot_command("/etc/containerd/config.toml", (), diagnostics=True))
    elapsed = time.monotonic() - began
    diag = facts.diagnostics
    assert diag is not None and diag.now is not None and abs(diag.now - time.time()) < 60
    assert diag.nvml is not None and diag.nvml.load_error is not None
    assert "libnvidia-ml.so.1" in diag.nvml.load_error
    assert diag.driver_root is None
    assert elapsed < 10


def test_a_gpu_operator_driver_root_is_probed_and_its_nvml_really_loaded(tmp_path: Path, cache_dir: Path) -> None:
    """The driver container's root, as the operator mounts it: the library under
    usr/lib/x86_64-linux-gnu with a relative .so.1 link; the host's python3 loads that file
    (the fake NVML: one GPU) by path, without touching the host's own libraries."""
    library = build_fake_nvml(cache_dir) / "libnvidia-ml.so.1"
    lib_dir = tmp_path / "driver" / "usr" / "lib" / "x86_64-linux-gnu"
    lib_dir.mkdir(parents=True)
    (lib_dir / f"libnvidia-ml.so.{DRIVER}").write_bytes(library.read_bytes())
    (lib_dir / "libnvidia-ml.so.1").symlink_to(f"libnvidia-ml.so.{DRIVER}")
    root = str(tmp_path / "driver")
    facts = snapshot(
        snapshot_command("/etc/containerd/config.toml", (), diagnostics=True, driver_root=root),
        env={"FAKE_NVML_DRIVER_VERSION": DRIVER},
    )
    diag = facts.diagnostics
    assert diag is not None and diag.driver_root == root
    assert diag.driver_root_nvml is not None
    assert f"/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.{DRIVER}" in diag.driver_root_nvml.files
    assert diag.nvml is not None and diag.nvml.ok, diag.nvml
    assert diag.nvml.driver == DRIVER and diag.nvml.count == 1
    # Judged as a GPU node whose driver lives in the container: no driver verdict.
    gpu_host = replace(
        facts,
        gpus=(PciGpu("0000:3b:00.0", "0x20b5", "A100"),),
        loaded_modules=frozenset({"nvidia"}),
        nvml=replace(facts.nvml, module_version=DRIVER),
    )
    diagnosis = judge(case(host=gpu_host, view=None))
    driver_ids = [v.id for v in diagnosis.verdicts if v.link == "driver"]
    assert driver_ids == [], diagnosis
    # ... and a module of another version than the container's library is F14.
    mismatched = replace(gpu_host, nvml=replace(facts.nvml, module_version="550.90.07"))
    assert ids(judge(case(host=mismatched, view=healthy_view())))[0] == "F14"


def test_nvml_check_output_is_read_line_by_line() -> None:
    ok = parse_nvml_check(0, "driver 535.261.03\ncount 2\ndevice 0 GPU-a NVIDIA A100\ndevice 1 GPU-b NVIDIA A100\n")
    assert ok.ok and ok.count == 2 and ok.devices == ("GPU-a NVIDIA A100", "GPU-b NVIDIA A100")
    mismatch = parse_nvml_check(4, "init-error 18 Driver/library version mismatch\n")
    assert not mismatch.ok and mismatch.init_error == "Driver/library version mismatch" and mismatch.init_code == 18
    crashed = parse_nvml_check(1, "Traceback (most recent call last):\nSyntaxError: bad\n")
    assert crashed.init_error == "SyntaxError: bad"
    assert CommandRun(0, "\nGPU 0: A100 (UUID: GPU-a)\n").first_line() == "GPU 0: A100 (UUID: GPU-a)"
