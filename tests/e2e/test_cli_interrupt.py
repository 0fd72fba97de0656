"""Ctrl-C and SIGTERM in the middle of a real bootstrap over SSH: the contract's exit codes
(130, 143), no traceback, one JSON document that says how far the run got, and a re-run
that finishes the job."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
from standins.debian_host import DebianHost

from e2e.bootstrap_harness import DRIVER, RESTART_CONTAINERD, bootstrap, target_args
from e2e.test_bootstrap import gpu_host, toolkit_dir  # noqa: F401 (toolkit_dir is a fixture)
from gpunode.bootstrap.cli.contract import SCHEMA_PATH

SCHEMA = json.loads(SCHEMA_PATH.read_text())


@pytest.fixture
def node(cache_dir: Path) -> Iterator[DebianHost]:
    host = gpu_host(cache_dir, "gpu-int")
    try:
        yield host
    finally:
        host.stop()


def _start(host: DebianHost, toolkit: Path) -> subprocess.Popen[str]:
    args = [
        "bootstrap",
        *target_args(host),
        "--yes",
        "--output",
        "json",
        "--skip-cluster",
        "--kernel-module",
        "none",
        "--driver-version",
        DRIVER,
        "--toolkit-packages",
        str(toolkit),
        "--containerd-restart-command",
        RESTART_CONTAINERD,
    ]
    return subprocess.Popen(
        [sys.executable, "-m", "gpunode.bootstrap.cli.main", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _stop_when(process: subprocess.Popen[str], line_part: str, signum: int, delay: float) -> tuple[str, str, int]:
    """Read stderr until a line contains `line_part`, wait `delay`, send `signum`, collect."""
    assert process.stderr is not None and process.stdout is not None
    seen: list[str] = []
    selector = selectors.DefaultSelector()
    selector.register(process.stderr, selectors.EVENT_READ)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if not selector.select(timeout=1):
            continue
        line = process.stderr.readline()
        if not line:
            break
        seen.append(line)
        if line_part in line:
            break
    else:
        process.kill()
        raise AssertionError("never saw " + line_part + ":\n" + "".join(seen))
    assert process.poll() is None, "".join(seen)
    time.sleep(delay)
    process.send_signal(signum)
    stdout, rest = process.communicate(timeout=120)
    return stdout, "".join(seen) + rest, process.returncode


def test_ctrl_c_mid_step_then_sigterm_then_a_rerun_finishes(node: DebianHost, toolkit_dir: Path) -> None:
    # Ctrl-C while the driver packages are being installed over SSH.
    stdout, stderr, code = _stop_when(_start(node, toolkit_dir), "driver: will change", signal.SIGINT, 1.0)
    assert code == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert "gpunode: interrupted (Ctrl-C)" in stderr and "Fix: Run the same command again" in stderr, stderr
    document = json.loads(stdout)
    jsonschema.validate(document, SCHEMA)
    assert document["exit_code"] == 130 and document["error"]["kind"] == "interrupted"
    cut_off = document["interrupted"]["cut_off"]
    assert [entry["host"] for entry in cut_off] == [node.address] and "driver" in cut_off[0]["steps"], document

    # SIGTERM (a CI job cancelled) while the host is read: 143, same shape.
    stdout, stderr, code = _stop_when(_start(node, toolkit_dir), "connecting to", signal.SIGTERM, 0.3)
    assert code == 143, stderr
    assert "Traceback" not in stderr, stderr
    document = json.loads(stdout)
    jsonschema.validate(document, SCHEMA)
    assert document["exit_code"] == 143 and "terminated (SIGTERM)" in document["error"]["problem"]

    # What the message promises: running the same command again finishes the job.
    again = bootstrap(node, toolkit_dir=toolkit_dir)
    assert again.result.returncode == 0, again.explain()
    assert "failed" not in again.statuses().values(), again.explain()
