"""Package plans shared by the driver and toolkit steps: specs, files, commands, state.

Nothing here touches a host. Facts read the installed state with the query commands below
and hand the output to the parsers; planners compare it with what is wanted; operations
run the commands the plans contain. Every value that reaches a shell is quoted here.
"""

from __future__ import annotations

import fnmatch
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from gpunode.bootstrap.errors import UserError

# ---------------------------------------------------------------------------------------
# Plans
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PackageSpec:
    """A package and the version wanted.

    `version` is None (any version), an exact distro version ("535.261.03-1",
    "3:535.261.03-1.el9"), or a glob over distro versions ("535.261.03-*", "535.*") in the
    syntax apt preferences and `apt-get install name=glob` accept.
    """

    name: str
    version: str | None = None

    def apt_arg(self) -> str:
        return self.name if self.version is None else f"{self.name}={self.version}"

    def dnf_arg(self) -> str:
        if self.version is None:
            return self.name
        # dnf matches NAME-VERSION[-RELEASE] patterns; an epoch goes as NAME-EPOCH:VERSION.
        return f"{self.name}-{self.version}"


@dataclass(frozen=True)
class FileSpec:
    """A whole file gpunode owns on the host: written atomically, never merged."""

    path: str
    content: str
    mode: int = 0o644


@dataclass(frozen=True)
class RepoSetup:
    """A package repository to add, with the key that signs it.

    An operation runs `check_command` (exit 0: already set up; nothing to do) and, when it
    fails, `setup_command` (for a signed repository: fetch the key, verify its fingerprint,
    write the keyring atomically; it fails loudly on a wrong key and writes nothing). Then
    it writes `files` as they are (sources list, .repo file). `prerequisites` are the
    packages those commands need (gpg, a downloader).
    """

    name: str
    files: tuple[FileSpec, ...]
    check_command: str | None = None
    setup_command: str | None = None
    keyring_path: str | None = None
    key_url: str | None = None
    key_fingerprint: str | None = None
    prerequisites: tuple[PackageSpec, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class PackagePlan:
    """What to install, what differs from the host, and how.

    `packages` is the whole wanted set; `to_install` the part whose installed version does
    not satisfy it. `install_command` is None when nothing differs; otherwise it names
    every package of the set, so that apt or dnf move the set together. `pin` must be
    written before the install command runs.
    """

    packages: tuple[PackageSpec, ...]
    to_install: tuple[PackageSpec, ...]
    install_command: str | None
    pin: FileSpec | None = None
    notes: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------
# Versions
# ---------------------------------------------------------------------------------------

_GLOB_CHARS = frozenset("*?[")


def is_version_glob(version: str) -> bool:
    return any(char in _GLOB_CHARS for char in version)


def strip_epoch(version: str) -> str:
    """ "3:535.261.03-1.el9" -> "535.261.03-1.el9"; an epoch-less version is unchanged."""
    head, sep, tail = version.partition(":")
    if sep and head.isdigit():
        return tail
    return version


def upstream_version(version: str) -> str:
    """The upstream part of a distro version: no epoch, no Debian revision / RPM release.

    "535.261.03-0ubuntu0.22.04.1" -> "535.261.03"; "3:535.261.03-1.el9" -> "535.261.03".
    """
    bare = strip_epoch(version)
    return bare.rsplit("-", 1)[0] if "-" in bare else bare


def distro_version_pattern(requested: str) -> str:
    """How a user's --driver-version / --toolkit-version maps to distro versions.

    A version with a "-" is a full distro version and is used as written
    ("535.261.03-1~deb12u1"). One without is upstream's ("535.261.03") and stands for
    every packaging of it: the glob "535.261.03-*" matches Debian ("-1", "-0+deb12u1"),
    Ubuntu ("-0ubuntu0.22.04.1") and RPM ("-1.el9") revisions alike.
    """
    if "-" in strip_epoch(requested) or is_version_glob(requested):
        return requested
    return f"{requested}-*"


def version_satisfies(installed: str, wanted: str | None) -> bool:
    """Whether an installed distro version is what `wanted` asks for (see PackageSpec)."""
    if wanted is None:
        return True
    candidates = {installed, strip_epoch(installed)}
    if is_version_glob(wanted):
        return any(fnmatch.fnmatchcase(candidate, wanted) for candidate in candidates)
    if ":" in wanted and not wanted.startswith("0:"):
        return installed == wanted
    return strip_epoch(wanted) in candidates


def differing(specs: Iterable[PackageSpec], installed: Mapping[str, str]) -> tuple[PackageSpec, ...]:
    """The specs that are missing from `installed` or present at another version."""
    return tuple(
        spec
        for spec in specs
        if spec.name not in installed or not version_satisfies(installed[spec.name], spec.version)
    )


# ---------------------------------------------------------------------------------------
# Reading installed state
# ---------------------------------------------------------------------------------------

# Name patterns of every package the driver and toolkit steps look at, on both package
# systems: driver userspace and kernel modules, firmware, toolkit, headers for DKMS.
DPKG_PATTERNS: tuple[str, ...] = (
    "nvidia-*",
    "libnvidia-*",
    "libcuda1",
    "firmware-nvidia-*",
    "linux-modules-nvidia-*",
    "linux-headers-*",
    "dkms",
)
RPM_PATTERNS: tuple[str, ...] = (
    "nvidia-*",
    "libnvidia-*",
    "kmod-nvidia*",
    "cuda-drivers*",
    "dnf-plugin-nvidia",
    "kernel-devel*",
    "dkms",
)

# dpkg-query exits 1 when a pattern matches no package at all (and says so on stderr);
# that is a normal answer here, every other status is a real failure.
DPKG_QUERY_COMMAND = (
    "dpkg-query -W -f='${Package}\\t${Version}\\t${Architecture}\\t${db:Status-Abbrev}\\n' "
    + " ".join(shlex.quote(p) for p in DPKG_PATTERNS)
    + " 2>/dev/null; test $? -le 1"
)
RPM_QUERY_COMMAND = "rpm -qa --qf '%{NAME}\\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\\t%{ARCH}\\n' " + " ".join(
    shlex.quote(p) for p in RPM_PATTERNS
)

# uname -m -> dpkg architecture. RPM uses the uname names themselves.
DPKG_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


def dpkg_arch(machine: str) -> str:
    """`uname -m` to the dpkg architecture; a dpkg name is returned as it is."""
    if machine in DPKG_ARCH.values():
        return machine
    try:
        return DPKG_ARCH[machine]
    except KeyError:
        raise UserError(
            f"Unsupported CPU architecture {machine!r}: gpunode installs NVIDIA packages for "
            "x86_64 (amd64) and aarch64 (arm64) only.",
            fix="run gpunode against an x86_64 or aarch64 host",
        ) from None


def rpm_arch(machine: str) -> str:
    """`uname -m` (or a dpkg name) to the RPM architecture."""
    reverse = {deb: uname for uname, deb in DPKG_ARCH.items()}
    if machine in DPKG_ARCH:
        return machine
    if machine in reverse:
        return reverse[machine]
    dpkg_arch(machine)  # raises the UserError for anything else
    raise AssertionError("unreachable")


def parse_dpkg_query(output: str, arch: str | None = None) -> dict[str, str]:
    """Installed packages from DPKG_QUERY_COMMAND's output: name -> version.

    Only packages whose status is installed count (`ii`, and `hi` for a package on hold;
    `rc`, `un`, half-installed states do not). With `arch` (dpkg name or `uname -m`),
    copies of other architectures (an i386 libnvidia-ml1 next to the amd64 one) are
    ignored; "all" packages always count.
    """
    native = dpkg_arch(arch) if arch else None
    installed: dict[str, str] = {}
    for line in output.splitlines():
        parts = line.split("\t")
        if len(parts) != 4:
            continue
        name, version, package_arch, status = (part.strip() for part in parts)
        if len(status) < 2 or status[1] != "i" or status[0] not in "ih":
            continue
        if native is not None and package_arch not in (native, "all"):
            continue
        installed[name] = version
    return installed


def parse_rpm_query(output: str, arch: str | None = None) -> dict[str, str]:
    """Installed packages from RPM_QUERY_COMMAND's output: name -> [epoch:]version-release.

    A zero epoch is dropped ("0:1.17.8-1" -> "1.17.8-1"), a real one kept
    ("3:535.261.03-1.el9"). With `arch`, packages of other architectures (i686 next to
    x86_64) are ignored; noarch always counts.
    """
    native = rpm_arch(arch) if arch else None
    installed: dict[str, str] = {}
    for line in output.splitlines():
        parts = line.split("\t")
        if len(parts) != 3:
            continue
        name, version, package_arch = (part.strip() for part in parts)
        if not name or not version:
            continue
        if native is not None and package_arch not in (native, "noarch", "(none)"):
            continue
        if version.startswith(("0:", "(none):")):
            version = version.split(":", 1)[1]
        installed[name] = version
    return installed


# ---------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------

_APT_ENV = "DEBIAN_FRONTEND=noninteractive"
# Keep the admin's edited conffiles, take the package's for untouched ones, never ask.
_DPKG_OPTIONS = (
    "-o",
    "Dpkg::Options::=--force-confdef",
    "-o",
    "Dpkg::Options::=--force-confold",
)


def _quoted(words: Iterable[str]) -> str:
    return " ".join(shlex.quote(word) for word in words)


def apt_update_command(*, sources_list: str | None = None) -> str:
    """`apt-get update`; with `sources_list`, only that one sources file is refreshed."""
    words = ["apt-get", "-q", "update"]
    if sources_list is not None:
        words += [
            "-o",
            f"Dir::Etc::SourceList={sources_list}",
            "-o",
            "Dir::Etc::SourceParts=-",
            "-o",
            "APT::Get::List-Cleanup=0",
        ]
    return f"{_APT_ENV} {_quoted(words)}"


def apt_install_command(
    specs: Iterable[PackageSpec | str],
    *,
    allow_downgrades: bool,
    install_recommends: bool = False,
) -> str:
    """`apt-get install -y` of names (name=version) or local .deb paths, non-interactive.

    Recommends are off by default: NVIDIA's userspace packages recommend the DKMS module,
    which is exactly what kernel module mode "none" must not pull in.
    """
    words = ["apt-get", "install", "-y", "-q", *_DPKG_OPTIONS]
    if not install_recommends:
        words.append("--no-install-recommends")
    if allow_downgrades:
        words.append("--allow-downgrades")
    args = [spec.apt_arg() if isinstance(spec, PackageSpec) else spec for spec in specs]
    if not args:
        raise ValueError("apt_install_command needs at least one package")
    return f"{_APT_ENV} {_quoted(words + args)}"


def dnf_install_command(specs: Iterable[PackageSpec | str]) -> str:
    """`dnf install -y` of names (name-version) or local .rpm paths.

    dnf's `install` with an exact version (or a package file) installs that version
    whatever is installed, downgrading if need be, so there is no downgrade switch.
    """
    args = [spec.dnf_arg() if isinstance(spec, PackageSpec) else spec for spec in specs]
    if not args:
        raise ValueError("dnf_install_command needs at least one package")
    return _quoted(["dnf", "install", "-y", *args])


@dataclass(frozen=True)
class AptPin:
    """One stanza of an apt preferences file."""

    packages: tuple[str, ...]
    pin: str
    priority: int = 1001
    explanation: str = ""
    extra: tuple[tuple[str, str], ...] = field(default_factory=tuple)


def render_apt_preferences(stanzas: Iterable[AptPin], *, header: str) -> str:
    """An apt_preferences(5) file. Priority 1001 lets apt downgrade to the pinned version."""
    blocks = [f"# {line}".rstrip() for line in header.splitlines()]
    text = "\n".join(blocks) + "\n"
    for stanza in stanzas:
        for value in (*stanza.packages, stanza.pin, stanza.explanation):
            if "\n" in value:
                raise UserError(f"Invalid value for an apt preferences file: {value!r}.")
        lines = []
        if stanza.explanation:
            lines.append(f"Explanation: {stanza.explanation}")
        lines.append(f"Package: {' '.join(stanza.packages)}")
        lines.append(f"Pin: {stanza.pin}")
        lines.append(f"Pin-Priority: {stanza.priority}")
        text += "\n" + "\n".join(lines) + "\n"
    return text
