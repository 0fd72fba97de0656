"""What one snapshot of a host says, parsed. Pure: the text in, a HostFacts out.

The snapshot script (gpunode.bootstrap.node, `snapshot_script.sh`) prints the sections of
core/host/snapshot_contract.py, each starting with `@@<name>`; file contents arrive
base64-encoded, prefixed with their path.
"""

from __future__ import annotations

import base64
import binascii
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field

from gpunode.bootstrap.core.host.diagnostics import HostDiagnostics, parse_diagnostics
from gpunode.bootstrap.core.host.os_release import OsRelease, parse_os_release
from gpunode.bootstrap.core.host.snapshot_contract import Section
from gpunode.bootstrap.core.host.snapshot_contract import split_sections as sections_of
from gpunode.bootstrap.core.nvml.library import LibraryEvidence, parse_probe
from gpunode.bootstrap.core.packages.common import DPKG_ARCH, parse_dpkg_query, parse_rpm_query

NVIDIA_PCI_VENDOR = "0x10de"
# PCI class 0x0300 (VGA) and 0x0302 (3D controller) are GPUs; an NVIDIA GPU's HDMI audio
# function (0x0403) and NVSwitch bridges (0x0680) are not.
GPU_PCI_CLASSES = ("0x0300", "0x0302")


@dataclass(frozen=True)
class PciGpu:
    bus_id: str
    device_id: str
    name: str


@dataclass(frozen=True)
class ContainerdFacts:
    binary: str | None
    version_text: str | None
    config_path: str
    config_text: str | None
    dump_text: str | None
    dump_error: str | None


@dataclass(frozen=True)
class KubeletFacts:
    running: bool
    process: str | None
    args: tuple[str, ...]
    root_dir: str
    binary: str | None
    device_plugin_sockets: tuple[str, ...]
    device_plugin_files: tuple[str, ...]

    @property
    def present(self) -> bool:
        return self.running or self.binary is not None

    def flag(self, name: str) -> str | None:
        """The value of `--name=value` or `--name value` on the kubelet's command line."""
        value: str | None = None
        args = list(self.args)
        for index, arg in enumerate(args):
            if arg.startswith(f"--{name}="):
                value = arg.split("=", 1)[1]
            elif arg == f"--{name}" and index + 1 < len(args):
                value = args[index + 1]
        return value


@dataclass(frozen=True)
class PluginVenvFacts:
    """The host-mode plugin's virtualenv (/opt/gpunode/venv) and what it needs."""

    installed_version: str | None = None
    python3: str | None = None
    venv_package: bool = False
    unit_active: str | None = None


def parse_plugin_venv(lines: list[str]) -> PluginVenvFacts:
    installed = python3 = unit = None
    venv_package = False
    for line in lines:
        key, _, value = line.strip().partition(" ")
        if key == "dist" and value.startswith("gpunode-") and value.endswith(".dist-info"):
            installed = value[len("gpunode-") : -len(".dist-info")]
        elif key == "python3":
            python3 = value
        elif key == "venv-package":
            venv_package = True
        elif key == "unit-active":
            unit = value or None
    return PluginVenvFacts(installed, python3, venv_package, unit)


@dataclass(frozen=True)
class HostFacts:
    hostname: str
    kernel_release: str
    arch: str
    os: OsRelease
    init_system: str
    gpus: tuple[PciGpu, ...]
    loaded_modules: frozenset[str]
    secure_boot: bool | None
    nouveau_blacklisted_by: tuple[str, ...]
    initramfs_tools: tuple[str, ...]
    nvml: LibraryEvidence
    package_manager: str | None
    packages: Mapping[str, str]
    toolkit_runtime: str | None
    containerd: ContainerdFacts
    k3s_binary: str | None
    k3s_templates: tuple[str, ...]
    kubelet: KubeletFacts
    apt_sources: Mapping[str, str]
    managed_files: Mapping[str, str] = field(default_factory=dict)
    # Paths gpunode may write that are not plain regular files: link, broken-link,
    # directory, other (a device, a FIFO). A regular file or an absent path is not listed.
    file_kinds: Mapping[str, str] = field(default_factory=dict)
    # apt's candidate version of the packages the snapshot asked about (None: apt has none);
    # None when the host has no apt.
    apt_candidates: Mapping[str, str | None] | None = None
    uploads: Mapping[str, str] = field(default_factory=dict)
    plugin_venv: PluginVenvFacts = field(default_factory=lambda: PluginVenvFacts())
    # What only `gpunode doctor` asks for (the snapshot taken with diagnostics); else None.
    diagnostics: HostDiagnostics | None = None

    @property
    def module_version(self) -> str | None:
        """The loaded nvidia kernel module's version; None when no module is loaded."""
        return self.nvml.module_version

    @property
    def has_systemd(self) -> bool:
        return self.init_system == "systemd"

    @property
    def is_k3s(self) -> bool:
        return self.k3s_binary is not None or bool(self.k3s_templates)

    @property
    def node_name(self) -> str:
        """The name kubelet registers the node under: --hostname-override, else the hostname."""
        return (self.kubelet.flag("hostname-override") or self.hostname).strip().lower()

    def managed_file(self, path: str) -> str | None:
        return self.managed_files.get(path)

    def not_a_file(self, path: str) -> str | None:
        """Why `path` cannot be written as a file (with the fix), or None when it can.

        A symlink to a regular file can: it is edited through the link.
        """
        kind = self.file_kinds.get(path)
        if kind == "broken-link":
            return (
                f"{path} is a symlink that leads nowhere (its target is missing, or the links loop), "
                f"so gpunode will not write through it. Fix: point {path} at the real file, or remove "
                "the link, then run gpunode again"
            )
        if kind == "directory":
            return f"{path} is a directory where a file should be. Fix: move it away, then run gpunode again"
        if kind == "other":
            return (
                f"{path} is not a regular file (a device, a FIFO or a socket). Fix: put the config "
                "file there, then run gpunode again"
            )
        return None


class SnapshotError(ValueError):
    """The snapshot output is not what the script prints: a broken or foreign shell."""


def split_sections(output: str) -> dict[str, list[str]]:
    sections = sections_of(output)
    if Section.END not in sections:
        raise SnapshotError("the host snapshot ended early (no @@end section)")
    return sections


def decode_files(lines: list[str]) -> dict[str, str]:
    files: dict[str, str] = {}
    for line in lines:
        if not line.strip():
            continue
        path, _, data = line.partition(" ")
        try:
            files[path] = base64.b64decode(data, validate=True).decode("utf-8", errors="replace")
        except binascii.Error as exc:
            raise SnapshotError(f"unreadable file content for {path} in the host snapshot") from exc
    return files


def parse_gpus(pci_lines: list[str], lspci_lines: list[str]) -> tuple[PciGpu, ...]:
    names: dict[str, str] = {}
    for line in lspci_lines:
        try:
            fields = shlex.split(line)
        except ValueError:
            continue
        # lspci -Dmm: slot "class" "vendor" "device" [-rXX] [-pXX] "svendor" "sdevice"
        plain = [f for f in fields if not f.startswith("-")]
        if len(plain) >= 4:
            names[plain[0]] = plain[3]
    gpus = []
    for line in pci_lines:
        parts = line.split()
        if len(parts) != 3:
            continue
        bus_id, device_id, pci_class = parts
        if not pci_class.startswith(GPU_PCI_CLASSES):
            continue
        name = names.get(bus_id, f"NVIDIA device {device_id}")
        gpus.append(PciGpu(bus_id=bus_id, device_id=device_id, name=name))
    return tuple(sorted(gpus, key=lambda gpu: gpu.bus_id))


def parse_secure_boot(lines: list[str]) -> bool | None:
    for line in lines:
        text = line.strip().lower()
        if text == "no-efi":
            return False
        if text.startswith("secureboot enabled"):
            return True
        if text.startswith("secureboot disabled"):
            return False
        if text.startswith("efivar "):
            # 4 bytes of attributes, then the value byte.
            values = text.split()[1:]
            if len(values) >= 5:
                return values[4] == "1"
    return None


def parse_containerd(
    lines: list[str], config_path: str, config_files: dict[str, str], dump_lines: list[str]
) -> ContainerdFacts:
    binary = lines[0].strip() if lines else None
    version = lines[1].strip() if len(lines) > 1 else None
    dump_text: str | None = None
    dump_error: str | None = None
    for line in dump_lines:
        if not line.strip():
            continue
        rc, _, data = line.partition(" ")
        text = base64.b64decode(data or "").decode("utf-8", errors="replace")
        if rc == "0":
            dump_text = text
        else:
            dump_error = text.strip() or f"containerd config dump exited {rc}"
    return ContainerdFacts(
        binary=binary or None,
        version_text=version or None,
        config_path=config_path,
        config_text=config_files.get(config_path),
        dump_text=dump_text,
        dump_error=dump_error,
    )


def parse_kubelet(lines: list[str], socket_lines: list[str]) -> KubeletFacts:
    process = None
    args: list[str] = []
    root = "/var/lib/kubelet"
    binary = None
    for line in lines:
        key, _, value = line.partition(" ")
        if key == "process":
            process = value
        elif key == "arg":
            args.append(value)
        elif key == "root":
            root = value
        elif key == "binary":
            binary = value
    sockets = tuple(line.split(" ", 1)[1] for line in socket_lines if line.startswith("socket "))
    files = tuple(line.split(" ", 1)[1] for line in socket_lines if line.startswith("file "))
    return KubeletFacts(
        running=process is not None,
        process=process,
        args=tuple(args),
        root_dir=root,
        binary=binary,
        device_plugin_sockets=sockets,
        device_plugin_files=files,
    )


def parse_uploads(lines: list[str]) -> dict[str, str]:
    uploads: dict[str, str] = {}
    for line in lines:
        digest, _, path = line.strip().partition("  ")
        if digest and path:
            uploads[path] = digest
    return uploads


def parse_packages(lines: list[str], arch: str) -> tuple[str | None, dict[str, str]]:
    """The first line names the package database (dpkg or rpm); the rest is its query."""
    if not lines:
        return None, {}
    manager, rest = lines[0].strip(), "\n".join(lines[1:])
    known_arch = arch if arch in DPKG_ARCH else None
    if manager == "dpkg":
        return manager, parse_dpkg_query(rest, known_arch)
    if manager == "rpm":
        return manager, parse_rpm_query(rest, known_arch)
    return None, {}


def parse_apt_candidates(lines: list[str]) -> dict[str, str | None] | None:
    """`asked NAME...`, then `apt-cache policy`'s `NAME:` and `  Candidate: V` lines."""
    if not lines or lines[0].split()[:1] != ["asked"]:
        return None
    candidates: dict[str, str | None] = dict.fromkeys(lines[0].split()[1:])
    name: str | None = None
    for line in lines[1:]:
        if line.startswith("  Candidate:") and name is not None:
            value = line.split(":", 1)[1].strip()
            candidates[name] = None if value in ("", "(none)") else value
        elif line.endswith(":") and not line.startswith(" "):
            name = line[:-1].split(":")[0]  # a multi-arch name reads `name:arch:`
    return candidates


def parse_file_kinds(lines: list[str]) -> dict[str, str]:
    kinds: dict[str, str] = {}
    for line in lines:
        kind, _, path = line.partition(" ")
        if path:
            kinds[path] = kind
    return kinds


def parse_snapshot(output: str) -> HostFacts:
    sections = split_sections(output)

    def lines(name: str) -> list[str]:
        return sections.get(name, [])

    containerd_config_path = (lines(Section.CONTAINERD_CONFIG_PATH) or [""])[0].strip()

    uname = lines(Section.UNAME) + ["", ""]
    package_manager, packages = parse_packages(lines(Section.PACKAGES), uname[1].strip())
    os_files = decode_files(lines(Section.OS_RELEASE))
    os_text = next(iter(os_files.values()), "")
    return HostFacts(
        hostname=(lines(Section.HOSTNAME) or [""])[0].strip(),
        kernel_release=uname[0].strip(),
        arch=uname[1].strip(),
        os=parse_os_release(os_text),
        init_system=(lines(Section.INIT) or ["none"])[0].strip(),
        gpus=parse_gpus(lines(Section.PCI), lines(Section.LSPCI)),
        loaded_modules=frozenset(line.strip() for line in lines(Section.MODULES) if line.strip()),
        secure_boot=parse_secure_boot(lines(Section.SECURE_BOOT)),
        nouveau_blacklisted_by=tuple(line.strip() for line in lines(Section.MODPROBE_NOUVEAU) if line.strip()),
        initramfs_tools=tuple(line.strip() for line in lines(Section.INITRAMFS) if line.strip()),
        nvml=parse_probe("\n".join(lines(Section.NVML))),
        package_manager=package_manager,
        packages=packages,
        toolkit_runtime=((lines(Section.TOOLKIT_RUNTIME) or [""])[0].strip() or None),
        containerd=parse_containerd(
            lines(Section.CONTAINERD),
            containerd_config_path,
            decode_files(lines(Section.CONTAINERD_CONFIG)),
            lines(Section.CONTAINERD_DUMP),
        ),
        k3s_binary=next((l.strip() for l in lines(Section.K3S) if l.strip() and not l.endswith(".tmpl")), None),
        k3s_templates=tuple(l.strip() for l in lines(Section.K3S) if l.strip().endswith(".tmpl")),
        kubelet=parse_kubelet(lines(Section.KUBELET), lines(Section.DEVICE_PLUGINS)),
        apt_sources=decode_files(lines(Section.APT_SOURCES)),
        managed_files=decode_files(lines(Section.MANAGED_FILES)),
        file_kinds=parse_file_kinds(lines(Section.FILE_KINDS)),
        apt_candidates=parse_apt_candidates(lines(Section.APT_CANDIDATES)),
        uploads=parse_uploads(lines(Section.UPLOADS)),
        plugin_venv=parse_plugin_venv(lines(Section.PLUGIN_VENV)),
        diagnostics=parse_diagnostics(sections),
    )
