"""Doctor rules over what the host itself says: GPUs, driver, library, toolkit, containerd,
the kubelet. Pure: a DoctorCase in, verdicts added to Findings."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from gpunode.bootstrap.core.doctor.engine import Findings
from gpunode.bootstrap.core.doctor.evidence import DoctorCase
from gpunode.bootstrap.core.doctor.rules_runtime import containerd_rules, kubelet_host_rules, toolkit_rules
from gpunode.bootstrap.core.host.diagnostics import HostDiagnostics, NvmlCheck
from gpunode.bootstrap.core.host.facts import HostFacts
from gpunode.bootstrap.core.nvml.library import LibraryEvidence, LibraryProblem, NvmlLibrary, choose_nvml_library
from gpunode.bootstrap.errors import HostStateError

# Package names whose presence means an NVIDIA driver (userspace or module) is installed:
# Debian, Ubuntu, the RHEL family.
_DRIVER_PACKAGE_PREFIXES = (
    "libnvidia-ml",
    "nvidia-driver",
    "libnvidia-compute",
    "nvidia-kernel",
    "kmod-nvidia",
    "nvidia-smi",
    "nvidia-tesla",
)
# Kepler GPUs (GK1xx/GK2xx: Tesla K10/K20/K40/K80, GRID K1/K2/K520): NVIDIA's 470 branch is
# the last that drives them; a newer module refuses to bind and NVML sees no GPU (F13).
_KEPLER_NAME = re.compile(r"\bGK[12]\d\d|\bTesla K\d+|\bGRID K\d+")
_KEPLER_IDS = frozenset(
    {
        "0x102d",
        "0x1023",
        "0x1024",
        "0x102e",
        "0x1021",
        "0x1022",
        "0x1026",
        "0x1028",
        "0x1029",
        "0x118f",
        "0x118a",
        "0x0ff2",
        "0x11bf",
    }
)
_LAST_KEPLER_BRANCH = 470
# The kernel's own words when the GPU needs an older (legacy) branch than the module loaded.
_LEGACY_GPU = re.compile(
    r"NVRM: .*(supported through the NVIDIA [0-9.x]+ Legacy drivers|"
    r"is not supported by the [0-9.]+ NVIDIA driver release)",
    re.IGNORECASE,
)
# Secure Boot (kernel lockdown) refusing an unsigned or untrusted module.
_MODULE_REJECTED = re.compile(
    r"unsigned module loading is restricted|Key was rejected by service|"
    r"Loading of unsigned module is rejected|"
    r"nvidia: module verification failed",
    re.IGNORECASE,
)
_API_MISMATCH = re.compile(r"NVRM: API mismatch", re.IGNORECASE)


def host_rules(case: DoctorCase, findings: Findings) -> None:
    if case.host is None:
        if case.host_unavailable is not None:
            findings.skip(
                "host (GPUs, driver, NVML library, toolkit, containerd, kubelet sockets)",
                case.host_unavailable.why,
                case.host_unavailable.asked,
            )
        return
    facts = case.host
    if facts.diagnostics is None:  # a snapshot taken for bootstrap, without the live checks
        findings.skip("the host's live NVML check and kernel log", "the snapshot was taken without them")
    if not facts.gpus:
        findings.add(
            "NO-GPU",
            cause=f"{facts.hostname} has no NVIDIA GPU on its PCI bus, so there is nothing to advertise.",
            evidence=["/sys/bus/pci/devices: no function with vendor 0x10de and a display or 3D class"],
        )
        return
    _driver_rules(facts, findings)
    toolkit_rules(case, facts, findings)
    containerd_rules(case, facts, findings)
    kubelet_host_rules(case, facts, findings)


# --- driver --------------------------------------------------------------------------------


def _gpu_lines(facts: HostFacts) -> list[str]:
    return [f"PCI {gpu.bus_id}: {gpu.name} (device {gpu.device_id})" for gpu in facts.gpus]


def _driver_installed(facts: HostFacts) -> bool:
    diag = facts.diagnostics
    return any(name.startswith(_DRIVER_PACKAGE_PREFIXES) for name in facts.packages) or bool(
        diag is not None and diag.driver_root
    )


def library_evidence(facts: HostFacts) -> LibraryEvidence:
    """Where the NVML library is judged: the host's library directories, or the GPU
    Operator's driver container root when the driver lives there (checked against the
    module the host's kernel has loaded)."""
    diag = facts.diagnostics
    if diag is not None and diag.driver_root_nvml is not None:
        return replace(diag.driver_root_nvml, module_version=facts.nvml.module_version)
    return facts.nvml


def _driver_version_hint(facts: HostFacts, library: NvmlLibrary | None) -> str | None:
    if library is not None:
        return library.version
    if facts.module_version:
        return facts.module_version
    diag = facts.diagnostics
    if diag is not None and diag.module_file_version:
        return diag.module_file_version
    for name, version in sorted(facts.packages.items()):
        if name.startswith(("libnvidia-ml", "nvidia-driver", "libnvidia-compute")):
            return version.split(":")[-1].split("-")[0]
    return None


def _branch(version: str | None) -> int | None:
    if not version:
        return None
    head = version.split(".")[0]
    return int(head) if head.isdigit() else None


def _kernel_lines(diag: HostDiagnostics | None, pattern: re.Pattern[str]) -> list[str]:
    return [f"kernel: {line.strip()}" for line in (diag.kernel_log if diag else ()) if pattern.search(line)]


def _nvml_line(check: NvmlCheck) -> str:
    if check.load_error:
        return f"host NVML check: cannot load libnvidia-ml.so.1: {check.load_error}"
    if check.init_error:
        return f"host NVML check: nvmlInit failed: {check.init_error}"
    found = ", ".join(check.devices) if check.devices else "none"
    return f"host NVML check: driver {check.driver or '?'}, {check.count} GPU(s): {found}"


@dataclass(frozen=True)
class _Driver:
    """What the driver's rules read: the host, its live checks, the library choice."""

    facts: HostFacts
    diag: HostDiagnostics | None
    loaded: bool
    module_line: str
    gpus: list[str]
    library: NvmlLibrary | None
    problem: LibraryProblem | None
    root_lines: list[str]


def _driver_of(facts: HostFacts) -> _Driver:
    diag = facts.diagnostics
    library: NvmlLibrary | None = None
    problem: LibraryProblem | None = None
    try:
        library = choose_nvml_library(library_evidence(facts))
    except LibraryProblem as exc:
        problem = exc
    except HostStateError:
        problem = None
    return _Driver(
        facts=facts,
        diag=diag,
        loaded="nvidia" in facts.loaded_modules or facts.module_version is not None,
        module_line=(
            f"loaded nvidia module: {facts.module_version}"
            if facts.module_version
            else "loaded nvidia module: none (/sys/module/nvidia absent)"
        ),
        gpus=_gpu_lines(facts),
        library=library,
        problem=problem,
        root_lines=(
            [f"the driver runs in the GPU Operator's driver container, root {diag.driver_root}"]
            if diag is not None and diag.driver_root
            else []
        ),
    )


def _driver_rules(facts: HostFacts, findings: Findings) -> None:
    """The driver's verdicts, kernel side first: each check says whether it explained the
    state, and the live NVML check runs only when nothing did."""
    driver = _driver_of(facts)
    explained = _nouveau_rule(driver, findings)
    explained = _secure_boot_rule(driver, findings) or explained
    explained = _branch_rule(driver, findings) or explained
    installed = (
        _driver_installed(facts)
        or driver.library is not None
        or bool(driver.diag is not None and driver.diag.module_file)
    )
    if not driver.loaded and not explained:
        if not installed:
            findings.add(
                "DRIVER-MISSING",
                cause=f"No NVIDIA driver is installed on {facts.hostname}.",
                evidence=[driver.module_line, "no NVIDIA driver package and no libnvidia-ml.so.1", *driver.gpus],
            )
            return
        _not_loaded_rule(driver, findings)
        explained = True
    explained = _library_rule(driver, installed, findings) or explained
    if driver.loaded and driver.library is not None and not explained and driver.diag is not None:
        _live_nvml_rules(facts, driver.diag, findings)


def _nouveau_rule(driver: _Driver, findings: Findings) -> bool:
    facts, module_line, gpus = driver.facts, driver.module_line, driver.gpus
    if "nouveau" in facts.loaded_modules:
        evidence = [
            "/sys/module/nouveau: nouveau (the open-source driver) is loaded and holds the GPU",
            module_line,
            *gpus,
        ]
        if facts.nouveau_blacklisted_by:
            evidence.append("nouveau blacklisted by: " + ", ".join(facts.nouveau_blacklisted_by))
            fix = (
                "The blacklist exists but the running kernel loaded nouveau before it applied: "
                "rebuild the initramfs (" + _initramfs(facts) + ") and reboot."
            )
        else:
            evidence.append("no modprobe.d file blacklists nouveau")
            fix = (
                "Blacklist nouveau (`printf 'blacklist nouveau\\noptions nouveau modeset=0\\n' > "
                "/etc/modprobe.d/blacklist-nouveau.conf`), rebuild the initramfs ("
                + _initramfs(facts)
                + "), reboot; `gpunode bootstrap` does all of it and says when a reboot is required."
            )
        findings.add(
            "F13",
            cause="nouveau is loaded, so the NVIDIA driver cannot initialise the GPU.",
            evidence=evidence,
            fix=fix,
            reboot_required=True,
        )
        return True

    return False


def _secure_boot_rule(driver: _Driver, findings: Findings) -> bool:
    facts, diag, loaded, module_line = driver.facts, driver.diag, driver.loaded, driver.module_line
    rejected = _kernel_lines(diag, _MODULE_REJECTED)
    unsigned = diag is not None and diag.module_file is not None and diag.module_signer is None
    if not loaded and (rejected or (facts.secure_boot and unsigned)):
        evidence = [f"Secure Boot: {'enabled' if facts.secure_boot else 'unknown'}", module_line, *rejected]
        if diag is not None and diag.module_file:
            evidence.append(f"module file {diag.module_file}: signer {diag.module_signer or 'none (unsigned)'}")
        findings.add(
            "F13",
            cause="Secure Boot rejects the nvidia kernel module: it is not signed with a key the "
            "firmware trusts, so the driver never loads.",
            evidence=evidence,
            fix="Use the distribution's signed precompiled modules (`gpunode bootstrap --kernel-module "
            "precompiled`), or sign the DKMS module and enroll its key (`mokutil --import "
            "/var/lib/dkms/mok.pub`, then confirm in the MOK manager at the next boot), or turn "
            "Secure Boot off. A reboot is required.",
            reboot_required=True,
        )
        return True

    return False


def _branch_rule(driver: _Driver, findings: Findings) -> bool:
    """A driver branch too new for the GPU (Kepler past 470, or the kernel's legacy message)."""
    facts, diag, library = driver.facts, driver.diag, driver.library
    version = _driver_version_hint(facts, library)
    branch = _branch(version)
    legacy_lines = _kernel_lines(diag, _LEGACY_GPU)
    kepler = [gpu for gpu in facts.gpus if _KEPLER_NAME.search(gpu.name) or gpu.device_id in _KEPLER_IDS]
    if legacy_lines or (kepler and branch is not None and branch > _LAST_KEPLER_BRANCH):
        evidence = [
            *legacy_lines,
            *(
                f"PCI {g.bus_id}: {g.name} ({g.device_id}) is a Kepler GPU: "
                f"the {_LAST_KEPLER_BRANCH} branch is the last that drives it"
                for g in kepler
            ),
        ]
        if version:
            evidence.append(f"installed driver: {version} (branch {branch})")
        findings.add(
            "F13",
            cause=f"The driver branch{' ' + str(branch) if branch else ''} is too new for this GPU: "
            "the module does not drive it, so NVML finds no device.",
            evidence=evidence,
            fix=f"Install a branch that supports the GPU (Kepler: the {_LAST_KEPLER_BRANCH} legacy branch; "
            "Debian: nvidia-tesla-470-driver, Ubuntu: nvidia-driver-470-server), pinned, then reboot.",
            reboot_required=True,
        )
        return True

    return False


def _not_loaded_rule(driver: _Driver, findings: Findings) -> None:
    """Installed, not loaded: the kernel side first, without a module nothing above it works."""
    facts, diag, module_line, gpus, root_lines = (
        driver.facts,
        driver.diag,
        driver.module_line,
        driver.gpus,
        driver.root_lines,
    )
    evidence = [module_line, *gpus, *root_lines]
    if diag is not None and diag.modinfo_available:
        evidence.append(
            f"modinfo nvidia: {diag.module_file or 'no module for kernel ' + facts.kernel_release}"
            + (f" (version {diag.module_file_version})" if diag.module_file_version else "")
        )
    if diag is not None and diag.nvml is not None:
        evidence.append(_nvml_line(diag.nvml))
    no_module = diag is not None and diag.modinfo_available and not diag.module_file
    fix = (
        "No nvidia module exists for the running kernel " + facts.kernel_release + ": install "
        "its headers and rebuild (`apt-get install linux-headers-$(uname -r)` then `dkms "
        "autoinstall`), or install the precompiled module package, then `modprobe nvidia`."
        if no_module
        else "Load it (`modprobe nvidia`) and read `dmesg | grep -i nvrm` if that fails; reboot "
        "after a driver installation."
    )
    findings.add(
        "F13",
        cause="The nvidia kernel module is not loaded: the driver does not initialise, "
        "so NVML cannot start and nvidia-smi fails.",
        evidence=evidence,
        fix=fix,
        reboot_required=not no_module,
    )


def _library_rule(driver: _Driver, installed: bool, findings: Findings) -> bool:
    """The library choice's verdict: F14 with both versions, or the choice's own."""
    problem, loaded, diag, root_lines = driver.problem, driver.loaded, driver.diag, driver.root_lines
    if problem is not None and problem.verdict_id == "F14":
        cause = (
            (
                f"Driver/library version mismatch: the loaded nvidia kernel module is {problem.module_version}, "
                f"the NVML library {problem.library_version}"
                + ("; the driver was upgraded and the host not rebooted." if problem.reboot_required else ".")
            )
            if problem.module_version and problem.library_version
            else _first_sentence(problem.problem)
        )
        findings.add(
            "F14",
            cause=cause,
            evidence=[*root_lines, *problem.evidence, *_kernel_lines(diag, _API_MISMATCH)],
            fix=problem.fix or "",
            reboot_required=problem.reboot_required,
        )
        return True
    elif problem is not None and (loaded or installed or problem.verdict_id != "NVML-MISSING"):
        findings.add(
            problem.verdict_id,
            cause=_first_sentence(problem.problem),
            evidence=[*root_lines, *problem.evidence],
            fix=problem.fix or "",
            severity="critical",
            link="driver",
            reboot_required=problem.reboot_required,
        )
        return True

    return False


def _live_nvml_rules(facts: HostFacts, diag: HostDiagnostics, findings: Findings) -> None:
    """The host's own NVML (or nvidia-smi): the one test of the driver that cannot be fooled
    by a container's missing devices (F10)."""
    check = diag.nvml
    if check is None and diag.nvidia_smi is not None:
        smi = diag.nvidia_smi
        listed = sum(1 for line in smi.output.splitlines() if line.startswith("GPU "))
        text = smi.output.strip().replace("\n", " ")[:300]
        if "version mismatch" in smi.output:
            findings.add(
                "F14",
                cause="nvidia-smi on the host says Driver/library version mismatch.",
                evidence=[f"nvidia-smi -L: {text}"],
                fix="Reboot so that the loaded module matches the library.",
                reboot_required=True,
            )
        elif not smi.ok or listed == 0:
            findings.add(
                "F13",
                cause="nvidia-smi on the host cannot use the driver: it does not initialise the GPU.",
                evidence=[
                    f"nvidia-smi -L (exit {smi.status}): {text}",
                    *_gpu_lines(facts),
                    *_kernel_lines(diag, re.compile("NVRM|Xid")),
                ],
                fix="Read `dmesg | grep -i -e nvrm -e xid` on the host: an unsupported branch, a GPU that "
                "fell off the bus (Xid 79) or a failed module load; fix that and reboot.",
            )
        elif listed < len(facts.gpus):
            findings.add(
                "GPU-MISSING",
                cause=f"nvidia-smi lists {listed} of the {len(facts.gpus)} GPUs on the PCI bus.",
                evidence=[f"nvidia-smi -L: {text}", *_gpu_lines(facts)],
                fix="Find the missing GPU in `dmesg` (Xid 79: fallen off the bus; power, seating); "
                "a reboot or reseat brings it back.",
            )
        return
    if check is None:
        findings.skip("the driver's live state", "the host has neither python3 nor nvidia-smi to run an NVML check")
        return
    line = _nvml_line(check)
    error = check.init_error or ""
    if check.load_error and diag.driver_root:
        findings.skip(
            "the driver's live state",
            f"the host's python3 could not load the driver container's NVML library ({check.load_error})",
        )
    elif check.load_error:
        findings.add(
            "NVML-MISSING",
            cause="libnvidia-ml.so.1 cannot be loaded on the host.",
            evidence=[line],
        )
    elif "mismatch" in error.lower():
        findings.add(
            "F14",
            cause="The host's own NVML says Driver/library version mismatch.",
            evidence=[line],
            fix="Reboot so that the kernel module matches the library, then run gpunode bootstrap "
            "so the device plugin mounts the new library.",
            reboot_required=True,
        )
    elif error:
        findings.add(
            "F13",
            cause=f"NVML does not start on the host itself ({error}): the driver is not working.",
            evidence=[line, *_kernel_lines(diag, re.compile("NVRM|Xid"))],
            fix="Read `dmesg | grep -i -e nvrm -e xid`; reload the module or reboot.",
        )
    elif check.count == 0:
        findings.add(
            "F13",
            cause="The driver is loaded but drives no GPU: NVML finds none (a branch too new for "
            "the GPU, or a GPU that fell off the bus).",
            evidence=[line, *_gpu_lines(facts), *_kernel_lines(diag, re.compile("NVRM|Xid"))],
            fix="Read `dmesg | grep -i -e nvrm -e xid`: install a branch that supports the GPU, or "
            "reseat/reboot after an Xid 79.",
        )
    elif check.count is not None and check.count < len(facts.gpus):
        findings.add(
            "GPU-MISSING",
            cause=f"NVML sees {check.count} of the {len(facts.gpus)} GPUs on the PCI bus.",
            evidence=[line, *_gpu_lines(facts), *_kernel_lines(diag, re.compile("Xid"))],
            fix="Find the missing GPU in `dmesg` (Xid 79: fallen off the bus); a reboot or reseat brings it back.",
        )


def _first_sentence(text: str) -> str:
    head = text.split(". ", 1)[0].rstrip(".") + "."
    return head if len(head) <= 300 else head[:297] + "..."


def _initramfs(facts: HostFacts) -> str:
    if "dracut" in facts.initramfs_tools and "update-initramfs" not in facts.initramfs_tools:
        return "`dracut -f`"
    return "`update-initramfs -u`"
