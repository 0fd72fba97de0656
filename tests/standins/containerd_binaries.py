"""Real containerd binaries for the tests: 1.6 (Debian 12), 1.7 (Debian 13), 2.x (Debian sid).

Debian 12's containerd is the one `tests/run` installs (/usr/bin/containerd). The newer ones
are fetched once with `apt-get download` from trixie and sid, through a private apt
configuration and state directory (the system's sources, lists and dpkg status are never
read or touched), unpacked with `dpkg -x` into the test cache, and never installed. Go
binaries linked only against libc, they run on Debian 12 as they are.

    containerd_binaries() -> {"1.6.20": Path(...), "1.7.24": Path(...), "2.1.9": Path(...)}
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import test_cache_dir

SYSTEM_CONTAINERD = Path("/usr/bin/containerd")
SUITES = ("trixie", "sid")
ARCHIVE = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


def containerd_version(binary: Path) -> str:
    """`1.7.24` from the binary's own `containerd --version`."""
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=True).stdout
    for token in out.split():
        match = re.match(r"^v?(\d+\.\d+\.\d+)", token)
        if match:
            return match.group(1)
    raise RuntimeError(f"{binary} --version printed no version: {out!r}")


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _private_apt(root: Path) -> dict[str, str]:
    """An apt configuration of its own under `root`: its sources, lists, cache and status."""
    for sub in ("etc/apt.conf.d", "etc/preferences.d", "etc/sources.list.d", "lists/partial", "cache/archives/partial"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "status").touch()
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout.strip()
    (root / "etc/sources.list").write_text(
        "".join(f"deb [signed-by={KEYRING}] {ARCHIVE} {suite} main\n" for suite in SUITES)
    )
    settings = {
        "Dir::Etc::main": str(root / "etc/apt.conf"),
        "Dir::Etc::parts": str(root / "etc/apt.conf.d"),
        "Dir::Etc::sourcelist": str(root / "etc/sources.list"),
        "Dir::Etc::sourceparts": str(root / "etc/sources.list.d"),
        "Dir::Etc::preferences": str(root / "etc/preferences"),
        "Dir::Etc::preferencesparts": str(root / "etc/preferences.d"),
        "Dir::State": str(root),
        "Dir::State::lists": str(root / "lists"),
        "Dir::State::status": str(root / "status"),
        "Dir::Cache": str(root / "cache"),
        "APT::Architecture": arch,
        "APT::Architectures": arch,
        "Acquire::Languages": "none",
        # sid's Release is valid for a week only; a mirror that lags behind would fail the
        # check. The signature is still verified.
        "Acquire::Check-Valid-Until": "false",
        "APT::Sandbox::User": "root",
    }
    conf = root / "apt.conf"
    conf.write_text("".join(f'{key} "{value}";\n' for key, value in settings.items()))
    return {**os.environ, "APT_CONFIG": str(conf), "DEBIAN_FRONTEND": "noninteractive"}


def _fetch(cache: Path) -> None:
    """Download containerd from each suite and unpack it under cache/<suite>/."""
    work = Path(tempfile.mkdtemp(prefix="fetch-", dir=cache))
    try:
        env = _private_apt(work / "apt")
        subprocess.run(["apt-get", "-qq", "update"], env=env, check=True, capture_output=True)
        downloads = work / "debs"
        downloads.mkdir()
        for suite in SUITES:
            if (cache / suite / "usr/bin/containerd").exists():
                continue
            subprocess.run(
                ["apt-get", "-qq", "download", f"containerd/{suite}"],
                env=env,
                cwd=downloads,
                check=True,
                capture_output=True,
            )
            (deb,) = downloads.glob("containerd_*.deb")
            unpacked = work / suite
            subprocess.run(["dpkg", "-x", str(deb), str(unpacked)], check=True)
            (unpacked / "source.deb").write_text(deb.name + "\n")
            deb.unlink()
            os.rename(unpacked, cache / suite)  # atomic: a suite dir is whole or absent
    finally:
        shutil.rmtree(work, ignore_errors=True)


def containerd_binaries() -> dict[str, Path]:
    """{version: binary} for containerd 1.6, 1.7 and 2.x, fetching the newer ones once."""
    cache = test_cache_dir() / "containerd"
    if not all((cache / suite / "usr/bin/containerd").exists() for suite in SUITES):
        with _locked(cache / ".lock"):
            if not all((cache / suite / "usr/bin/containerd").exists() for suite in SUITES):
                _fetch(cache)
    binaries = [SYSTEM_CONTAINERD, *(cache / suite / "usr/bin/containerd" for suite in SUITES)]
    found = {containerd_version(binary): binary for binary in binaries}
    majors_minors = sorted({tuple(int(p) for p in v.split(".")[:2]) for v in found})
    if len(majors_minors) != 3 or majors_minors[0] != (1, 6) or majors_minors[1] != (1, 7) or majors_minors[2][0] != 2:
        raise RuntimeError(f"expected containerd 1.6, 1.7 and 2.x, got {sorted(found)}")
    return found


@pytest.fixture(scope="session")
def containerd_bins() -> dict[str, Path]:
    return containerd_binaries()
