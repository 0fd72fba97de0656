"""The NVML library choice from evidence written out by hand: the cases no tree on this machine
can produce (other architectures' caches, hwcap entries) and the corners of the decision."""

from __future__ import annotations

from typing import Any

import pytest

from gpunode.bootstrap.core.nvml.library import (
    LibraryEvidence,
    LibraryProblem,
    NvmlLibrary,
    choose_nvml_library,
    driver_version_of,
    parse_probe,
)
from gpunode.bootstrap.errors import HostStateError

X86_64_ELF = "7f454c4602010100000000000000000003003e00"
I386_ELF = "7f454c4601010100000000000000000003000300"
PPC64LE_ELF = "7f454c4602010100000000000000000003001500"
PPC64_BE_ELF = "7f454c4602020100000000000000000000030015"


def evidence(**overrides: Any) -> LibraryEvidence:
    values: dict[str, Any] = {
        "ldconfig": "\tlibnvidia-ml.so.1 (libc6,x86-64) => /usr/lib64/libnvidia-ml.so.1",
        "links": {"/usr/lib64/libnvidia-ml.so.1": "libnvidia-ml.so.550.54.15"},
        "files": frozenset({"/usr/lib64/libnvidia-ml.so.550.54.15"}),
        "listed": ("/usr/lib64/libnvidia-ml.so.1", "/usr/lib64/libnvidia-ml.so.550.54.15"),
        "arch": "x86_64",
        "module_version": "550.54.15",
    }
    values.update(overrides)
    return LibraryEvidence(**values)


def problem(ev: LibraryEvidence) -> LibraryProblem:
    with pytest.raises(LibraryProblem) as caught:
        choose_nvml_library(ev)
    return caught.value


def test_plain_rhel_choice_and_the_public_types() -> None:
    chosen = choose_nvml_library(evidence())
    assert chosen == NvmlLibrary(
        path="/usr/lib64/libnvidia-ml.so.550.54.15",
        version="550.54.15",
        chain=("/usr/lib64/libnvidia-ml.so.1", "/usr/lib64/libnvidia-ml.so.550.54.15"),
        notes=(),
        module_version="550.54.15",
    )
    assert issubclass(LibraryProblem, HostStateError)


def test_ppc64le_reads_ldconfigs_64bit_flag_and_the_elf_byte_order() -> None:
    ev = evidence(
        arch="ppc64le",
        ldconfig="\tlibnvidia-ml.so.1 (libc6,64bit) => /usr/lib/powerpc64le-linux-gnu/libnvidia-ml.so.1",
        links={"/usr/lib/powerpc64le-linux-gnu/libnvidia-ml.so.1": "libnvidia-ml.so.550.54.15"},
        files=frozenset({"/usr/lib/powerpc64le-linux-gnu/libnvidia-ml.so.550.54.15"}),
        machines={"/usr/lib/powerpc64le-linux-gnu/libnvidia-ml.so.550.54.15": "ppc64le"},
    )
    assert choose_nvml_library(ev).path == "/usr/lib/powerpc64le-linux-gnu/libnvidia-ml.so.550.54.15"


def test_hwcap_entries_still_count_as_the_native_arch() -> None:
    ev = evidence(ldconfig='\tlibnvidia-ml.so.1 (libc6,x86-64, hwcap: "x86-64-v3") => /usr/lib64/libnvidia-ml.so.1')
    assert choose_nvml_library(ev).version == "550.54.15"


def test_an_arch_the_driver_does_not_exist_for() -> None:
    found = problem(evidence(arch="riscv64"))
    assert found.verdict_id == "NVML-ARCH"
    assert "riscv64" in found.problem


def test_a_chain_that_ends_at_a_file_of_another_arch() -> None:
    # ldconfig's cache says x86-64 (stale), but the file now there is a 32-bit build.
    found = problem(evidence(machines={"/usr/lib64/libnvidia-ml.so.550.54.15": "i386"}))
    assert found.verdict_id == "NVML-ARCH"


def test_a_file_whose_name_carries_no_version() -> None:
    found = problem(evidence(links={}, files=frozenset({"/usr/lib64/libnvidia-ml.so.1"})))
    assert found.verdict_id == "NVML-UNVERSIONED"
    assert "libnvidia-ml.so.<version>" in (found.fix or "")


def test_two_drivers_in_the_cache_the_first_wins_and_the_other_is_named() -> None:
    ev = evidence(
        ldconfig="\tlibnvidia-ml.so.1 (libc6,x86-64) => /usr/local/lib/libnvidia-ml.so.1\n"
        "\tlibnvidia-ml.so.1 (libc6,x86-64) => /usr/lib64/libnvidia-ml.so.1",
        links={
            "/usr/local/lib/libnvidia-ml.so.1": "libnvidia-ml.so.550.54.15",
            "/usr/lib64/libnvidia-ml.so.1": "libnvidia-ml.so.535.104.05",
        },
        files=frozenset({"/usr/local/lib/libnvidia-ml.so.550.54.15", "/usr/lib64/libnvidia-ml.so.535.104.05"}),
        listed=(),
    )
    chosen = choose_nvml_library(ev)
    assert chosen.path == "/usr/local/lib/libnvidia-ml.so.550.54.15"
    assert any("/usr/lib64/libnvidia-ml.so.535.104.05" in note and "535.104.05" in note for note in chosen.notes)


def test_without_the_cache_different_copies_are_ambiguous() -> None:
    ev = evidence(
        ldconfig="",
        links={
            "/usr/lib64/libnvidia-ml.so.1": "libnvidia-ml.so.550.54.15",
            "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1": "libnvidia-ml.so.535.104.05",
        },
        files=frozenset(
            {"/usr/lib64/libnvidia-ml.so.550.54.15", "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.535.104.05"}
        ),
        listed=("/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1", "/usr/lib64/libnvidia-ml.so.1"),
    )
    found = problem(ev)
    assert found.verdict_id == "NVML-AMBIGUOUS"
    assert "ldconfig" in (found.fix or "")


def test_a_loop_is_detected_by_the_chooser_too() -> None:
    found = problem(evidence(links={"/usr/lib64/libnvidia-ml.so.1": "a", "/usr/lib64/a": "libnvidia-ml.so.1"}))
    assert found.verdict_id == "F2"
    assert "loop" in found.problem


def test_mismatch_carries_its_evidence() -> None:
    found = problem(evidence(module_version="535.104.05"))
    assert found.verdict_id == "F14" and found.reboot_required
    assert "loaded nvidia module: 535.104.05" in found.evidence
    assert any(line.startswith("ldconfig: libnvidia-ml.so.1 (libc6,x86-64)") for line in found.evidence)


def test_driver_version_of_file_names() -> None:
    assert driver_version_of("/x/libnvidia-ml.so.535.261.03") == "535.261.03"
    assert driver_version_of("/x/libnvidia-ml.so.390.157") == "390.157"
    assert driver_version_of("/x/libnvidia-ml.so.1") is None
    assert driver_version_of("/x/libnvidia-ml.so") is None
    assert driver_version_of("/x/libnvidia-ml.so.535.261.03.bak") is None


def test_parse_reads_elf_headers() -> None:
    output = "\n".join(
        [
            "gpunode-nvml-probe 1",
            "arch\tppc64le",
            "module\tnot-a-version",
            "ldconfig-status\t0",
            f"file\t/a\t{X86_64_ELF}",
            f"file\t/b\t{I386_ELF}",
            f"file\t/c\t{PPC64LE_ELF}",
            f"file\t/d\t{PPC64_BE_ELF}",
            "file\t/e\t",
            "file\t/f\t2321202f62696e2f7368",
            "end",
        ]
    )
    ev = parse_probe(output)
    assert dict(ev.machines) == {
        "/a": "x86_64",
        "/b": "i386",
        "/c": "ppc64le",
        "/d": "ppc64",
        "/e": "not-elf",
        "/f": "not-elf",
    }
    assert ev.module_version is None  # a /sys file that is not a version is no version
    assert ev.files == frozenset({"/a", "/b", "/c", "/d", "/e", "/f"})
