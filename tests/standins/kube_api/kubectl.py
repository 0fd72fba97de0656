"""Finding the real kubectl for the tests.

The machines this project runs on have kubectl 1.32 at /usr/bin/kubectl. Where it is
missing, Debian 13's `kubernetes-client` package is downloaded with apt (through a
private apt configuration: the system's sources and lists are not touched) and unpacked
into the test cache. It is never installed.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

DEBIAN_SUITE = "trixie"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


def _default_cache_dir() -> Path:
    env = os.environ.get("GPUNODE_TEST_CACHE")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / ".cache"


def kubectl_binary(cache_dir: Path | None = None, prefer_system: bool = True) -> Path:
    """The kubectl the tests run: the system's, else Debian's unpacked into the cache."""
    if prefer_system:
        found = shutil.which("kubectl") or ("/usr/bin/kubectl" if os.access("/usr/bin/kubectl", os.X_OK) else None)
        if found:
            return Path(found)
    return debian_kubectl(cache_dir or _default_cache_dir())


def debian_kubectl(cache_dir: Path) -> Path:
    """kubectl from Debian's kubernetes-client package, unpacked (not installed)."""
    root = cache_dir / f"kubectl-debian-{DEBIAN_SUITE}"
    binary = root / "usr" / "bin" / "kubectl"
    if binary.is_file():
        return binary
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f"kubectl-debian-{DEBIAN_SUITE}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.is_file():
            return binary
        work = Path(tempfile.mkdtemp(prefix="kubectl-debian-", dir=cache_dir))
        try:
            unpacked = work / "root"
            # In Debian 13 kubernetes-client is a transitional package: the binary is in
            # the package it depends on (kubectl); follow that dependency.
            wanted = ["kubernetes-client"]
            apt = _PrivateApt(work)
            while wanted:
                deb = apt.download(wanted.pop(0))
                subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True, capture_output=True)
                if (unpacked / "usr" / "bin" / "kubectl").is_file():
                    break
                depends = subprocess.run(
                    ["dpkg-deb", "-f", str(deb), "Depends"], check=True, capture_output=True, text=True
                ).stdout
                wanted += [d.split()[0] for d in depends.split(",") if d.strip()]
            if not (unpacked / "usr" / "bin" / "kubectl").is_file():
                raise RuntimeError("Debian's kubernetes-client brought no usr/bin/kubectl")
            os.replace(unpacked, root)  # atomic: others see all of it or nothing
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return binary


class _PrivateApt:
    """apt-get with its own sources, lists and cache under `work` (system's untouched)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        lists = work / "lists"
        (lists / "partial").mkdir(parents=True)
        apt_cache = work / "cache"
        (apt_cache / "archives" / "partial").mkdir(parents=True)
        sources = work / "sources.list"
        sources.write_text(f"deb [signed-by={KEYRING}] {DEBIAN_MIRROR} {DEBIAN_SUITE} main\n")
        self.options = [
            "-o",
            f"Dir::Etc::SourceList={sources}",
            "-o",
            "Dir::Etc::SourceParts=/dev/null",
            "-o",
            f"Dir::State::Lists={lists}",
            "-o",
            f"Dir::Cache={apt_cache}",
            "-o",
            "Acquire::Languages=none",
            "-o",
            "APT::Get::List-Cleanup=false",
            "-o",
            "Debug::NoLocking=true",
        ]
        self._run("update")

    def _run(self, *args: str) -> None:
        try:
            subprocess.run(
                ["apt-get", *self.options, *args],
                check=True,
                capture_output=True,
                text=True,
                timeout=600,
                cwd=self.work,
            )
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(
                f"apt-get {' '.join(args)} for Debian {DEBIAN_SUITE} failed: {exc.stderr.strip()}"
            ) from exc

    def download(self, package: str) -> Path:
        # "/suite" picks Debian's version even where another kubectl is installed.
        self._run("download", f"{package}/{DEBIAN_SUITE}")
        debs = sorted(self.work.glob(f"{package}_*.deb"))
        if not debs:
            raise RuntimeError(f"apt-get download left no {package} package in {self.work}")
        return debs[-1]
