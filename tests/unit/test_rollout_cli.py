"""Bad rollout options to `gpunode bootstrap`: exit 2 with the fix, before any cluster or
host is contacted (the host names below do not resolve)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def gpunode(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpunode.bootstrap.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--max-unavailable", "0"], "--max-unavailable '0' is not a node count or a percentage."),
        (["--max-unavailable", "150%"], "Fix: Give a whole number of nodes (1, 2) or a percentage from 1% to 100%"),
        (["--max-parallel-reboots", "2"], "--max-parallel-reboots is for --skip-cluster runs."),
        (["--drain-timeout", "-1"], "--drain-timeout"),
    ],
)
def test_bad_rollout_options_are_refused_before_anything_is_contacted(args: list[str], words: str) -> None:
    result = gpunode("bootstrap", "gpu01.invalid", "--yes", *args)
    assert result.returncode == 2, result.stderr
    assert words in result.stderr
    assert "connecting" not in result.stderr


def test_json_says_it_too() -> None:
    result = gpunode("bootstrap", "gpu01.invalid", "--yes", "--output", "json", "--max-unavailable", "x")
    doc = json.loads(result.stdout)
    assert doc["exit_code"] == 2 and doc["error"]["kind"] == "bad_input"
    assert "--max-unavailable 'x'" in doc["error"]["problem"]
