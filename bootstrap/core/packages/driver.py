"""Which NVIDIA driver packages a host needs, per distribution, kernel module mode and
request, pinned so that an unattended upgrade cannot move the library away from the
loaded kernel module (F14, docs/failure-modes.md).

Facts about the distributions this encodes (see README "Driver and toolkit packages"):

* Debian 12 (bookworm) ships branch 535 in non-free (535.261.03-1 in bookworm,
  535.309.01-0+deb12u1 in bookworm-security as of 2026-11), Debian 13 (trixie) branch
  550. The userspace libraries depend on `nvidia-alternative` -> `glx-alternative-nvidia`
  (contrib), so contrib is needed even without a kernel module; the DKMS module depends
  on `firmware-nvidia-gsp` (non-free-firmware). Debian has no precompiled, signed modules.
* Ubuntu packages NVIDIA's Enterprise Ready Drivers as `*-<branch>-server[-open]` from
  source `nvidia-graphics-drivers-<branch>-server`, and precompiled, Canonical-signed
  modules as `linux-modules-nvidia-<branch>-server[-open]-<uname -r>`.
* RHEL 8/9 and rebuilds: NVIDIA's CUDA repository with the `nvidia-driver` module
  streams (`<branch>-dkms`, `<branch>-open`, precompiled `<branch>`; `latest-dkms`,
  `open-dkms`, `latest`). RHEL 10 has no module streams: `dnf install nvidia-open` (or
  `cuda-drivers` for the proprietary flavour) with `dnf versionlock` for the branch.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Literal

from gpunode.bootstrap.core.host.os_release import OsRelease
from gpunode.bootstrap.core.packages.common import (
    AptPin,
    FileSpec,
    PackageSpec,
    RepoSetup,
    apt_install_command,
    differing,
    distro_version_pattern,
    render_apt_preferences,
    rpm_arch,
    strip_epoch,
    upstream_version,
)
from gpunode.bootstrap.errors import UserError

KernelModule = Literal["dkms", "precompiled", "none"]
Flavour = Literal["proprietary", "open"]

DRIVER_PIN_PATH = "/etc/apt/preferences.d/gpunode-nvidia-driver.pref"
CUDA_REPO_URL = "https://developer.download.nvidia.com/compute/cuda/repos/rhel{major}/{arch}/cuda-rhel{major}.repo"

# Debian release -> the one driver branch its non-free archive carries.
DEBIAN_BRANCHES = {"bookworm": "535", "trixie": "550"}
DEBIAN_DRIVER_SOURCE = "nvidia-graphics-drivers"
DEBIAN_OPEN_MODULE_SOURCE = "nvidia-open-gpu-kernel-modules"

_BRANCH = re.compile(r"^[0-9]{3,4}$")
_VERSION = re.compile(r"^([0-9]+:)?[0-9][0-9A-Za-z.+~*]*(-[0-9A-Za-z.+~*]+)?$")
_KERNEL_RELEASE = re.compile(r"^[0-9][0-9A-Za-z.+_~\-]*$")
# Ubuntu's Enterprise Ready Driver (-server) packages start with branch 418.
_FIRST_UBUNTU_SERVER_BRANCH = 418


@dataclass(frozen=True)
class DriverRequest:
    """What the operator asked for.

    `version` is either a full distro version ("535.261.03-1~deb12u1", used exactly) or
    NVIDIA's upstream version ("535.261.03"), which matches every packaging of it
    (distro revision "-*"). `branch` defaults to the version's first field.
    """

    branch: str | None = None
    version: str | None = None
    kernel_module: KernelModule = "dkms"
    flavour: Flavour = "proprietary"


@dataclass(frozen=True)
class DriverPlan:
    """The driver packages for one host and how to get them there.

    Order for an operation: enable `components` (Debian: `plan_apt_components`) and set up
    `repo`; write `pin`; `apt-get update` / nothing on dnf; when `install_command` is not
    None run `pre_install_commands`, `install_command`, `post_install_commands`.
    `to_install` is what differs from the host (empty: the step is unchanged).
    """

    packages: tuple[PackageSpec, ...]
    to_install: tuple[PackageSpec, ...]
    install_command: str | None
    branch: str
    version_pattern: str | None
    repo: RepoSetup | None = None
    pin: FileSpec | None = None
    components: tuple[str, ...] = ()
    pre_install_commands: tuple[str, ...] = ()
    post_install_commands: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def _validate(request: DriverRequest, kernel_release: str) -> tuple[str | None, str | None]:
    """(branch, version) after checking their syntax and that they agree."""
    branch, version = request.branch, request.version
    if branch is not None and not _BRANCH.fullmatch(branch):
        raise UserError(
            f"Invalid driver branch {branch!r}: a branch is NVIDIA's major version, "
            "three or four digits such as 535 or 580.",
            fix="pass --driver-branch 535 (or another branch number)",
        )
    if version is not None:
        if not _VERSION.fullmatch(version):
            raise UserError(
                f"Invalid driver version {version!r}.",
                fix="pass NVIDIA's version (535.261.03) or the distro's package version (535.261.03-1~deb12u1)",
            )
        version_branch = upstream_version(version).split(".", 1)[0]
        if branch is None:
            branch = version_branch
        elif version_branch != branch:
            raise UserError(
                f"Driver version {version} is not of branch {branch}.",
                fix=f"drop --driver-branch, or pass a {branch}.x version",
            )
    if request.kernel_module not in ("dkms", "precompiled", "none"):
        raise UserError(
            f"Unknown kernel module mode {request.kernel_module!r}.",
            fix="use --kernel-module dkms, precompiled or none",
        )
    if request.flavour not in ("proprietary", "open"):
        raise UserError(f"Unknown driver flavour {request.flavour!r}.", fix="use the proprietary or the open flavour")
    if request.kernel_module != "none" and not _KERNEL_RELEASE.fullmatch(kernel_release):
        raise UserError(f"Unexpected kernel release {kernel_release!r} (from uname -r).")
    return branch, version


def plan_driver(
    os: OsRelease,
    arch: str,
    request: DriverRequest,
    kernel_release: str,
    installed: Mapping[str, str],
    *,
    available: Collection[str] | None = None,
) -> DriverPlan:
    """The driver packages this host needs, what differs from `installed`, and how.

    `arch` is `uname -m`; `kernel_release` is `uname -r`; `installed` is name -> version
    from `parse_dpkg_query` / `parse_rpm_query`. `available`, when the caller has it
    (`apt-cache pkgnames nvidia-`), lets a missing Ubuntu branch fail here with the list
    of branches that exist instead of in apt. Raises UserError for combinations that do
    not exist.
    """
    branch, version = _validate(request, kernel_release)
    if os.id == "debian":
        return _plan_debian(os, arch, request, branch, version, kernel_release, installed)
    if os.id == "ubuntu":
        return _plan_ubuntu(os, arch, request, branch, version, kernel_release, installed, available)
    if os.family == "rhel" and os.id != "fedora" and os.major_version in ("8", "9", "10"):
        return _plan_rhel(os, arch, request, branch, version, kernel_release, installed)
    raise UserError(
        f"gpunode does not know how to install the NVIDIA driver on {os.describe()}.",
        fix="use Debian 12/13, Ubuntu, or RHEL/Rocky/AlmaLinux/Oracle Linux 8-10; on other "
        "systems install the driver yourself before running gpunode",
    )


# --------------------------------------------------------------------------------------
# Debian
# --------------------------------------------------------------------------------------


def _debian_pin(pattern: str, sources: tuple[str, ...], header: str) -> FileSpec:
    stanzas = [
        AptPin(packages=(f"src:{source}",), pin=f"version {pattern}", explanation=f"gpunode: NVIDIA driver {pattern}")
        for source in sources
    ]
    return FileSpec(DRIVER_PIN_PATH, render_apt_preferences(stanzas, header=header))


def _plan_debian(
    os: OsRelease,
    arch: str,
    request: DriverRequest,
    branch: str | None,
    version: str | None,
    kernel_release: str,
    installed: Mapping[str, str],
) -> DriverPlan:
    from gpunode.bootstrap.core.packages.common import dpkg_arch

    dpkg_arch(arch)
    shipped = DEBIAN_BRANCHES.get(os.codename)
    if shipped is None:
        raise UserError(
            f"gpunode knows the NVIDIA driver packages of Debian "
            f"{', '.join(sorted(DEBIAN_BRANCHES))}, not of {os.describe()}.",
            fix="run gpunode on Debian 12 (bookworm) or 13 (trixie)",
        )
    if branch is not None and branch != shipped:
        raise UserError(
            f"Debian {os.codename} ships NVIDIA driver branch {shipped} only; branch {branch} is not in its archive.",
            fix=f"use --driver-branch {shipped} (or leave it out)",
        )
    branch = shipped
    if request.kernel_module == "precompiled":
        raise UserError(
            "Debian has no precompiled, signed NVIDIA kernel modules.",
            fix="use --kernel-module dkms (the module is built by DKMS for the running "
            "kernel; with Secure Boot it must be signed with an enrolled MOK key) or "
            "--kernel-module none when the module is managed elsewhere",
        )
    open_modules = request.flavour == "open" and request.kernel_module == "dkms"
    if open_modules and version is None:
        raise UserError(
            "Debian packages the open kernel modules separately (nvidia-open-kernel-dkms, "
            "contrib) and they can lag the security updates of the driver userspace, so "
            "gpunode needs the exact version to install both at.",
            fix="pass --driver-version with the version `apt-cache policy nvidia-open-kernel-dkms` shows",
        )

    pin_pattern = distro_version_pattern(version) if version else f"{branch}.*"
    install_pattern: str | None = distro_version_pattern(version) if version else None
    current = installed.get("libnvidia-ml1")
    if version is None and current and upstream_version(current).startswith(f"{branch}."):
        # Keep the installed release: adding a missing package must not upgrade the
        # library under a loaded module.
        install_pattern = current

    names = ["libnvidia-ml1", "nvidia-smi", "libcuda1"]
    notes = [
        "libcuda1 is installed with the NVML library: the container toolkit mounts the "
        "host's libcuda.so.1 into CUDA workloads, which do not ship their own.",
        "Installed without Recommends: nvidia-smi and libcuda1 recommend the DKMS module.",
    ]
    components: tuple[str, ...] = ("contrib", "non-free")
    sources: tuple[str, ...] = (DEBIAN_DRIVER_SOURCE,)
    unversioned: list[str] = []
    if request.kernel_module == "dkms":
        names.append("nvidia-open-kernel-dkms" if open_modules else "nvidia-kernel-dkms")
        unversioned += [f"linux-headers-{kernel_release}", "nvidia-persistenced"]
        components = ("contrib", "non-free", "non-free-firmware")
        if open_modules:
            sources = (DEBIAN_DRIVER_SOURCE, DEBIAN_OPEN_MODULE_SOURCE)
        notes.append(
            "nvidia-persistenced (contrib, versioned on its own) keeps the GPUs initialised "
            "between jobs, as NVIDIA recommends for compute nodes; it is left out in "
            "kernel module mode none, where whoever manages the module manages it."
        )
    else:
        notes.append(
            "Kernel module mode none: no module, no headers, no persistence daemon; the "
            "loaded module must be of the same version as these libraries."
        )
    specs = tuple(PackageSpec(name, install_pattern) for name in names) + tuple(
        PackageSpec(name) for name in unversioned
    )
    header = (
        f"Written by gpunode: holds the NVIDIA driver at {pin_pattern} so that an upgrade\n"
        "cannot replace the library under the loaded kernel module (Driver/library version\n"
        "mismatch). Priority 1001 also lets gpunode move back to this version."
    )
    pin = _debian_pin(pin_pattern, sources, header)
    to_install = differing(specs, installed)
    command = apt_install_command(specs, allow_downgrades=True) if to_install else None
    return DriverPlan(
        packages=specs,
        to_install=to_install,
        install_command=command,
        branch=branch,
        version_pattern=install_pattern,
        pin=pin,
        components=components,
        notes=tuple(notes),
    )


# --------------------------------------------------------------------------------------
# Ubuntu
# --------------------------------------------------------------------------------------


def _ubuntu_server_branches(available: Collection[str]) -> list[str]:
    found = {m.group(1) for name in available if (m := re.fullmatch(r"nvidia-driver-([0-9]+)-server", name))}
    return sorted(found, key=int)


def _plan_ubuntu(
    os: OsRelease,
    arch: str,
    request: DriverRequest,
    branch: str | None,
    version: str | None,
    kernel_release: str,
    installed: Mapping[str, str],
    available: Collection[str] | None,
) -> DriverPlan:
    from gpunode.bootstrap.core.packages.common import dpkg_arch

    dpkg_arch(arch)
    if branch is None:
        hint = ""
        if available is not None and (branches := _ubuntu_server_branches(available)):
            hint = f" This host's apt knows the -server branches {', '.join(branches)}."
        raise UserError(
            "Ubuntu offers several NVIDIA driver branches; gpunode needs to be told which." + hint,
            fix="pass --driver-branch (e.g. 570 or 580; `apt-cache search --names-only "
            "'^nvidia-driver-[0-9]+-server$'` lists them)",
        )
    if int(branch) < _FIRST_UBUNTU_SERVER_BRANCH:
        raise UserError(
            f"NVIDIA driver branch {branch} has no -server (Enterprise Ready Driver) packages on Ubuntu.",
            fix="pick a data-center branch (535, 550, 570, 580 ...)",
        )
    flavour = f"{branch}-server" + ("-open" if request.flavour == "open" else "")
    if available is not None and f"nvidia-driver-{branch}-server" not in available:
        branches = _ubuntu_server_branches(available)
        raise UserError(
            f"Ubuntu {os.codename or os.version_id} has no nvidia-driver-{branch}-server "
            f"package (branch {branch} has no -server flavour in this release's archive)."
            + (f" Available -server branches: {', '.join(branches)}." if branches else ""),
            fix="pick one of the listed branches, or run `apt-get update` if the lists are old",
        )

    pattern: str | None = distro_version_pattern(version) if version else None
    userspace = f"libnvidia-compute-{branch}-server"
    current = installed.get(userspace)
    if version is None and current:
        pattern = current
    pin_pattern = distro_version_pattern(version) if version else f"{branch}.*"

    notes = []
    if request.kernel_module == "dkms":
        names = [f"nvidia-headless-{flavour}", f"nvidia-utils-{branch}-server", userspace]
        extra = [f"linux-headers-{kernel_release}"]
        notes.append(
            f"nvidia-headless-{flavour}: the DKMS module and the compute userspace "
            "without the X server stack a node does not use."
        )
    elif request.kernel_module == "precompiled":
        names = [f"nvidia-headless-no-dkms-{flavour}", f"nvidia-utils-{branch}-server", userspace]
        extra = [f"linux-modules-nvidia-{flavour}-{kernel_release}"]
        notes.append(
            f"Precompiled modules signed by Canonical, for the running kernel "
            f"{kernel_release} only: after a kernel upgrade run gpunode again to install "
            "the modules for the new kernel before rebooting into it."
        )
    else:
        names = [userspace, f"nvidia-utils-{branch}-server"]
        extra = []
        notes.append("Kernel module mode none: only libnvidia-compute (NVML, libcuda) and nvidia-smi.")
    specs = tuple(PackageSpec(name, pattern) for name in names) + tuple(PackageSpec(n) for n in extra)
    source = f"nvidia-graphics-drivers-{branch}-server"
    header = (
        f"Written by gpunode: holds the NVIDIA driver {branch}-server at {pin_pattern} so\n"
        "that an upgrade cannot replace the library under the loaded kernel module."
    )
    pin = _debian_pin(pin_pattern, (source,), header)
    to_install = differing(specs, installed)
    command = apt_install_command(specs, allow_downgrades=True) if to_install else None
    notes.append("The packages come from Ubuntu's restricted component, which must be enabled.")
    return DriverPlan(
        packages=specs,
        to_install=to_install,
        install_command=command,
        branch=branch,
        version_pattern=pattern,
        pin=pin,
        components=("restricted",),
        notes=tuple(notes),
    )


# --------------------------------------------------------------------------------------
# RHEL family
# --------------------------------------------------------------------------------------


def _cuda_repo(os: OsRelease, arch: str) -> RepoSetup:
    # NVIDIA's CUDA repositories call 64-bit Arm servers "sbsa".
    repo_arch = {"x86_64": "x86_64", "aarch64": "sbsa"}[rpm_arch(arch)]
    major = os.major_version
    url = CUDA_REPO_URL.format(major=major, arch=repo_arch)
    path = f"/etc/yum.repos.d/cuda-rhel{major}.repo"
    tmp = f"{path}.gpunode-tmp"
    fetch = (
        f"if command -v curl >/dev/null 2>&1; then curl -fsSL --retry 3 -o {shlex.quote(tmp)} {shlex.quote(url)}; "
        f"elif command -v wget >/dev/null 2>&1; then wget -q -O {shlex.quote(tmp)} {shlex.quote(url)}; "
        "else echo 'gpunode: neither curl nor wget is installed' >&2; exit 1; fi"
    )
    install = (
        f"set -e; trap 'rm -f {shlex.quote(tmp)}' EXIT; {fetch}; "
        f"grep -q '^\\[' {shlex.quote(tmp)}; chmod 0644 {shlex.quote(tmp)}; mv -f {shlex.quote(tmp)} {shlex.quote(path)}"
    )
    return RepoSetup(
        name=f"cuda-rhel{major}",
        files=(),
        check_command=f"test -s {shlex.quote(path)}",
        setup_command=install,
        notes=(f"NVIDIA's CUDA repository file {url}; dnf imports its signing key on first use.",),
    )


def _plan_rhel(
    os: OsRelease,
    arch: str,
    request: DriverRequest,
    branch: str | None,
    version: str | None,
    kernel_release: str,
    installed: Mapping[str, str],
) -> DriverPlan:
    if request.kernel_module == "none":
        raise UserError(
            f"Kernel module mode none is not possible with NVIDIA's packages on {os.describe()}: "
            "the driver userspace requires nvidia-kmod-common, which requires a kernel "
            "module package.",
            fix="use --kernel-module dkms (or precompiled on RHEL 8/9)",
        )
    repo = _cuda_repo(os, arch)
    notes = list(repo.notes)
    pre: list[str] = []
    post: list[str] = []
    devel = [PackageSpec(f"kernel-devel-{kernel_release}")] if request.kernel_module == "dkms" else []
    if request.kernel_module == "dkms":
        notes.append("DKMS comes from EPEL, which must be enabled on the host.")
    if os.major_version in ("8", "9"):
        if version is not None:
            raise UserError(
                f"On {os.describe()} gpunode selects the driver by module stream, which "
                "follows a branch; an exact version cannot be held this way.",
                fix=f"pass --driver-branch {branch} instead of --driver-version",
            )
        if request.kernel_module == "precompiled" and request.flavour == "open":
            raise UserError(
                "NVIDIA's precompiled module streams carry the proprietary modules only.",
                fix="use --kernel-module dkms for the open flavour",
            )
        if request.kernel_module == "dkms":
            stream = (
                (f"{branch}-open" if branch else "open-dkms")
                if request.flavour == "open"
                else (f"{branch}-dkms" if branch else "latest-dkms")
            )
        else:
            stream = branch or "latest"
        kmod = {"open": "kmod-nvidia-open-dkms", "proprietary": "kmod-nvidia-latest-dkms"}[request.flavour]
        wanted = f"{branch}.*" if branch else None
        specs = (
            PackageSpec("nvidia-driver", wanted),
            *([PackageSpec(kmod, wanted)] if request.kernel_module == "dkms" else []),
            *devel,
        )
        to_install = differing(specs, installed)
        module = f"nvidia-driver:{stream}"
        pre = ["dnf -y module reset nvidia-driver", f"dnf -y module enable {shlex.quote(module)}"]
        command_words = ["dnf", "-y", "module", "install", module]
        command = " ".join(shlex.quote(w) for w in command_words)
        if devel:
            command += " && " + " ".join(shlex.quote(w) for w in ["dnf", "install", "-y", devel[0].name])
        notes.append(f"Module stream {module}: dnf follows only that stream's updates.")
    else:  # RHEL 10: no module streams
        if request.kernel_module == "precompiled":
            raise UserError(
                f"NVIDIA offers no precompiled kernel modules for {os.describe()}.",
                fix="use --kernel-module dkms",
            )
        meta = "nvidia-open" if request.flavour == "open" else "cuda-drivers"
        pattern = distro_version_pattern(version) if version else (f"{branch}.*" if branch else None)
        specs = (PackageSpec(meta, pattern), *devel)
        to_install = differing(specs, installed)
        install_specs = [PackageSpec(meta, strip_epoch(version) if version else None), *devel]
        command = " ".join(shlex.quote(w) for w in ["dnf", "install", "-y", *(s.dnf_arg() for s in install_specs)])
        lock = f"*nvidia*{upstream_version(version) if version else branch}*" if (version or branch) else None
        if lock:
            pre.append("dnf install -y python3-dnf-plugin-versionlock")
            quoted = shlex.quote(lock)
            held = f":{upstream_version(version)}-" if version else f":{branch}."
            post.append(f"dnf versionlock list | grep -qF -- {shlex.quote(held)} || dnf versionlock add {quoted}")
            notes.append(f"dnf versionlock {lock} holds the driver after install.")
    return DriverPlan(
        packages=specs,
        to_install=to_install,
        install_command=command if to_install else None,
        branch=branch or "latest",
        version_pattern=version,
        repo=repo,
        pre_install_commands=tuple(pre),
        post_install_commands=tuple(post),
        notes=tuple(notes),
    )
