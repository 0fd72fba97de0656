"""Running the real `gpunode bootstrap` command against test hosts, and reading its answer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from standins.debian_host import DebianHost

# Debian 12's driver in bookworm main, and the newer one bookworm-security carries.
DRIVER = "535.261.03"
NEWER_DRIVER = "535.309.01"

# containerd runs as a plain process in the test hosts (sshd is PID 1, no systemd): this is
# how such a host restarts it, the way a runit or supervisord host would be told to.
RESTART_CONTAINERD = (
    "pkill -x containerd; while pgrep -x containerd >/dev/null; do sleep 0.1; done; "
    "setsid containerd </dev/null >>/var/log/containerd.log 2>&1 &"
)


@dataclass
class Run:
    result: subprocess.CompletedProcess[str]
    summary: dict[str, Any]

    @property
    def host(self) -> dict[str, Any]:
        hosts = self.summary["hosts"]
        assert len(hosts) == 1, hosts
        return hosts[0]  # type: ignore[no-any-return]

    def step(self, name: str) -> dict[str, Any]:
        for step in self.host["steps"]:
            if step["name"] == name:
                return step  # type: ignore[no-any-return]
        raise AssertionError(f"no step {name}: {self.host['steps']}")

    def said(self, name: str) -> str:
        """A step's detail with its notes (what it found while it ran is among the notes)."""
        step = self.step(name)
        return " ".join([step["detail"], *step.get("notes", [])])

    def statuses(self) -> dict[str, str]:
        return {step["name"]: step["status"] for step in self.host["steps"]}

    def explain(self) -> str:
        return f"exit {self.result.returncode}\nstdout:\n{self.result.stdout}\nstderr:\n{self.result.stderr}"


def gpunode(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpunode.bootstrap.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def target_args(host: DebianHost) -> list[str]:
    """Reach the host the way an operator would: user@address:port, a key, known hosts."""
    return [
        f"{host.ssh_user}@{host.address}:{host.ssh_port}",
        "--ssh-key",
        str(host.ssh_key),
        "--known-hosts",
        str(host.known_hosts_path),
    ]


def bootstrap(host: DebianHost, *extra: str, toolkit_dir: Path | None = None, driver: str | None = DRIVER) -> Run:
    args = [
        "bootstrap",
        *target_args(host),
        "--yes",
        "--output",
        "json",
        "--skip-cluster",
        "--kernel-module",
        "none",
        "--containerd-restart-command",
        RESTART_CONTAINERD,
    ]
    if toolkit_dir is not None:
        args += ["--toolkit-packages", str(toolkit_dir)]
    if driver is not None:
        args += ["--driver-version", driver]
    result = gpunode(*args, *extra)
    try:
        summary = json.loads(result.stdout)
    except ValueError as exc:
        raise AssertionError(f"no JSON summary:\n{result.stdout}\n{result.stderr}") from exc
    return Run(result, summary)
