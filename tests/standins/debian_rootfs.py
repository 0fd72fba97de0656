"""The Debian 12 root filesystem behind every test host, built once with mmdebstrap.

The recipe (suite, mirrors, components, package list, hooks) is hashed into a key; the
filesystem is cached as `<cache>/debian-host/rootfs-<key>.tar.zst` and unpacked once next
to it into a read-only tree that every running host overlays (see debian_host.py). Change
the recipe and a new key, so a new filesystem, follows. Building and unpacking happen under
a file lock and land by rename, so concurrent test runs (other worktrees) share one build.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

# Bump when the way the tarball is produced changes in a way the recipe does not show.
_FORMAT = 1

# What a minimal node a kubelet would run on has: sshd, python3 (testinfra), containerd
# and runc from Debian, the tools facts read with (kmod, pciutils, procps, iproute2), gnupg
# and curl for repository keys, systemd's tools (installed, not running: there is no init)
# and initramfs-tools (the nouveau blacklist step rebuilds the initramfs).
DEFAULT_PACKAGES: tuple[str, ...] = (
    "openssh-server",
    "python3",
    "ca-certificates",
    "containerd",
    "runc",
    "kmod",
    "pciutils",
    "procps",
    "iproute2",
    "gnupg",
    "curl",
    "systemd",
    "netbase",
    "initramfs-tools",
    "less",
)


@dataclass(frozen=True)
class RootfsRecipe:
    """Everything that decides the content of the root filesystem (and so its cache key)."""

    suite: str = "bookworm"
    mirror: str = "http://deb.debian.org/debian"
    security_mirror: str = "http://deb.debian.org/debian-security"
    components: tuple[str, ...] = ("main", "contrib", "non-free", "non-free-firmware")
    variant: str = "minbase"
    packages: tuple[str, ...] = DEFAULT_PACKAGES
    # Documentation is left out (as slim cloud and container images do): a third of the
    # files, and nothing a node reads. The rule stays in the image for later installs too.
    dpkg_options: tuple[str, ...] = (
        "path-exclude=/usr/share/doc/*",
        "path-include=/usr/share/doc/*/copyright",
        "path-exclude=/usr/share/man/*",
        "path-exclude=/usr/share/info/*",
        "path-exclude=/usr/share/locale/*",
        "path-include=/usr/share/locale/locale.alias",
    )
    # Host keys are made per host at start; the build's own would be shared by all hosts.
    customize_hooks: tuple[str, ...] = ('rm -f "$1"/etc/ssh/ssh_host_*',)

    def key(self) -> str:
        text = json.dumps({"format": _FORMAT, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def sources(self) -> list[str]:
        comps = " ".join(self.components)
        return [
            f"deb {self.mirror} {self.suite} {comps}",
            f"deb {self.mirror} {self.suite}-updates {comps}",
            f"deb {self.security_mirror} {self.suite}-security {comps}",
        ]

    def mmdebstrap_argv(self, output: Path) -> list[str]:
        argv = [
            "mmdebstrap",
            "--mode=root",
            f"--variant={self.variant}",
            f"--components={','.join(self.components)}",
            f"--include={','.join(self.packages)}",
            # The package lists stay, so `apt-get update` in a host only revalidates them.
            "--skip=cleanup/apt/lists",
        ]
        argv += [f"--dpkgopt={opt}" for opt in self.dpkg_options]
        argv += [f"--customize-hook={hook}" for hook in self.customize_hooks]
        argv += [self.suite, str(output)]
        argv += self.sources()
        return argv


DEFAULT_RECIPE = RootfsRecipe()

# A machine as a user gets it: Debian's base system (priorities required and important, as
# the installer and debootstrap lay it down), python3, and sshd (how the tests reach a host;
# any server has it). No containerd, no runc, no compiler, no curl, no ca-certificates, no
# ~/.ssh for root (debian_host.py gives root an authorized key; a test removes ~/.ssh).
PRISTINE_RECIPE = RootfsRecipe(variant="important", packages=("openssh-server", "python3"))


def debian_host_cache(cache_dir: Path) -> Path:
    path = cache_dir / "debian-host"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def rootfs_tarball(cache_dir: Path, recipe: RootfsRecipe = DEFAULT_RECIPE) -> Path:
    """The cached tarball for `recipe`, built with mmdebstrap if it is not there yet."""
    base = debian_host_cache(cache_dir)
    tarball = base / f"rootfs-{recipe.key()}.tar.zst"
    if tarball.is_file():
        return tarball
    with _locked(base / f"rootfs-{recipe.key()}.lock"):
        if tarball.is_file():  # another process built it while we waited
            return tarball
        _build(recipe, tarball)
    return tarball


def _build(recipe: RootfsRecipe, tarball: Path) -> None:
    if os.geteuid() != 0:
        raise RuntimeError("building the test host's root filesystem needs root (mmdebstrap)")
    if shutil.which("mmdebstrap") is None:
        raise RuntimeError("mmdebstrap is missing: install it (tests/run does)")
    # mmdebstrap picks the format from the extension, so the temporary name keeps it.
    partial = tarball.with_name(f".{tarball.stem}.{os.getpid()}.partial.tar.zst")
    log = tarball.with_suffix(".build.log")
    started = time.monotonic()
    with open(log, "w") as out:
        result = subprocess.run(recipe.mmdebstrap_argv(partial), stdout=out, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"mmdebstrap failed (exit {result.returncode}); log {log}:\n{tail}")
    os.replace(partial, tarball)
    with open(log, "a") as out:
        out.write(f"\nbuilt in {time.monotonic() - started:.1f} s\n")


def rootfs_tree(cache_dir: Path, recipe: RootfsRecipe = DEFAULT_RECIPE) -> Path:
    """The unpacked root filesystem: read-only by convention, shared by every host.

    Nothing may write into it: hosts see it through an overlay whose upper layer is theirs.
    """
    base = debian_host_cache(cache_dir)
    tree = base / f"rootfs-{recipe.key()}"
    if (tree / "etc" / "debian_version").is_file():
        return tree
    tarball = rootfs_tarball(cache_dir, recipe)
    with _locked(base / f"rootfs-{recipe.key()}.lock"):
        if (tree / "etc" / "debian_version").is_file():
            return tree
        partial = base / f".rootfs-{recipe.key()}.{os.getpid()}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        # GNU tar keeps owners, modes, device nodes and xattrs exactly as mmdebstrap made them.
        subprocess.run(
            [
                "tar",
                "--zstd",
                "-C",
                str(partial),
                "--xattrs",
                "--xattrs-include=*",
                "--numeric-owner",
                "-xpf",
                str(tarball),
            ],
            check=True,
        )
        if tree.exists():  # a half-unpacked tree from a killed run: never used, replace it
            shutil.rmtree(tree)
        os.rename(partial, tree)
    return tree
