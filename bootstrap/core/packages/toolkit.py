"""The NVIDIA container toolkit: NVIDIA's repository with its verified signing key, or a
local directory of packages (air-gapped hosts), all four packages held at one version.

The signing key of https://nvidia.github.io/libnvidia-container/gpgkey is
"NVIDIA CORPORATION (Open Source Projects) <cudatools@nvidia.com>", primary key
C95B321B61E88C1809C4F759DDCAE044F796ECB0 (rsa4096, 2017-09-28), as `gpg --show-keys`
prints it in NVIDIA/nvidia-container-toolkit issue #1460 and as apt names it
(NO_PUBKEY DDCAE044F796ECB0) when the key is missing. The key is fetched at run time and
trusted only when its primary fingerprint is exactly this one.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from gpunode.bootstrap.core.host.os_release import OsRelease
from gpunode.bootstrap.core.packages.common import (
    AptPin,
    FileSpec,
    PackagePlan,
    PackageSpec,
    RepoSetup,
    apt_install_command,
    differing,
    distro_version_pattern,
    dnf_install_command,
    dpkg_arch,
    render_apt_preferences,
    rpm_arch,
    upstream_version,
)
from gpunode.bootstrap.errors import UserError

TOOLKIT_PACKAGES: tuple[str, ...] = (
    "nvidia-container-toolkit",
    "nvidia-container-toolkit-base",
    "libnvidia-container-tools",
    "libnvidia-container1",
)
TOOLKIT_KEY_URL = "https://nvidia.github.io/libnvidia-container/gpgkey"
TOOLKIT_KEY_FINGERPRINT = "C95B321B61E88C1809C4F759DDCAE044F796ECB0"
TOOLKIT_APT_KEYRING = "/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg"
TOOLKIT_RPM_KEY = "/etc/pki/rpm-gpg/RPM-GPG-KEY-nvidia-container-toolkit"
# The same file names NVIDIA's install guide uses, so that a host set up by hand gets its
# file replaced instead of a second, conflicting entry.
TOOLKIT_APT_LIST = "/etc/apt/sources.list.d/nvidia-container-toolkit.list"
TOOLKIT_YUM_REPO = "/etc/yum.repos.d/nvidia-container-toolkit.repo"
TOOLKIT_APT_BASE = "https://nvidia.github.io/libnvidia-container/stable/deb"
TOOLKIT_RPM_BASE = "https://nvidia.github.io/libnvidia-container/stable/rpm"
TOOLKIT_PIN_PATH = "/etc/apt/preferences.d/gpunode-nvidia-container-toolkit.pref"
LOCAL_PACKAGE_DIR = "/var/lib/gpunode/packages/toolkit"

Family = Literal["debian", "rhel"]
_VERSION = re.compile(r"^([0-9]+:)?[0-9][0-9A-Za-z.+~]*(-[0-9A-Za-z.+~]+)?$")
_FINGERPRINT = re.compile(r"^[0-9A-F]{40}$")


@dataclass(frozen=True)
class ToolkitRequest:
    """--toolkit-version (upstream "1.17.8" or a full package version) and
    --toolkit-packages DIR (a local directory instead of NVIDIA's repository)."""

    version: str | None = None
    local_dir: str | None = None


@dataclass(frozen=True)
class LocalPackage:
    """One package file read on the operator's machine (see gpunode.bootstrap.node.local_packages)."""

    name: str
    version: str
    architecture: str
    depends: tuple[str, ...]
    file_name: str
    sha256: str
    path: str
    format: Literal["deb", "rpm"]


@dataclass(frozen=True)
class Upload:
    local_path: str
    remote_path: str
    sha256: str


@dataclass(frozen=True)
class LocalToolkitPlan:
    """Upload `uploads` (skip a file whose remote sha256 matches), write `pin`, then run
    `install_command` when it is not None."""

    packages: tuple[PackageSpec, ...]
    to_install: tuple[PackageSpec, ...]
    uploads: tuple[Upload, ...]
    install_command: str | None
    remote_dir: str
    pin: FileSpec | None = None
    notes: tuple[str, ...] = ()


def _family(os: OsRelease) -> Family:
    family = os.family
    if family == "unknown":
        raise UserError(
            f"gpunode installs the NVIDIA container toolkit on Debian/Ubuntu and RHEL-family "
            f"hosts, not on {os.describe()}.",
            fix="install nvidia-container-toolkit yourself on this host",
        )
    return family


def _check_version(version: str) -> None:
    if not _VERSION.fullmatch(version):
        raise UserError(
            f"Invalid toolkit version {version!r}.",
            fix="pass NVIDIA's version such as 1.17.8 (or the package version 1.17.8-1)",
        )


# --------------------------------------------------------------------------------------
# Signing key
# --------------------------------------------------------------------------------------

# The primary key fingerprints of an OpenPGP key file, one per line.
_FPR_AWK = 'awk -F: \'$1 == "pub" { p = 1; next } $1 == "fpr" && p { print $10; p = 0 }\''


def key_check_script(keyring_path: str, fingerprint: str) -> str:
    """sh script: exit 0 when `keyring_path` holds exactly the key `fingerprint`."""
    keyring = shlex.quote(keyring_path)
    return "\n".join(
        [
            "set -eu",
            f"test -s {keyring}",
            "command -v gpg >/dev/null 2>&1",
            'work=$(mktemp -d); trap \'rm -rf "$work"\' EXIT; mkdir -m 700 "$work/gnupg"',
            f'got=$(GNUPGHOME="$work/gnupg" gpg --batch --quiet --show-keys --with-colons {keyring} 2>/dev/null | {_FPR_AWK})',
            f'test "$got" = {shlex.quote(fingerprint)}',
        ]
    )


def key_install_script(key_url: str, fingerprint: str, keyring_path: str, *, dearmor: bool) -> str:
    """sh script: fetch the key (curl or wget, whichever exists), refuse it unless its
    primary fingerprint is `fingerprint`, write it (dearmored for apt's signed-by, armored
    for rpm) to `keyring_path` with a rename, so that a failure leaves nothing behind."""
    if not _FINGERPRINT.fullmatch(fingerprint):
        raise ValueError(f"not an OpenPGP v4 fingerprint: {fingerprint!r}")
    url, fpr, keyring = shlex.quote(key_url), shlex.quote(fingerprint), shlex.quote(keyring_path)
    tmp = shlex.quote(keyring_path + ".gpunode-tmp")
    convert = (
        'if grep -q -- "-----BEGIN PGP PUBLIC KEY BLOCK-----" "$work/key"; then '
        'GNUPGHOME="$work/gnupg" gpg --batch --yes --dearmor -o "$work/keyring" "$work/key"; '
        'else cp "$work/key" "$work/keyring"; fi'
        if dearmor
        else 'cp "$work/key" "$work/keyring"'
    )
    return "\n".join(
        [
            "set -eu",
            "umask 022",
            'work=$(mktemp -d); trap \'rm -rf "$work"\' EXIT; mkdir -m 700 "$work/gnupg"',
            "if command -v curl >/dev/null 2>&1; then",
            f'  curl -fsSL --retry 3 -o "$work/key" {url}',
            "elif command -v wget >/dev/null 2>&1; then",
            f'  wget -q -O "$work/key" {url}',
            "else",
            f"  echo 'gpunode: cannot fetch '{url}': neither curl nor wget is installed' >&2; exit 1",
            "fi",
            "if ! command -v gpg >/dev/null 2>&1; then",
            "  echo 'gpunode: gpg is needed to verify the signing key (Debian: gpg, RHEL: gnupg2)' >&2; exit 1",
            "fi",
            f'got=$(GNUPGHOME="$work/gnupg" gpg --batch --quiet --show-keys --with-colons "$work/key" | {_FPR_AWK} || true)',
            f'if [ "$got" != {fpr} ]; then',
            f'  echo "gpunode: refusing the key from "{url}": its fingerprint is ${{got:-unreadable}}, expected "{fpr} >&2',
            "  exit 1",
            "fi",
            convert,
            f'mkdir -p "$(dirname {keyring})"',
            f'cp "$work/keyring" {tmp}',
            f"chmod 0644 {tmp}",
            f"mv -f {tmp} {keyring}",
        ]
    )


def sh_command(script: str) -> str:
    """One command line that runs a multi-line sh script."""
    return f"sh -c {shlex.quote(script)}"


# --------------------------------------------------------------------------------------
# NVIDIA's repository
# --------------------------------------------------------------------------------------


def plan_toolkit_repo(os: OsRelease, arch: str) -> RepoSetup:
    """NVIDIA's toolkit repository for this host, signed by the verified key."""
    family = _family(os)
    if family == "debian":
        deb_arch = dpkg_arch(arch)
        line = f"deb [arch={deb_arch} signed-by={TOOLKIT_APT_KEYRING}] {TOOLKIT_APT_BASE}/{deb_arch} /\n"
        content = (
            "# Written by gpunode: NVIDIA's container toolkit repository, signed by the key\n"
            f"# {TOOLKIT_KEY_FINGERPRINT} (verified before it was installed).\n" + line
        )
        files = (FileSpec(TOOLKIT_APT_LIST, content),)
        keyring, dearmor = TOOLKIT_APT_KEYRING, True
        prerequisites = (PackageSpec("gpg"),)
    else:
        rpm_arch(arch)
        content = "\n".join(
            [
                "# Written by gpunode: NVIDIA's container toolkit repository; its metadata is",
                f"# signed by the key {TOOLKIT_KEY_FINGERPRINT}, verified before it was installed.",
                "[nvidia-container-toolkit]",
                "name=nvidia-container-toolkit",
                f"baseurl={TOOLKIT_RPM_BASE}/$basearch",
                "repo_gpgcheck=1",
                "gpgcheck=0",
                "enabled=1",
                f"gpgkey=file://{TOOLKIT_RPM_KEY}",
                "sslverify=1",
                "sslcacert=/etc/pki/tls/certs/ca-bundle.crt",
                "",
            ]
        )
        files = (FileSpec(TOOLKIT_YUM_REPO, content),)
        keyring, dearmor = TOOLKIT_RPM_KEY, False
        prerequisites = (PackageSpec("gnupg2"),)
    return RepoSetup(
        name="nvidia-container-toolkit",
        files=files,
        check_command=sh_command(key_check_script(keyring, TOOLKIT_KEY_FINGERPRINT)),
        setup_command=sh_command(
            key_install_script(TOOLKIT_KEY_URL, TOOLKIT_KEY_FINGERPRINT, keyring, dearmor=dearmor)
        ),
        keyring_path=keyring,
        key_url=TOOLKIT_KEY_URL,
        key_fingerprint=TOOLKIT_KEY_FINGERPRINT,
        prerequisites=prerequisites,
        notes=(
            "The setup command needs curl or wget, and gpg; it refuses a key whose "
            "fingerprint differs and writes nothing then.",
        ),
    )


def _toolkit_pin(pattern: str) -> FileSpec:
    header = (
        f"Written by gpunode: the four NVIDIA container toolkit packages held together at\n"
        f"{pattern}. Priority 1001 also lets gpunode move back to this version."
    )
    stanza = AptPin(
        packages=TOOLKIT_PACKAGES, pin=f"version {pattern}", explanation=f"gpunode: NVIDIA container toolkit {pattern}"
    )
    return FileSpec(TOOLKIT_PIN_PATH, render_apt_preferences([stanza], header=header))


def _versions_agree(installed: Mapping[str, str]) -> bool:
    versions = {installed[name] for name in TOOLKIT_PACKAGES if name in installed}
    return len(versions) <= 1


def plan_toolkit_packages(
    version: str | None, installed: Mapping[str, str], *, family: Family = "debian"
) -> PackagePlan:
    """All four toolkit packages at one version, from NVIDIA's repository.

    With a version, each is pinned to it (apt preferences; on dnf the exact version is
    installed and held with versionlock). Without one, a host that has all four at one
    version is left alone, and otherwise all four are installed at the repository's newest.
    """
    if version is not None:
        _check_version(version)
    pattern = distro_version_pattern(version) if version else None
    specs = tuple(PackageSpec(name, pattern) for name in TOOLKIT_PACKAGES)
    to_install = differing(specs, installed)
    if not to_install and not _versions_agree(installed):
        to_install = specs
    notes: list[str] = []
    pin = _toolkit_pin(pattern) if (pattern and family == "debian") else None
    if pattern is None:
        notes.append("No --toolkit-version: the toolkit is not held and follows NVIDIA's repository.")
    if not to_install:
        command = None
    elif family == "debian":
        command = apt_install_command(specs, allow_downgrades=True)
    else:
        command = dnf_install_command(PackageSpec(s.name, version) for s in specs)
        if version:
            locks = " ".join(shlex.quote(f"{s.name}-{upstream_version(version)}*") for s in specs)
            command += f" && dnf install -y python3-dnf-plugin-versionlock && dnf versionlock add {locks}"
    return PackagePlan(packages=specs, to_install=to_install, install_command=command, pin=pin, notes=tuple(notes))


# --------------------------------------------------------------------------------------
# Local directory of packages
# --------------------------------------------------------------------------------------


def validate_local_toolkit(
    packages: Sequence[LocalPackage], arch: str, *, family: Family = "debian"
) -> tuple[LocalPackage, ...]:
    """The four toolkit packages among `packages`, checked: each present once, one
    version, built for this host. Raises UserError naming everything that is wrong."""
    fmt = "deb" if family == "debian" else "rpm"
    host_arch = dpkg_arch(arch) if fmt == "deb" else rpm_arch(arch)
    wrong_format = sorted(p.file_name for p in packages if p.format != fmt and p.name in TOOLKIT_PACKAGES)
    usable = [p for p in packages if p.format == fmt]
    problems: list[str] = []
    chosen: dict[str, LocalPackage] = {}
    for name in TOOLKIT_PACKAGES:
        found = [p for p in usable if p.name == name]
        if not found:
            problems.append(f"{name} is missing")
        elif len(found) > 1:
            problems.append(f"{name} is there {len(found)} times ({', '.join(sorted(p.file_name for p in found))})")
        else:
            chosen[name] = found[0]
    for package in chosen.values():
        if package.architecture not in (host_arch, "all", "noarch"):
            problems.append(f"{package.file_name} is built for {package.architecture}, the host is {host_arch}")
    versions = sorted({p.version for p in chosen.values()})
    if len(versions) > 1:
        problems.append(
            "the packages are of different versions: " + ", ".join(f"{p.name} {p.version}" for p in chosen.values())
        )
    if problems:
        detail = "; ".join(problems)
        if wrong_format:
            detail += (
                f" (.{'rpm' if fmt == 'deb' else 'deb'} files are not used on this host: {', '.join(wrong_format)})"
            )
        raise UserError(
            f"The toolkit package directory is not usable for this {family} {host_arch} host: {detail}.",
            fix=f"put the four .{fmt} files {', '.join(TOOLKIT_PACKAGES)} of one release, "
            f"built for {host_arch}, in the directory",
        )
    return tuple(chosen[name] for name in TOOLKIT_PACKAGES)


def plan_local_toolkit(
    packages: Sequence[LocalPackage],
    installed: Mapping[str, str],
    arch: str,
    *,
    family: Family = "debian",
    remote_dir: str = LOCAL_PACKAGE_DIR,
) -> LocalToolkitPlan:
    """Install the toolkit from a local directory of package files.

    Nothing is uploaded or installed when the host already has all four at the files'
    version. Otherwise the four files go to `remote_dir` on the host and apt/dnf installs
    them from there (downgrading if need be), resolving their dependencies from the
    host's own repositories.
    """
    chosen = validate_local_toolkit(packages, arch, family=family)
    version = chosen[0].version
    specs = tuple(PackageSpec(p.name, version) for p in chosen)
    to_install = differing(specs, installed)
    uploads = tuple(Upload(p.path, f"{remote_dir.rstrip('/')}/{p.file_name}", p.sha256) for p in chosen)
    paths = [u.remote_path for u in uploads]
    command: str | None
    if not to_install:
        command = None
    elif family == "debian":
        command = apt_install_command(paths, allow_downgrades=True)
    else:
        command = dnf_install_command(paths)
    ignored = sorted(p.file_name for p in packages if p not in chosen)
    notes = [f"Ignored (not toolkit packages for this host): {', '.join(ignored)}."] if ignored else []
    pin = _toolkit_pin(version) if family == "debian" else None
    return LocalToolkitPlan(
        packages=specs,
        to_install=to_install,
        uploads=uploads if to_install else (),
        install_command=command,
        remote_dir=remote_dir,
        pin=pin,
        notes=tuple(notes),
    )


def installed_toolkit_version(installed: Mapping[str, str]) -> str | None:
    """The toolkit version when all four packages are installed at one version."""
    versions = {installed.get(name) for name in TOOLKIT_PACKAGES}
    if None in versions or len(versions) != 1:
        return None
    (only,) = versions
    return only


__all__ = [
    "LOCAL_PACKAGE_DIR",
    "LocalPackage",
    "LocalToolkitPlan",
    "TOOLKIT_KEY_FINGERPRINT",
    "TOOLKIT_KEY_URL",
    "TOOLKIT_PACKAGES",
    "ToolkitRequest",
    "Upload",
    "installed_toolkit_version",
    "key_check_script",
    "key_install_script",
    "plan_local_toolkit",
    "plan_toolkit_packages",
    "plan_toolkit_repo",
    "sh_command",
    "validate_local_toolkit",
]
