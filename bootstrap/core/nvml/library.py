"""Which `libnvidia-ml.so.<version>` file a device plugin pod must mount (F1, F2, F14 in docs/failure-modes.md).

The host's `libnvidia-ml.so.1` is almost never the file itself: it is a symlink, on Debian a
chain of three (`/usr/lib/<triplet>/libnvidia-ml.so.1` -> `/etc/alternatives/...` ->
`.../nvidia/current/libnvidia-ml.so.1` -> `libnvidia-ml.so.<version>`), and usrmerge adds a
directory link (`/lib` -> `usr/lib`) in front. A hostPath mount of the link mounts nothing
useful (F2), so the plugin mounts the real file, and that file must carry the same version as
the loaded kernel module (F14) or NVML refuses to start.

Two halves:
- the probe (probe.py) gathers the evidence on the host in one round trip;
- `choose_nvml_library()`, here, decides without I/O from that evidence.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn

from gpunode.bootstrap.core.nvml.probe import (
    MAX_HOPS,
    PROBE_COMMAND,
    PROBE_DIRS,
    PROBE_HEADER,
    LibraryEvidence,
    parse_probe,
    probe_command,
)
from gpunode.bootstrap.core.nvml.problem import LibraryProblem

# The probe's names, imported from here by older callers.
__all__ = [
    "MAX_HOPS",
    "PROBE_COMMAND",
    "PROBE_DIRS",
    "PROBE_HEADER",
    "SONAME",
    "LibraryEvidence",
    "LibraryProblem",
    "NvmlLibrary",
    "choose_nvml_library",
    "driver_version_of",
    "parse_probe",
    "probe_command",
]

SONAME = "libnvidia-ml.so.1"


_VERSION = r"\d+\.\d+(?:\.\d+)*"
_LIBRARY_FILE = re.compile(rf"^libnvidia-ml\.so\.({_VERSION})$")
_LDCONFIG_LINE = re.compile(r"^\s*(?P<name>\S+)\s+\((?P<flags>[^)]*)\)\s+=>\s+(?P<path>.+?)\s*$")
_NVRM_VERSION = re.compile(rf"Kernel Module(?:\s+for\s+\S+)?\s+({_VERSION})\b")
_MODULE_VERSION = re.compile(rf"^{_VERSION}$")


@dataclass(frozen=True)
class _Arch:
    name: str
    ldconfig_flag: str  # the ABI word `ldconfig -p` prints in parentheses for this arch
    elf_machine: str  # what `_elf_machine` returns for this arch's shared objects
    lib_dirs: tuple[str, ...]  # where this arch's libnvidia-ml.so.1 lives on the distros we know
    debian_triplet: str


_ARCHES: dict[str, _Arch] = {
    "x86_64": _Arch(
        "x86_64",
        "x86-64",
        "x86_64",
        (
            "/usr/lib/x86_64-linux-gnu",
            "/lib/x86_64-linux-gnu",
            "/usr/lib64",
            "/lib64",
            "/usr/local/lib",
            "/usr/local/nvidia/lib64",
        ),
        "x86_64-linux-gnu",
    ),
    "aarch64": _Arch(
        "aarch64",
        "AArch64",
        "aarch64",
        (
            "/usr/lib/aarch64-linux-gnu",
            "/lib/aarch64-linux-gnu",
            "/usr/lib64",
            "/lib64",
            "/usr/local/lib",
            "/usr/local/nvidia/lib64",
        ),
        "aarch64-linux-gnu",
    ),
    "ppc64le": _Arch(
        "ppc64le",
        "64bit",
        "ppc64le",
        ("/usr/lib/powerpc64le-linux-gnu", "/lib/powerpc64le-linux-gnu", "/usr/lib64", "/lib64", "/usr/local/lib"),
        "powerpc64le-linux-gnu",
    ),
}
_ARCH_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}


@dataclass(frozen=True)
class NvmlLibrary:
    """The real library file to mount, and how it was found."""

    path: str  # the regular file, e.g. /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.535.261.03
    version: str  # e.g. "535.261.03"
    chain: tuple[str, ...]  # from libnvidia-ml.so.1, hop by hop, to `path`
    notes: tuple[str, ...]  # what was ignored or could not be checked, in plain words
    module_version: str | None = None  # the loaded module's version it was checked against


# --------------------------------------------------------------------------------------------
# The choice


def driver_version_of(path: str) -> str | None:
    """`535.261.03` for `.../libnvidia-ml.so.535.261.03`; None when the name carries none."""
    found = _LIBRARY_FILE.match(posixpath.basename(path))
    return found.group(1) if found else None


@dataclass(frozen=True)
class _Resolution:
    start: str
    chain: tuple[str, ...]
    final: str  # where the walk ended (the last path, whether it exists or not)
    looped: bool


_ResolveFn = Callable[[str], _Resolution]


def _resolve(start: str, links: Mapping[str, str]) -> _Resolution:
    """Follow `start` through `links` exactly as the probe's gn_follow does on the host."""
    path = start
    chain = [posixpath.normpath(start)]
    hops = 0
    while True:
        rest = path.lstrip("/").split("/")
        current = ""
        hit = False
        for index, part in enumerate(rest):
            if part in ("", "."):
                continue
            if part == "..":
                current = current.rsplit("/", 1)[0]
                continue
            current = f"{current}/{part}"
            target = links.get(current)
            if target is not None:
                base = target if target.startswith("/") else f"{current.rsplit('/', 1)[0]}/{target}"
                remainder = "/".join(rest[index + 1 :])
                path = f"{base}/{remainder}" if remainder else base
                hit = True
                break
        if not hit:
            final = current or "/"
            if chain[-1] != final:
                chain.append(final)
            return _Resolution(start, tuple(chain), final, looped=False)
        hops += 1
        if hops > MAX_HOPS:
            return _Resolution(start, tuple(chain), path, looped=True)
        shown = posixpath.normpath(path)
        if chain[-1] != shown:
            chain.append(shown)


@dataclass(frozen=True)
class _LdconfigEntry:
    name: str
    flags: tuple[str, ...]
    path: str
    line: str


def _ldconfig_entries(text: str) -> list[_LdconfigEntry]:
    entries = []
    for line in text.splitlines():
        found = _LDCONFIG_LINE.match(line)
        if found:
            flags = tuple(word.strip() for word in found.group("flags").split(","))
            entries.append(_LdconfigEntry(found.group("name"), flags, found.group("path"), line.strip()))
    return entries


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def _arrow(chain: Sequence[str]) -> str:
    return " -> ".join(chain)


def _candidates(
    arch: _Arch, evidence: LibraryEvidence, notes: list[str], evidence_lines: list[str]
) -> tuple[list[str], bool]:
    """The libnvidia-ml.so.1 paths to follow, first the loader's, and whether ldconfig's cache
    named them (else the listed library directories did)."""
    entries = [e for e in _ldconfig_entries(evidence.ldconfig) if e.name == SONAME]
    native = [e for e in entries if arch.ldconfig_flag in e.flags]
    for entry in entries:
        evidence_lines.append(f"ldconfig: {entry.line}")
        if entry not in native:
            notes.append(
                f"ignored {entry.path}: ldconfig lists it as ({', '.join(entry.flags)}), not an {arch.name} library"
            )
    if native:
        return [e.path for e in native], True
    listed = [p for p in evidence.listed if posixpath.basename(p) == SONAME and posixpath.dirname(p) in arch.lib_dirs]
    if listed:
        notes.append(
            f"ldconfig's cache does not list an {arch.name} {SONAME}; found it by "
            "listing the library directories (run ldconfig so host tools find it too)"
        )
    return listed, False


def choose_nvml_library(evidence: LibraryEvidence) -> NvmlLibrary:
    """The real NVML library file for this host, or a `LibraryProblem` with the fix.

    The candidate is the first `libnvidia-ml.so.1` of the host's architecture in ldconfig's
    cache (the one the dynamic loader, and so nvidia-smi, uses); only when the cache lists
    none do the listed library directories count. 32-bit and other-architecture copies are
    ignored, leftovers of other driver versions are named in the notes, and a library whose
    version differs from the loaded kernel module is refused (F14), never replaced silently
    by another copy.
    """
    arch = _ARCHES.get(_ARCH_ALIASES.get(evidence.arch, evidence.arch))
    if arch is None:
        raise LibraryProblem(
            "NVML-ARCH",
            f"This host's architecture {evidence.arch!r} is not one NVIDIA ships a Linux "
            "driver for (x86_64, aarch64, ppc64le).",
            "Run gpunode on a GPU node of a supported architecture.",
            evidence=(f"uname -m: {evidence.arch}",),
        )
    notes: list[str] = []
    evidence_lines: list[str] = [f"uname -m: {evidence.arch}"]
    evidence_lines.append(
        f"loaded nvidia module: {evidence.module_version}" if evidence.module_version else "loaded nvidia module: none"
    )
    if evidence.ldconfig_error:
        notes.append(f"ldconfig -p failed ({evidence.ldconfig_error}); judged from the directory listing")
        evidence_lines.append(f"ldconfig: {evidence.ldconfig_error}")

    resolved: dict[str, _Resolution] = {}

    def resolve(path: str) -> _Resolution:
        if path not in resolved:
            resolved[path] = _resolve(path, evidence.links)
        return resolved[path]

    candidates, from_cache = _candidates(arch, evidence, notes, evidence_lines)
    for path in evidence.listed:
        resolution = resolve(path)
        evidence_lines.append(f"listed: {_arrow(resolution.chain)}" + (" (loop)" if resolution.looped else ""))

    usable = [resolve(c) for c in candidates]
    if not usable:
        _raise_missing(arch, evidence, resolve, evidence_lines)

    if not from_cache:
        # Without the cache we cannot tell which copy the loader would take: only accept
        # several candidates when they all end at the same file.
        finals = {r.final for r in usable if not r.looped}
        if len(finals) > 1:
            raise LibraryProblem(
                "NVML-AMBIGUOUS",
                f"Several {arch.name} copies of {SONAME} lead to different files and ldconfig's "
                "cache names none of them: " + "; ".join(_arrow(r.chain) for r in usable) + ".",
                "Remove the copies that do not belong to the installed driver, then run ldconfig.",
                evidence=evidence_lines,
            )

    chosen = usable[0]
    _check_chain(chosen, arch, evidence, evidence_lines)
    version = driver_version_of(chosen.final)
    if version is None:
        raise LibraryProblem(
            "NVML-UNVERSIONED",
            f"{SONAME} resolves to {chosen.final}, whose file name does not carry the driver "
            "version (libnvidia-ml.so.<version>), so gpunode cannot check it against the "
            "kernel module.",
            "Reinstall the driver's NVML package so that libnvidia-ml.so.1 is a link to "
            "libnvidia-ml.so.<version> (Debian: libnvidia-ml1; Ubuntu: "
            "libnvidia-compute-<branch>; RHEL family: nvidia-driver-NVML).",
            evidence=evidence_lines,
        )

    for other in usable[1:]:
        if other.final != chosen.final:
            other_version = driver_version_of(other.final)
            notes.append(
                f"also in ldconfig's cache: {_arrow(other.chain)}"
                + (f" (driver {other_version})" if other_version else "")
                + f"; the loader uses {chosen.start} first"
            )

    notes.extend(_leftovers(arch, evidence, resolve, {r.final for r in usable}))

    module = evidence.module_version
    if module is None:
        notes.append(
            "no nvidia kernel module is loaded, so the library's version could not be "
            "checked against it; NVML will not start until the module is loaded"
        )
    elif module != version:
        _raise_mismatch(module, version, chosen, evidence, resolve, evidence_lines)

    return NvmlLibrary(
        path=chosen.final,
        version=version,
        chain=chosen.chain,
        notes=tuple(notes),
        module_version=module,
    )


def _check_chain(chosen: _Resolution, arch: _Arch, evidence: LibraryEvidence, evidence_lines: list[str]) -> None:
    if chosen.looped:
        raise LibraryProblem(
            "F2",
            f"{chosen.start} is a symlink loop: {_arrow(chosen.chain)} -> ... never reaches a file.",
            "Repair the link chain: reinstall the driver's NVML package (on Debian also check "
            "`update-alternatives --display nvidia`), then run ldconfig.",
            evidence=evidence_lines,
        )
    if chosen.final not in evidence.files:
        raise LibraryProblem(
            "F2",
            f"{chosen.start} is a dangling symlink: {_arrow(chosen.chain)}, and "
            f"{chosen.final} does not exist as a file.",
            "Reinstall the driver's NVML package (Debian: libnvidia-ml1; Ubuntu: "
            "libnvidia-compute-<branch>; RHEL family: nvidia-driver-NVML), or remove the "
            "stale link, then run ldconfig.",
            evidence=evidence_lines,
        )
    machine = evidence.machines.get(chosen.final)
    if machine is not None and machine != arch.elf_machine:
        raise LibraryProblem(
            "NVML-ARCH",
            f"{_arrow(chosen.chain)} ends at a {machine} file, but this host is {arch.name}.",
            f"Install the {arch.name} NVML package (on Debian libnvidia-ml1 for the host's "
            "architecture) and run ldconfig.",
            evidence=evidence_lines,
        )


def _leftovers(arch: _Arch, evidence: LibraryEvidence, resolve: _ResolveFn, already_named: set[str]) -> list[str]:
    notes: list[str] = []
    seen = set(already_named)
    for path in evidence.listed:
        resolution = resolve(path)
        if resolution.looped:
            notes.append(f"symlink loop left behind: {path}")
            continue
        final = resolution.final
        if final not in evidence.files:
            if path in evidence.links:
                notes.append(f"dangling symlink left behind: {_arrow(resolution.chain)}")
            continue
        if final in seen:
            continue
        seen.add(final)
        machine = evidence.machines.get(final)
        version = driver_version_of(final)
        if machine is not None and machine != arch.elf_machine:
            notes.append(f"ignored {final}: it is built for {machine}, not {arch.name}")
        elif version is not None:
            notes.append(f"leftover of driver {version}: {final}")
    return notes


def _of_arch(path: str, arch: _Arch) -> bool:
    """A path where this architecture's library (or a link to it) lives."""
    return arch.debian_triplet in path or any(path.startswith(d.rstrip("/") + "/") for d in arch.lib_dirs)


def _raise_missing(arch: _Arch, evidence: LibraryEvidence, resolve: _ResolveFn, evidence_lines: list[str]) -> NoReturn:
    # ldconfig drops a library whose file is gone, but the links to it stay on disk: a chain
    # that dangles is a broken chain (F2), whatever the cache says, not a missing library.
    for path in evidence.listed:
        resolution = resolve(path)
        if SONAME in posixpath.basename(path) and _of_arch(path, arch) and not resolution.looped:
            if resolution.final not in evidence.files and resolution.final != path:
                _check_chain(resolution, arch, evidence, evidence_lines)
    others = []
    for path in evidence.listed:
        resolution = resolve(path)
        if not resolution.looped and resolution.final in evidence.files:
            machine = evidence.machines.get(resolution.final, "unknown")
            others.append(f"{resolution.final} ({machine})")
    found = f" Only these were found: {', '.join(sorted(set(others)))}." if others else ""
    raise LibraryProblem(
        "NVML-MISSING",
        f"No {arch.name} {SONAME} on this host: ldconfig's cache lists none and the library "
        f"directories hold none.{found}",
        "Install the driver's NVML library for this architecture (Debian: libnvidia-ml1 "
        f"from non-free, which puts it under /usr/lib/{arch.debian_triplet}/nvidia/current; "
        "Ubuntu: libnvidia-compute-<branch>; RHEL family: nvidia-driver-NVML from NVIDIA's "
        "CUDA repository), then run ldconfig.",
        evidence=evidence_lines,
    )


def _raise_mismatch(
    module: str,
    version: str,
    chosen: _Resolution,
    evidence: LibraryEvidence,
    resolve: _ResolveFn,
    evidence_lines: list[str],
) -> NoReturn:
    matching = sorted(
        {
            r.final
            for r in (resolve(p) for p in evidence.listed)
            if not r.looped and r.final in evidence.files and driver_version_of(r.final) == module
        }
    )
    also = (
        (
            f" A file of the module's version is still present ({', '.join(matching)}), but it "
            "is not what libnvidia-ml.so.1 leads to, so gpunode does not pick it."
        )
        if matching
        else ""
    )
    try:
        library_newer = _version_key(version) > _version_key(module)
    except ValueError:
        library_newer = True
    problem = (
        f"Driver/library version mismatch: the loaded nvidia kernel module is {module} but "
        f"{_arrow(chosen.chain)} is {version}; NVML fails with "
        f"'Driver/library version mismatch'.{also}"
    )
    if library_newer:
        fix = (
            f"Reboot the host so that the {version} kernel module is loaded (the driver was "
            "upgraded but the old module is still running), then run gpunode again so the "
            "device plugin mounts the new library."
        )
    else:
        fix = (
            f"The userspace library is older than the running module: install the driver "
            f"packages of version {module} so libnvidia-ml.so.1 leads to "
            f"libnvidia-ml.so.{module}, or reboot if {version} is the driver you want."
        )
    raise LibraryProblem(
        "F14",
        problem,
        fix,
        evidence=evidence_lines,
        reboot_required=library_newer,
        module_version=module,
        library_version=version,
    )
