"""`gpunode doctor`'s command line: bad input exits 2 naming the fix, a host that cannot be
reached is said (exit 2), never guessed about."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest


def gpunode(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpunode.bootstrap.cli.main", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_help_names_the_chain_and_the_exit_statuses() -> None:
    result = gpunode("doctor", "--help")
    assert result.returncode == 0
    assert "driver -> container toolkit" in result.stdout and "2 could not check" in result.stdout
    alerts = gpunode("render", "alerts", "--help")
    assert alerts.returncode == 0 and "GpuNodeAdvertisesZeroGpus" in alerts.stdout


@pytest.mark.parametrize(
    "args, words",
    [
        (["--no-cluster"], "leaves nothing to check"),
        (["somehost", "--no-cluster", "--pod", "a/b"], "--no-cluster leaves kubectl out"),
        (["--pod", "ns/"], "is not NAMESPACE/NAME"),
        (["bad host"], "is not a host name"),
        (["gpu01", "--ssh-key", "/no/such/key"], "does not exist"),
    ],
)
def test_bad_input_exits_2_with_the_fix(args: list[str], words: str) -> None:
    result = gpunode("doctor", *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert words in result.stderr and "Fix:" in result.stderr and result.stdout == ""


def test_an_unreachable_host_is_not_checked_exit_2() -> None:
    port = closed_port()
    result = gpunode("doctor", f"root@127.0.0.1:{port}", "--no-cluster", "--output", "json")
    assert result.returncode == 2, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["verdicts"] == []
    [item] = [n for n in data["not_checked"] if n["asked"]]
    assert "could not connect over SSH" in item["why"] and item["what"].startswith("host (GPUs, driver")
    assert [n["why"] for n in data["not_checked"] if not n["asked"]] == ["not consulted (--no-cluster)"]


def test_an_unreachable_cluster_is_not_checked_exit_2(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "kubeconfig"
    config.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "x",
                "clusters": [
                    {
                        "name": "x",
                        "cluster": {"server": f"https://127.0.0.1:{closed_port()}", "insecure-skip-tls-verify": True},
                    }
                ],
                "contexts": [{"name": "x", "context": {"cluster": "x", "user": "x"}}],
                "users": [{"name": "x", "user": {"token": "t"}}],
            }
        )
    )
    result = gpunode("doctor", "--kubeconfig", str(config))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "could not reach the cluster" in result.stdout and "not checked:" in result.stdout
    assert "could not read the cluster with" not in result.stdout  # said once, not twice
