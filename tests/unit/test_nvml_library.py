"""Choosing the real NVML library file (docs/failure-modes.md: F1, F2, F14).

Every case builds a host tree under a temporary directory with real shared objects, real
symlinks (Debian's alternatives made by the real `update-alternatives --root`), a real
ld.so.cache made by the real `ldconfig -r`, then runs the very probe command the node layer
runs, with `sh`, against that tree, parses its output and asks for the choice.

The one part this machine cannot make is an aarch64 ld.so.cache (an x86_64 ldconfig refuses
aarch64 objects), so the aarch64 case feeds the probe `ldconfig -p` lines in glibc's format.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from gpunode.bootstrap.core.nvml.library import (
    PROBE_COMMAND,
    LibraryEvidence,
    LibraryProblem,
    NvmlLibrary,
    choose_nvml_library,
    parse_probe,
    probe_command,
)

NVML_SOURCE = "int nvmlInit_v2(void) { return 0; }\nint nvmlShutdown(void) { return 0; }\n"


@dataclass(frozen=True)
class Objects:
    """Shared objects with SONAME libnvidia-ml.so.1, as ldconfig and `od` see them."""

    x86_64: bytes
    i386: bytes
    aarch64_header: bytes  # enough of an aarch64 ELF for the probe's header check


@pytest.fixture(scope="session")
def objects(tmp_path_factory: pytest.TempPathFactory) -> Objects:
    work = tmp_path_factory.mktemp("elf")
    (work / "nvml.c").write_text(NVML_SOURCE)
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-Wl,-soname,libnvidia-ml.so.1", "-o", work / "x86_64.so", work / "nvml.c"],
        check=True,
    )
    # A 32-bit object that needs libc.so.6, so that ldconfig files it as "libc6" like the real
    # i386 libnvidia-ml: link it against a stub libc.so.6 made the same way.
    (work / "empty.s").write_text(".text\n")
    subprocess.run(["as", "--32", "-o", work / "empty.o", work / "empty.s"], check=True)
    subprocess.run(
        ["ld", "-m", "elf_i386", "-shared", "-soname", "libc.so.6", "-o", work / "libc.so.6", work / "empty.o"],
        check=True,
    )
    subprocess.run(
        [
            "ld",
            "-m",
            "elf_i386",
            "-shared",
            "-soname",
            "libnvidia-ml.so.1",
            "--no-as-needed",
            "-o",
            work / "i386.so",
            work / "empty.o",
            work / "libc.so.6",
        ],
        check=True,
    )
    header = bytearray(64)
    header[0:7] = b"\x7fELF\x02\x01\x01"
    header[16:18] = (3).to_bytes(2, "little")  # ET_DYN
    header[18:20] = (183).to_bytes(2, "little")  # EM_AARCH64
    return Objects((work / "x86_64.so").read_bytes(), (work / "i386.so").read_bytes(), bytes(header))


@dataclass
class Host:
    root: Path
    objects: Objects

    def path(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def library(self, path: str, kind: str = "x86_64") -> None:
        target = self.path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        data = {"x86_64": self.objects.x86_64, "i386": self.objects.i386, "aarch64": self.objects.aarch64_header}[kind]
        target.write_bytes(data)

    def link(self, path: str, target: str) -> None:
        link = self.path(path)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)

    def directory(self, path: str) -> None:
        self.path(path).mkdir(parents=True, exist_ok=True)

    def usrmerge(self) -> None:
        """/lib -> usr/lib and friends, as on Debian 12, Ubuntu and RHEL 9."""
        for name in ("lib", "lib64", "bin", "sbin"):
            self.directory(f"/usr/{name}")
            self.link(f"/{name}", f"usr/{name}")

    def module(self, version: str) -> None:
        target = self.path("/sys/module/nvidia/version")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(version + "\n")

    def ldconfig(self, *dirs: str) -> None:
        """Build the tree's ld.so.cache with the real ldconfig, as a package's trigger does."""
        self.directory("/etc")
        self.path("/etc/ld.so.conf").write_text("".join(d + "\n" for d in dirs))
        subprocess.run(["ldconfig", "-i", "-r", str(self.root)], check=True, capture_output=True)

    def alternatives(self, *triplets: str) -> None:
        """Debian's nvidia alternative, with the slave names of the real nvidia-alternative
        535.261.03-1 postinst (`add_multiarch_slave /usr/lib "" libnvidia-ml.so.1 ...`). One
        call carries every architecture's slave, as the postinst's does: a second
        --install would replace the slave set, not add to it."""
        for directory in ("/etc/alternatives", "/var/lib/dpkg/alternatives", "/usr/lib/nvidia/current"):
            self.directory(directory)
        slaves: list[str] = []
        for triplet in triplets:
            slaves += [
                "--slave",
                f"/usr/lib/{triplet}/libnvidia-ml.so.1",
                f"nvidia--libnvidia-ml.so.1-{triplet}",
                f"/usr/lib/{triplet}/nvidia/current/libnvidia-ml.so.1",
            ]
        subprocess.run(
            [
                "update-alternatives",
                "--quiet",
                "--root",
                str(self.root),
                "--install",
                "/usr/lib/nvidia/nvidia",
                "nvidia",
                "/usr/lib/nvidia/current",
                "535",
                *slaves,
            ],
            check=True,
            capture_output=True,
        )

    def probe(
        self, arch: str | None = None, ldconfig: Sequence[str] | None = None, shell: Sequence[str] = ("sh", "-c")
    ) -> LibraryEvidence:
        argv = ldconfig or ("ldconfig", "-p", "-C", str(self.path("/etc/ld.so.cache")))
        command = probe_command(root=str(self.root), ldconfig=argv, arch=arch)
        result = subprocess.run([*shell, command], capture_output=True, text=True, check=True)
        assert result.stderr == ""
        return parse_probe(result.stdout)

    def choose(self, **probe_args: object) -> NvmlLibrary:
        return choose_nvml_library(self.probe(**probe_args))  # type: ignore[arg-type]

    def problem(self, **probe_args: object) -> LibraryProblem:
        with pytest.raises(LibraryProblem) as caught:
            self.choose(**probe_args)
        return caught.value


@pytest.fixture
def host(tmp_path: Path, objects: Objects) -> Host:
    root = tmp_path / "root with spaces & 'quotes'"  # the probe must quote its root
    root.mkdir()
    return Host(root, objects)


# Debian's multiarch ld.so.conf.d entries (libc6's x86_64-linux-gnu.conf, libc6:i386's).
DEBIAN_LD_DIRS = (
    "/usr/local/lib",
    "/usr/local/lib/x86_64-linux-gnu",
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/local/lib/i386-linux-gnu",
    "/lib/i386-linux-gnu",
    "/usr/lib/i386-linux-gnu",
)
DEBIAN_FILE = "/usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.535.261.03"


def debian_12(host: Host, version: str = "535.261.03", i386: bool = True) -> None:
    """Debian 12 with libnvidia-ml1 (amd64, and i386 when multiarch): the files of the real
    package (dpkg -c libnvidia-ml1_535.261.03-1_amd64.deb) and its alternatives."""
    host.usrmerge()
    triplets = ["x86_64-linux-gnu"] + (["i386-linux-gnu"] if i386 else [])
    for triplet in triplets:
        current = f"/usr/lib/{triplet}/nvidia/current"
        host.library(f"{current}/libnvidia-ml.so.{version}", "x86_64" if triplet.startswith("x86") else "i386")
        host.link(f"{current}/libnvidia-ml.so.1", f"libnvidia-ml.so.{version}")
        host.link(f"{current}/libnvidia-ml.so", "libnvidia-ml.so.1")
    host.alternatives(*triplets)
    host.ldconfig(*DEBIAN_LD_DIRS)


# --- Debian ----------------------------------------------------------------------------------


def test_debian_12_alternatives_chain_on_usrmerge(host: Host) -> None:
    debian_12(host)
    host.module("535.261.03")
    chosen = host.choose()
    assert chosen.path == DEBIAN_FILE
    assert chosen.version == "535.261.03"
    assert chosen.module_version == "535.261.03"
    # ldconfig names the library under /lib (usrmerge); the chain goes through the /lib link
    # and Debian's alternatives, hop by hop, to the real file.
    assert chosen.chain == (
        "/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
        "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
        "/etc/alternatives/nvidia--libnvidia-ml.so.1-x86_64-linux-gnu",
        "/usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.1",
        DEBIAN_FILE,
    )
    # The i386 copy is seen and ignored, never chosen.
    assert any("i386" in note and "/usr/lib/i386-linux-gnu" in note for note in chosen.notes)
    assert os.path.realpath(host.path(chosen.path)) == str(host.path(DEBIAN_FILE))


def test_debian_without_usrmerge(host: Host) -> None:
    # /lib and /usr/lib are separate directories (Debian 11 and older, or usrmerge undone).
    host.directory("/lib/x86_64-linux-gnu")
    host.library(DEBIAN_FILE)
    host.link("/usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.1", "libnvidia-ml.so.535.261.03")
    host.alternatives("x86_64-linux-gnu")
    host.ldconfig(*DEBIAN_LD_DIRS)
    host.module("535.261.03")
    chosen = host.choose()
    assert chosen.path == DEBIAN_FILE
    assert chosen.chain[0] == "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"
    assert chosen.notes == ()


def test_the_probe_runs_the_same_under_bash_posix(host: Host) -> None:
    debian_12(host)
    assert host.probe(shell=("bash", "--posix", "-c")) == host.probe()


# --- Ubuntu, RHEL, aarch64 -------------------------------------------------------------------------


def test_ubuntu_relative_links(host: Host) -> None:
    # libnvidia-compute-535: the file and a relative .so.1 link in the multiarch directory,
    # i386 twin in /usr/lib/i386-linux-gnu.
    host.usrmerge()
    host.library("/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.535.183.01")
    host.link("/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1", "libnvidia-ml.so.535.183.01")
    host.library("/usr/lib/i386-linux-gnu/libnvidia-ml.so.535.183.01", "i386")
    host.link("/usr/lib/i386-linux-gnu/libnvidia-ml.so.1", "libnvidia-ml.so.535.183.01")
    host.ldconfig(*DEBIAN_LD_DIRS)
    host.module("535.183.01")
    chosen = host.choose()
    assert chosen.path == "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.535.183.01"
    assert chosen.chain == (
        "/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
        "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
        "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.535.183.01",
    )


def test_dot_dot_in_a_relative_link_is_resolved_physically(host: Host) -> None:
    # /lib -> usr/lib, so ../../opt from /lib/x86_64-linux-gnu is /usr/opt, not /opt. A decoy
    # of another version waits at the lexical answer.
    host.usrmerge()
    host.library("/usr/opt/nvidia/libnvidia-ml.so.550.54.15")
    host.library("/opt/nvidia/libnvidia-ml.so.470.256.02")
    host.link("/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1", "../../opt/nvidia/libnvidia-ml.so.550.54.15")
    host.ldconfig("/lib/x86_64-linux-gnu")
    host.module("550.54.15")
    chosen = host.choose()
    assert chosen.path == "/usr/opt/nvidia/libnvidia-ml.so.550.54.15"
    # Same answer as the kernel's own resolution (all links in this tree are relative).
    start = host.path(chosen.chain[0])
    assert os.path.realpath(start) == str(host.path(chosen.path))


def test_rhel_lib64_with_a_32_bit_copy(host: Host) -> None:
    # NVIDIA's CUDA repository packages: /usr/lib64 for x86_64, /usr/lib for the i686 copy.
    host.usrmerge()
    host.library("/usr/lib64/libnvidia-ml.so.550.54.15")
    host.link("/usr/lib64/libnvidia-ml.so.1", "libnvidia-ml.so.550.54.15")
    host.library("/usr/lib/libnvidia-ml.so.550.54.15", "i386")
    host.link("/usr/lib/libnvidia-ml.so.1", "libnvidia-ml.so.550.54.15")
    host.ldconfig("/lib64", "/usr/lib64", "/lib", "/usr/lib")
    host.module("550.54.15")
    evidence = host.probe()
    assert "(libc6)" in evidence.ldconfig  # the i386 copy, as ldconfig files real ones
    chosen = choose_nvml_library(evidence)
    assert chosen.path == "/usr/lib64/libnvidia-ml.so.550.54.15"
    assert chosen.chain[-2:] == ("/usr/lib64/libnvidia-ml.so.1", "/usr/lib64/libnvidia-ml.so.550.54.15")
    assert any("/usr/lib/libnvidia-ml.so.550.54.15" in note and "i386" in note for note in chosen.notes)


def test_aarch64(host: Host, tmp_path: Path) -> None:
    host.usrmerge()
    current = "/usr/lib/aarch64-linux-gnu/nvidia/current"
    host.library(f"{current}/libnvidia-ml.so.535.261.03", "aarch64")
    host.link(f"{current}/libnvidia-ml.so.1", "libnvidia-ml.so.535.261.03")
    host.link("/etc/alternatives/nvidia--libnvidia-ml.so.1-aarch64-linux-gnu", f"{current}/libnvidia-ml.so.1")
    host.link(
        "/usr/lib/aarch64-linux-gnu/libnvidia-ml.so.1", "/etc/alternatives/nvidia--libnvidia-ml.so.1-aarch64-linux-gnu"
    )
    # An x86_64 copy someone copied over is listed but never taken on this host.
    host.library("/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.535.261.03")
    host.module("535.261.03")
    cache = tmp_path / "ldconfig-p.txt"
    cache.write_text(
        "1 libs found in cache `/etc/ld.so.cache'\n"
        "\tlibnvidia-ml.so.1 (libc6,AArch64) => /lib/aarch64-linux-gnu/libnvidia-ml.so.1\n"
    )
    chosen = host.choose(arch="aarch64", ldconfig=("cat", str(cache)))
    assert chosen.path == f"{current}/libnvidia-ml.so.535.261.03"
    assert chosen.chain[0] == "/lib/aarch64-linux-gnu/libnvidia-ml.so.1"
    assert any("x86_64" in note for note in chosen.notes)


# --- leftovers, broken chains, nothing at all ----------------------------------------------------


def test_leftovers_of_an_older_driver_are_named_not_chosen(host: Host) -> None:
    host.usrmerge()
    host.library("/usr/lib64/libnvidia-ml.so.535.104.05")  # left behind by a .run uninstall
    host.library("/usr/lib64/libnvidia-ml.so.550.54.15")
    host.link("/usr/lib64/libnvidia-ml.so.1", "libnvidia-ml.so.550.54.15")
    host.ldconfig("/usr/lib64")
    host.module("550.54.15")
    chosen = host.choose()
    assert chosen.path == "/usr/lib64/libnvidia-ml.so.550.54.15"
    assert "leftover of driver 535.104.05: /usr/lib64/libnvidia-ml.so.535.104.05" in chosen.notes


def test_dangling_chain_after_the_package_was_removed(host: Host) -> None:
    debian_12(host, i386=False)
    host.path(DEBIAN_FILE).unlink()  # the cache still names the link; the file is gone
    host.module("535.261.03")
    problem = host.problem()
    assert problem.verdict_id == "F2"
    assert "dangling" in problem.problem and DEBIAN_FILE in problem.problem
    assert "libnvidia-ml1" in (problem.fix or "")
    assert problem.reboot_required is False


def test_dangling_link_that_ldconfig_has_not_seen(host: Host) -> None:
    host.usrmerge()
    host.ldconfig(*DEBIAN_LD_DIRS)
    # Made after ldconfig last ran (a half-finished .run install): only the listing sees it.
    host.link("/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1", "libnvidia-ml.so.550.54.15")
    evidence = host.probe()
    assert "libnvidia-ml" not in evidence.ldconfig
    with pytest.raises(LibraryProblem) as caught:
        choose_nvml_library(evidence)
    assert caught.value.verdict_id == "F2"
    assert "libnvidia-ml.so.550.54.15" in caught.value.problem
    # glibc's ldconfig deletes a dangling link in the directories it scans; after that the
    # host simply has no library.
    host.ldconfig(*DEBIAN_LD_DIRS)
    assert host.problem().verdict_id == "NVML-MISSING"


def test_looping_alternatives(host: Host) -> None:
    debian_12(host, i386=False)
    # The alternative now points back at the library link: a loop.
    alternative = host.path("/etc/alternatives/nvidia--libnvidia-ml.so.1-x86_64-linux-gnu")
    alternative.unlink()
    alternative.symlink_to("/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1")
    host.module("535.261.03")
    problem = host.problem()
    assert problem.verdict_id == "F2"
    assert "loop" in problem.problem
    assert "update-alternatives" in (problem.fix or "")


def test_no_library_at_all(host: Host) -> None:
    host.usrmerge()
    host.ldconfig(*DEBIAN_LD_DIRS)
    host.module("535.261.03")
    problem = host.problem()
    assert problem.verdict_id == "NVML-MISSING"
    assert "libnvidia-ml1" in (problem.fix or "")


def test_only_a_32_bit_copy(host: Host) -> None:
    host.usrmerge()
    host.library("/usr/lib/i386-linux-gnu/libnvidia-ml.so.535.261.03", "i386")
    host.link("/usr/lib/i386-linux-gnu/libnvidia-ml.so.1", "libnvidia-ml.so.535.261.03")
    host.ldconfig(*DEBIAN_LD_DIRS)
    problem = host.problem()
    assert problem.verdict_id == "NVML-MISSING"
    assert "/usr/lib/i386-linux-gnu/libnvidia-ml.so.535.261.03 (i386)" in problem.problem


# --- the kernel module (F14) --------------------------------------------------------------------


def test_upgraded_but_not_rebooted_is_a_mismatch_that_needs_a_reboot(host: Host) -> None:
    debian_12(host, version="535.261.03")
    host.library("/usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.535.216.01")  # left over
    host.module("535.216.01")  # the old module still runs
    problem = host.problem()
    assert problem.verdict_id == "F14"
    assert problem.reboot_required is True
    assert "535.216.01" in problem.problem and "535.261.03" in problem.problem
    # The leftover of the module's version is named, and still not picked.
    assert "libnvidia-ml.so.535.216.01" in problem.problem
    assert "Reboot" in (problem.fix or "")
    assert "reboot required" in str(problem)


def test_library_older_than_the_module_is_a_mismatch_without_reboot(host: Host) -> None:
    debian_12(host, version="535.216.01", i386=False)
    host.module("535.261.03")
    problem = host.problem()
    assert problem.verdict_id == "F14"
    assert problem.reboot_required is False
    assert "install the driver packages of version 535.261.03" in (problem.fix or "")


def test_no_module_loaded_still_picks_the_library_and_says_so(host: Host) -> None:
    debian_12(host, i386=False)
    chosen = host.choose()
    assert chosen.path == DEBIAN_FILE
    assert chosen.module_version is None
    assert any("no nvidia kernel module is loaded" in note for note in chosen.notes)


def test_module_version_from_proc_when_sys_has_none(host: Host) -> None:
    debian_12(host, i386=False)
    proc = host.path("/proc/driver/nvidia/version")
    proc.parent.mkdir(parents=True)
    proc.write_text(
        "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  535.261.03  "
        "Release Build  (dvs-builder@U16-I3-B03-4-3)  Thu Jun  5 2025\n"
        "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n"
    )
    assert host.probe().module_version == "535.261.03"


# --- the probe itself ---------------------------------------------------------------------------


def test_when_ldconfig_fails_the_listing_still_finds_the_library(host: Host) -> None:
    debian_12(host, i386=False)
    host.module("535.261.03")
    evidence = host.probe(ldconfig=("no-such-ldconfig", "-p"))
    assert evidence.ldconfig_error
    chosen = choose_nvml_library(evidence)
    assert chosen.path == DEBIAN_FILE
    assert any("ldconfig -p failed" in note for note in chosen.notes)


def test_probe_output_format(host: Host) -> None:
    debian_12(host, i386=False)
    host.module("535.261.03")
    output = subprocess.run(
        [
            "sh",
            "-c",
            probe_command(root=str(host.root), ldconfig=("ldconfig", "-p", "-C", str(host.path("/etc/ld.so.cache")))),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = output.splitlines()
    assert lines[0] == "gpunode-nvml-probe 1"
    assert lines[-1] == "end"
    assert "module\t535.261.03" in lines
    assert "ldconfig-status\t0" in lines
    assert "link\t/lib\tusr/lib" in lines
    assert "link\t/usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.1\tlibnvidia-ml.so.535.261.03" in lines
    assert f"file\t{DEBIAN_FILE}\t7f454c4602010100000000000000000003003e00" in lines
    assert "listed\t/etc/alternatives/nvidia--libnvidia-ml.so.1-x86_64-linux-gnu" in lines
    # Host paths only: the fake root never shows.
    assert str(host.root) not in output


def test_the_probe_runs_on_this_machine() -> None:
    # The real command, on the real host (no NVIDIA driver here): it must run cleanly under
    # sh and lead to a verdict, not a crash.
    result = subprocess.run(["sh", "-c", PROBE_COMMAND], capture_output=True, text=True, check=True)
    assert result.stderr == ""
    evidence = parse_probe(result.stdout)
    assert evidence.arch == os.uname().machine
    assert evidence.ldconfig_error is None
    if "libnvidia-ml.so.1" not in evidence.ldconfig:
        with pytest.raises(LibraryProblem) as caught:
            choose_nvml_library(evidence)
        assert caught.value.verdict_id == "NVML-MISSING"


def test_probe_quotes_everything_it_is_given(tmp_path: Path) -> None:
    hostile = "/tmp/x'; touch pwned; echo '"
    command = probe_command(root=hostile, ldconfig=("echo", "$(touch pwned2)"), arch="`touch pwned3`")
    subprocess.run(["sh", "-c", command], cwd=tmp_path, capture_output=True, check=True)
    assert list(tmp_path.iterdir()) == []
    assert shlex.quote(hostile) in command


@pytest.mark.parametrize(
    "output,words",
    [
        ("", "no recognisable output"),
        ("sh: 1: Syntax error\n", "no recognisable output"),
        ("gpunode-nvml-probe 1\narch\tx86_64\nldconfig-status\t0\n", "cut off"),
    ],
)
def test_unreadable_probe_output_is_a_verdict(output: str, words: str) -> None:
    with pytest.raises(LibraryProblem) as caught:
        parse_probe(output)
    assert caught.value.verdict_id == "NVML-PROBE"
    assert words in caught.value.problem


# --- Debian's real packages ---------------------------------------------------------------------


def debian_nvml_packages(cache: Path) -> dict[str, Path]:
    """bookworm's libnvidia-ml1 (amd64 and i386) and nvidia-alternative, downloaded once with
    apt-get from Debian's non-free archive into the shared test cache."""
    wanted = {  # key: (apt-get download argument, file name pattern)
        "libnvidia-ml1_amd64": ("libnvidia-ml1:amd64", "libnvidia-ml1_*_amd64.deb"),
        "libnvidia-ml1_i386": ("libnvidia-ml1:i386", "libnvidia-ml1_*_i386.deb"),
        "nvidia-alternative": ("nvidia-alternative:amd64", "nvidia-alternative_*_amd64.deb"),
    }
    store = cache / "debian-bookworm-nvml"
    found = {key: sorted(store.glob(pattern)) for key, (_, pattern) in wanted.items()}
    if all(found.values()):
        return {key: paths[-1] for key, paths in found.items()}
    work = cache / f"debian-bookworm-nvml.tmp-{os.getpid()}"
    state = work / "apt"
    for sub in ("lists/partial", "cache/archives/partial", "etc"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    (state / "etc/sources.list").write_text("deb http://deb.debian.org/debian bookworm non-free\n")
    options = [
        "-o",
        f"Dir::Etc::SourceList={state / 'etc/sources.list'}",
        "-o",
        "Dir::Etc::SourceParts=-",
        "-o",
        f"Dir::State::Lists={state / 'lists'}",
        "-o",
        f"Dir::Cache={state / 'cache'}",
        "-o",
        "APT::Architectures::=amd64",
        "-o",
        "APT::Architectures::=i386",
        "-o",
        "APT::Sandbox::User=root",
        "-q",
    ]
    subprocess.run(["apt-get", *options, "update"], cwd=work, check=True, capture_output=True, timeout=300)
    subprocess.run(
        ["apt-get", *options, "download", *(name for name, _ in wanted.values())],
        cwd=work,
        check=True,
        capture_output=True,
        timeout=300,
    )
    store.mkdir(exist_ok=True)
    for deb in work.glob("*.deb"):
        os.replace(deb, store / deb.name)  # atomic: other worktrees may be doing the same
    subprocess.run(["rm", "-rf", str(work)], check=True)
    return debian_nvml_packages(cache)


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="Debian's amd64 and i386 packages need an x86_64 host")
def test_debian_12_real_packages(host: Host, cache_dir: Path, tmp_path: Path) -> None:
    debs = debian_nvml_packages(cache_dir)
    # The version the packages carry (e.g. 535.261.03-1 -> 535.261.03).
    version = (
        subprocess.run(
            ["dpkg-deb", "--field", str(debs["libnvidia-ml1_amd64"]), "Version"],
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .split("-")[0]
    )
    host.usrmerge()
    for key in ("libnvidia-ml1_amd64", "libnvidia-ml1_i386"):
        subprocess.run(["dpkg-deb", "-x", str(debs[key]), str(host.root)], check=True)
    # The alternatives come from nvidia-alternative's postinst: check it still names the
    # libnvidia-ml.so.1 slave the way the helper installs it.
    control = tmp_path / "control"
    subprocess.run(["dpkg-deb", "-e", str(debs["nvidia-alternative"]), str(control)], check=True)
    postinst = (control / "postinst").read_text()
    assert 'prefix="nvidia--"' in postinst
    assert 'add_multiarch_slave /usr/lib "" libnvidia-ml.so.1 /usr/lib nvidia/current/' in postinst
    assert 'suffix="${suffix:+-${suffix#/}}"' in postinst
    host.alternatives("x86_64-linux-gnu", "i386-linux-gnu")
    host.ldconfig(*DEBIAN_LD_DIRS)
    host.module(version)

    evidence = host.probe()
    real_file = f"/usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.{version}"
    assert evidence.machines[real_file] == "x86_64"  # NVIDIA's own binary
    assert evidence.machines[f"/usr/lib/i386-linux-gnu/nvidia/current/libnvidia-ml.so.{version}"] == "i386"
    assert "libnvidia-ml.so.1 (libc6) => /lib/i386-linux-gnu/libnvidia-ml.so.1" in evidence.ldconfig
    chosen = choose_nvml_library(evidence)
    assert chosen.path == real_file
    assert chosen.version == version
    assert chosen.chain == (
        "/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
        "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
        "/etc/alternatives/nvidia--libnvidia-ml.so.1-x86_64-linux-gnu",
        "/usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.1",
        real_file,
    )


def test_two_drivers_in_the_cache_the_loaders_choice_wins(host: Host) -> None:
    # A .run install in /usr/local/lib on top of Debian's package: the first cache entry is
    # the one the dynamic loader (and nvidia-smi) uses, so it is the one chosen.
    debian_12(host, version="535.261.03", i386=False)
    host.library("/usr/local/lib/libnvidia-ml.so.550.54.15")
    host.link("/usr/local/lib/libnvidia-ml.so.1", "libnvidia-ml.so.550.54.15")
    host.ldconfig(*DEBIAN_LD_DIRS)
    host.module("550.54.15")
    evidence = host.probe()
    # ld.so.conf lists /usr/local/lib first, so its entry comes first in the cache.
    assert evidence.ldconfig.splitlines()[0].endswith("=> /usr/local/lib/libnvidia-ml.so.1")
    chosen = choose_nvml_library(evidence)
    assert chosen.path == "/usr/local/lib/libnvidia-ml.so.550.54.15"
    assert [note for note in chosen.notes if DEBIAN_FILE in note] == [
        f"also in ldconfig's cache: /lib/x86_64-linux-gnu/libnvidia-ml.so.1 -> "
        f"/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1 -> "
        f"/etc/alternatives/nvidia--libnvidia-ml.so.1-x86_64-linux-gnu -> "
        f"/usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.1 -> {DEBIAN_FILE} "
        f"(driver 535.261.03); the loader uses /usr/local/lib/libnvidia-ml.so.1 first"
    ]


def test_the_probe_through_pyinfras_command_fact() -> None:
    # The node layer runs PROBE_COMMAND as a pyinfra fact; pyinfra wraps it in its own shell
    # quoting. Run it that way on @local (in a separate process: pyinfra brings gevent).
    script = (
        "from pyinfra.api import Config, Inventory, State\n"
        "from pyinfra.api.connect import connect_all\n"
        "from pyinfra.facts.server import Command\n"
        "from gpunode.bootstrap.core.nvml.library import PROBE_COMMAND\n"
        "inventory = Inventory((['@local'], {}))\n"
        "state = State(inventory, Config())\n"
        "connect_all(state)\n"
        "print(inventory.get_host('@local').get_fact(Command, command=PROBE_COMMAND))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    direct = subprocess.run(["sh", "-c", PROBE_COMMAND], capture_output=True, text=True, check=True)
    assert parse_probe(result.stdout) == parse_probe(direct.stdout)


def test_a_dangling_chain_after_ldconfig_is_f2_whatever_the_cache_says(host: Host) -> None:
    """The versioned file gone (a half-removed driver), its links left, ldconfig run again: the
    cache drops the library, but the chain on disk is still there and dangles. That is F2
    (fix the chain), not NVML-MISSING (install a library) (issue 17.12)."""
    debian_12(host, i386=False)
    host.module("535.261.03")
    host.path(DEBIAN_FILE).unlink()
    host.ldconfig(*DEBIAN_LD_DIRS)
    evidence = host.probe()
    assert "libnvidia-ml.so.1" not in evidence.ldconfig
    problem = choose_problem(evidence)
    assert problem.verdict_id == "F2", str(problem)
    assert "dangling" in problem.problem and DEBIAN_FILE in problem.problem


def choose_problem(evidence: LibraryEvidence) -> LibraryProblem:
    with pytest.raises(LibraryProblem) as caught:
        choose_nvml_library(evidence)
    return caught.value
