"""Doctor rules over what the host itself says: GPUs, driver, library, toolkit, containerd,
the kubelet. Pure: a DoctorCase in, verdicts added to Findings."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace

from gpunode.bootstrap.core.containerd.effective import (
    default_runtime_name,
    runtime_binary,
    runtime_problems,
    runtimes,
)
from gpunode.bootstrap.core.doctor.engine import Findings
from gpunode.bootstrap.core.doctor.evidence import DoctorCase
from gpunode.bootstrap.core.host.diagnostics import HostDiagnostics, NvmlCheck
from gpunode.bootstrap.core.host.facts import HostFacts
from gpunode.bootstrap.core.kube.view import dig
from gpunode.bootstrap.core.nvml.library import LibraryEvidence, LibraryProblem, NvmlLibrary, choose_nvml_library
from gpunode.bootstrap.errors import HostStateError

K3S_CONTAINERD_CONFIG = "/var/lib/rancher/k3s/agent/etc/containerd/config.toml"
KUBELET_SOCKET = "kubelet.sock"

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
    _toolkit_rules(case, facts, findings)
    _containerd_rules(case, facts, findings)
    _kubelet_host_rules(case, facts, findings)


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


def _driver_rules(facts: HostFacts, findings: Findings) -> None:
    diag = facts.diagnostics
    loaded = "nvidia" in facts.loaded_modules or facts.module_version is not None
    module_line = (
        f"loaded nvidia module: {facts.module_version}"
        if facts.module_version
        else "loaded nvidia module: none (/sys/module/nvidia absent)"
    )
    gpus = _gpu_lines(facts)
    library: NvmlLibrary | None = None
    problem: LibraryProblem | None = None
    evidence_source = library_evidence(facts)
    try:
        library = choose_nvml_library(evidence_source)
    except LibraryProblem as exc:
        problem = exc
    except HostStateError:
        problem = None
    root_lines = (
        [f"the driver runs in the GPU Operator's driver container, root {diag.driver_root}"]
        if diag is not None and diag.driver_root
        else []
    )
    explained = False

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
        explained = True

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
        explained = True

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
        explained = True

    installed = _driver_installed(facts) or library is not None or bool(diag is not None and diag.module_file)
    if not loaded and not explained:
        # The kernel side first: without a module nothing above it can work.
        if installed:
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
        else:
            findings.add(
                "DRIVER-MISSING",
                cause=f"No NVIDIA driver is installed on {facts.hostname}.",
                evidence=[module_line, "no NVIDIA driver package and no libnvidia-ml.so.1", *gpus],
            )
            return
        explained = True

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
        explained = True
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
        explained = True

    if loaded and library is not None and not explained and diag is not None:
        _live_nvml_rules(facts, diag, findings)


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


# --- toolkit and containerd ---------------------------------------------------------------


def runtime_name_for(case: DoctorCase) -> str:
    """The containerd runtime GPU pods use: RuntimeClass nvidia's handler, else `nvidia`."""
    view = case.cluster
    for runtime_class in view.runtime_classes if view else ():
        if dig(runtime_class, "metadata", "name") == "nvidia" and isinstance(runtime_class.get("handler"), str):
            return str(runtime_class["handler"])
    return case.runtime_name


def effective_config(facts: HostFacts) -> tuple[str | None, str]:
    """(containerd's effective config text or None, where it comes from)."""
    if facts.is_k3s:
        text = facts.managed_file(K3S_CONTAINERD_CONFIG)
        return text, f"k3s's rendered {K3S_CONTAINERD_CONFIG}"
    return facts.containerd.dump_text, "`containerd config dump`"


def kubelet_runtime(facts: HostFacts) -> str | None:
    """The CRI endpoint the kubelet is told to use, when it is not containerd."""
    endpoint = facts.kubelet.flag("container-runtime-endpoint") or ""
    for other in ("crio", "cri-dockerd", "dockershim"):
        if other in endpoint:
            return endpoint
    return None


def _toolkit_rules(case: DoctorCase, facts: HostFacts, findings: Findings) -> None:
    diag = facts.diagnostics
    text, _ = effective_config(facts)
    binary: str | None = None
    if text:
        try:
            runtime = runtimes(text).get(runtime_name_for(case))
        except HostStateError:
            runtime = None
        if runtime is not None:
            binary = runtime_binary(runtime)
    present = {path for path, ok in (diag.runtime_binaries.items() if diag else ()) if ok}
    packages = [f"{n} {v}" for n, v in sorted(facts.packages.items()) if n.startswith("nvidia-container-toolkit")]
    if binary and binary.startswith("/") and diag is not None and diag.runtime_binaries.get(binary) is False:
        findings.add(
            "F17",
            cause=f"containerd's {runtime_name_for(case)} runtime runs {binary}, which does not exist "
            "on this host: pods with runtimeClassName nvidia cannot start.",
            evidence=[f"BinaryName = {binary!r}: missing", *(f"installed: {p}" for p in packages)],
            fix="Install the NVIDIA container toolkit (`gpunode bootstrap HOST`, or nvidia-container-toolkit "
            "from NVIDIA's repository) or point BinaryName at its nvidia-container-runtime.",
            link="toolkit",
        )
        return
    installed = (
        facts.toolkit_runtime is not None
        or bool(packages)
        or any("nvidia-container-runtime" in path for path in present)
    )
    if not installed:
        findings.add(
            "F17",
            cause="The NVIDIA container toolkit is not installed: there is no "
            "nvidia-container-runtime for containerd to run GPU containers with.",
            evidence=["`command -v nvidia-container-runtime`: nothing", "no nvidia-container-toolkit package"],
            fix="Install it: `gpunode bootstrap HOST` (NVIDIA's repository, or --toolkit-packages DIR "
            "on an air-gapped host).",
            link="toolkit",
        )


def _containerd_rules(case: DoctorCase, facts: HostFacts, findings: Findings) -> None:
    other = kubelet_runtime(facts)
    if other is not None:
        findings.skip("containerd runtime", f"the kubelet uses {other}, not containerd; doctor checks containerd only")
        return
    name = runtime_name_for(case)
    text, source = effective_config(facts)
    if facts.is_k3s:
        if text is None:
            findings.skip(
                "containerd runtime (k3s)",
                f"{K3S_CONTAINERD_CONFIG} is missing: k3s has not rendered its containerd config (is k3s running?)",
            )
            return
    else:
        containerd = facts.containerd
        if containerd.binary is None:
            findings.add(
                "CONTAINERD-MISSING",
                cause="containerd is not installed on this host.",
                evidence=["`command -v containerd`: nothing"],
            )
            return
        if containerd.dump_error is not None:
            first = containerd.dump_error.strip().splitlines()[0] if containerd.dump_error.strip() else ""
            findings.add(
                "CONTAINERD-CONFIG",
                cause=f"containerd cannot load its config {containerd.config_path}: "
                "`containerd config dump` fails, so a restart would fail too.",
                evidence=[f"containerd config dump: {line}" for line in containerd.dump_error.strip().splitlines()[:4]]
                or [first],
                fix=f"Fix {containerd.config_path} where the error points (or restore the last good copy "
                "from /var/lib/gpunode/backups); `gpunode render containerd --config FILE` shows a "
                "correct merge.",
            )
            return
        if text is None:
            findings.skip("containerd runtime", "`containerd config dump` printed nothing")
            return
    try:
        found = runtimes(text)
        problems = runtime_problems(text, runtime_name=name)
        default = default_runtime_name(text)
    except HostStateError as exc:
        findings.add(
            "CONTAINERD-CONFIG",
            cause=f"containerd's effective config cannot be read: {exc.problem}",
            evidence=[source],
            fix=exc.fix or "",
        )
        return
    names = ", ".join(sorted(found)) or "none"
    for problem in problems:
        if problem.startswith("containerd has no runtime"):
            if name != "nvidia" and "nvidia" in found:
                findings.add(
                    "F17",
                    cause=f"RuntimeClass nvidia's handler is \"{name}\", but containerd's NVIDIA runtime "
                    'is named "nvidia": pods with runtimeClassName nvidia fail with `no runtime for '
                    f'"{name}" is configured`.',
                    evidence=[f"{source}: runtimes {names}", f"RuntimeClass nvidia: handler {name}"],
                    fix="Set the RuntimeClass handler to the containerd runtime's name: `kubectl patch "
                    "runtimeclass nvidia ...` cannot change a handler, so delete and re-create it with "
                    "handler: nvidia (`gpunode render` prints it).",
                    link="runtimeclass",
                )
            else:
                findings.add(
                    "F17",
                    cause=f'containerd has no runtime "{name}": pods with runtimeClassName nvidia fail '
                    f'with `no runtime for "{name}" is configured`.',
                    evidence=[f"{source}: runtimes {names}"],
                    fix="Add the runtime and restart containerd: `gpunode bootstrap HOST` (validated, "
                    "restarts only on change), or see `gpunode render containerd --config FILE`.",
                )
        elif "SystemdCgroup" in problem:
            findings.add(
                "RUNTIME-CGROUP",
                cause=problem,
                evidence=[f"{source}: runtime {name}"],
            )
        elif "runtime_type" in problem:
            findings.add(
                "RUNTIME-TYPE",
                cause=problem,
                evidence=[f"{source}: runtime {name}"],
            )
        else:
            findings.add(
                "F17",
                cause=f'containerd\'s "{name}" runtime does not run the NVIDIA container runtime, so '
                "containers get no NVIDIA devices or libraries.",
                evidence=[problem],
                fix="Set its BinaryName to the toolkit's nvidia-container-runtime (gpunode bootstrap does).",
            )
    if default == name and name in found:
        findings.add(
            "F4",
            cause=f'containerd\'s default runtime is "{name}": pods without a RuntimeClass are trusted '
            "to get GPUs from it, which does not hold for every pod created through CRI.",
            evidence=[f"{source}: default_runtime_name = {default!r}"],
            fix="Be explicit instead: runtimeClassName: nvidia on GPU pods, and the library mount (or "
            "runtimeClassName) on the device plugin; keep runc the default.",
            severity="info",
            link="containerd",
        )


def _kubelet_host_rules(case: DoctorCase, facts: HostFacts, findings: Findings) -> None:
    kubelet = facts.kubelet
    node_known = case.cluster is not None and case.cluster.node is not None
    if not kubelet.running:
        if node_known:
            findings.add(
                "KUBELET-DOWN",
                cause=f"No kubelet process runs on {facts.hostname}, yet the cluster has "
                "its node: nothing can register devices.",
                evidence=["no kubelet, k3s or k3s-agent process"],
            )
        else:
            findings.add(
                "KUBELET-MISSING",
                cause=f"No kubelet runs on {facts.hostname}: it is not (yet) a Kubernetes "
                "node, and a device plugin has nothing to register with.",
                evidence=["no kubelet, k3s or k3s-agent process"],
            )
        return
    socket = f"{kubelet.root_dir}/device-plugins/{KUBELET_SOCKET}"
    if socket not in kubelet.device_plugin_sockets:
        findings.add(
            "KUBELET-SOCKET",
            cause=f"The kubelet runs but serves no {socket}: device plugins cannot register.",
            evidence=[
                f"kubelet {kubelet.process} --root-dir {kubelet.root_dir}",
                "device-plugins: " + (", ".join(kubelet.device_plugin_sockets) or "no sockets"),
            ],
        )


def plugin_sockets(facts: HostFacts) -> list[str]:
    return [path for path in facts.kubelet.device_plugin_sockets if not path.endswith("/" + KUBELET_SOCKET)]


def gpu_count_hint(case: DoctorCase) -> int | None:
    if case.host is not None and case.host.gpus:
        return len(case.host.gpus)
    if case.record is not None and case.record.gpu_count:
        return case.record.gpu_count
    return None


def describe_sockets(facts: HostFacts) -> Sequence[str]:
    diag = facts.diagnostics
    lines = []
    for path in facts.kubelet.device_plugin_sockets:
        stamp = diag.socket_mtimes.get(path) if diag else None
        age = f" (created {diag.now - stamp} s ago)" if diag and diag.now and stamp else ""
        lines.append(f"socket {path}{age}")
    return lines
