"""SSH host keys from a control machine that has never used SSH (no ~/.ssh at all).

The control machine is this test process with a HOME of its own; the host is a real Debian
12 host behind a real sshd. gpunode is run as a user runs it, in a subprocess.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from standins.debian_host import DebianHost


def dry_run(host: DebianHost, home: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], dict[str, object]]:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpunode.bootstrap.cli.main",
            "bootstrap",
            f"root@{host.address}:{host.ssh_port}",
            "--ssh-key",
            str(host.ssh_key),
            "--dry-run",
            "--allow-no-gpu",
            "--skip-cluster",
            "--kernel-module",
            "none",
            "--output",
            "json",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "HOME": str(home)},
    )
    try:
        (report,) = json.loads(result.stdout)["hosts"]
    except ValueError as exc:
        raise AssertionError(f"no JSON summary:\n{result.stdout}\n{result.stderr}") from exc
    return result, report


def host_key(host: DebianHost) -> str:
    """The host's ed25519 public key, as `<type> <base64>`."""
    return " ".join(host.known_hosts_path.read_text().split()[1:3])


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_first_contact_creates_ssh_dir_and_known_hosts_as_openssh_would(
    debian_host: DebianHost, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    result, report = dry_run(debian_host, home)
    assert report["error"] is None, result.stderr
    assert [step["name"] for step in report["steps"]][0] == "preflight"
    ssh_dir = home / ".ssh"
    known_hosts = ssh_dir / "known_hosts"
    assert mode(ssh_dir) == 0o700 and mode(known_hosts) == 0o600
    (line,) = known_hosts.read_text().splitlines()
    assert line.split()[0] == f"[{debian_host.address}]:{debian_host.ssh_port}"
    assert " ".join(line.split()[1:3]) == host_key(debian_host)

    # The recorded key is used, not recorded again.
    result, report = dry_run(debian_host, home)
    assert report["error"] is None, result.stderr
    assert known_hosts.read_text().splitlines() == [line]


def test_a_changed_host_key_is_refused_with_the_fix(debian_host: DebianHost, tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    wrong = " ".join(Path(f"{other}.pub").read_text().split()[:2])
    entry = f"[{debian_host.address}]:{debian_host.ssh_port} {wrong}\n"
    (home / ".ssh" / "known_hosts").write_text(entry)
    result, report = dry_run(debian_host, home)
    assert result.returncode != 0
    error = str(report["error"])
    assert "differs from the one recorded" in error and "Fix:" in error and "ssh-keygen -R" in error, error
    assert report["steps"] == []
    assert (home / ".ssh" / "known_hosts").read_text() == entry, "the recorded key is left alone"


def test_strict_mode_refuses_an_unknown_host_and_writes_nothing(debian_host: DebianHost, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    result, report = dry_run(debian_host, home, "--strict-host-keys")
    assert result.returncode != 0
    error = str(report["error"])
    assert "Strict host key checking is on" in error and "Fix:" in error, error
    assert not (home / ".ssh").exists()

    # With the key known (the test host's own known-hosts file), strict mode connects.
    result, report = dry_run(
        debian_host, home, "--strict-host-keys", "--known-hosts", str(debian_host.known_hosts_path)
    )
    assert report["error"] is None, result.stderr


def test_known_hosts_flag_is_honoured_and_its_directory_created(debian_host: DebianHost, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    known_hosts = tmp_path / "fleet" / "keys" / "known_hosts"
    result, report = dry_run(debian_host, home, "--known-hosts", str(known_hosts))
    assert report["error"] is None, result.stderr
    assert host_key(debian_host) in known_hosts.read_text()
    assert mode(known_hosts) == 0o600 and mode(known_hosts.parent) == 0o700
    assert not (home / ".ssh").exists(), "nothing written outside the named file"
