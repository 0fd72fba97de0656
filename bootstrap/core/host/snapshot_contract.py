"""What the host snapshot script prints and what it is given: defined here, once.

The script (bootstrap/node/snapshot_script.sh) starts every section with a line `@@<name>`;
the parsers (core/host/facts.py, core/host/diagnostics.py) read the sections by the names
below; the generator (node/snapshot.py) refuses a script whose sections are not exactly
these, in this order. Commands built elsewhere (the NVML probe, the package queries) are
pasted into the script where it says `@GPUNODE_<NAME>@`: one pass over the script fills
every placeholder, so no placeholder can be taken for a part of another, and a missing or
unknown one is an error. Parameters arrive as shell variables set before the script.

Adding a fact: a member of Section (in the order the script prints it), its lines in the
script after `sec <name>`, and its parser (docs/architecture.md, "the host snapshot").
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import Enum

SECTION_MARK = "@@"


class Section(str, Enum):
    """Every section, in the order the script prints them."""

    HOSTNAME = "hostname"
    UNAME = "uname"
    OS_RELEASE = "os_release"
    INIT = "init"
    PCI = "pci"
    LSPCI = "lspci"
    MODULES = "modules"
    SECURE_BOOT = "secure_boot"
    MODPROBE_NOUVEAU = "modprobe_nouveau"
    INITRAMFS = "initramfs"
    NVML = "nvml"
    PACKAGES = "packages"
    APT_CANDIDATES = "apt_candidates"
    TOOLKIT_RUNTIME = "toolkit_runtime"
    CONTAINERD = "containerd"
    CONTAINERD_CONFIG_PATH = "containerd_config_path"
    CONTAINERD_CONFIG = "containerd_config"
    CONTAINERD_DUMP = "containerd_dump"
    K3S = "k3s"
    KUBELET = "kubelet"
    DEVICE_PLUGINS = "device_plugins"
    APT_SOURCES = "apt_sources"
    MANAGED_FILES = "managed_files"
    FILE_KINDS = "file_kinds"
    UPLOADS = "uploads"
    PLUGIN_VENV = "plugin_venv"
    # Only with GPUNODE_DIAGNOSE=1 (`gpunode doctor`).
    DIAG_NOW = "diag_now"
    DIAG_DRIVER_ROOT = "diag_driver_root"
    DIAG_NVML = "diag_nvml"
    DIAG_KERNEL_LOG = "diag_kernel_log"
    DIAG_MODINFO = "diag_modinfo"
    DIAG_KUBELET = "diag_kubelet"
    DIAG_PLUGIN_PROCESSES = "diag_plugin_processes"
    DIAG_RUNTIME_BINARIES = "diag_runtime_binaries"
    # The last line: a snapshot without it was cut off.
    END = "end"


class Placeholder(str, Enum):
    """Commands pasted into the script, written there as `@GPUNODE_<value>@`."""

    NVML_PROBE = "NVML_PROBE"
    NVML_PROBE_DRIVER_ROOT = "NVML_PROBE_DRIVER_ROOT"
    DPKG_QUERY = "DPKG_QUERY"
    RPM_QUERY = "RPM_QUERY"

    @property
    def mark(self) -> str:
        return f"@GPUNODE_{self.value}@"


class Parameter(str, Enum):
    """Shell variables set before the script runs."""

    CONTAINERD_CONFIG = "GPUNODE_CONTAINERD_CONFIG"
    MANAGED_FILES = "GPUNODE_MANAGED_FILES"  # newline-separated paths
    APT_NAMES = "GPUNODE_APT_NAMES"  # space-separated packages whose apt candidates steps need
    UPLOAD_DIR = "GPUNODE_UPLOAD_DIR"
    DIAGNOSE = "GPUNODE_DIAGNOSE"  # 1: print the diag_* sections too
    NVML_CHECK = "GPUNODE_NVML_CHECK"  # python source of the live NVML check
    DRIVER_ROOT = "GPUNODE_DRIVER_ROOT"  # a containerised driver's root


_PLACEHOLDER = re.compile(r"@GPUNODE_([A-Z_]+)@")
_SECTION_LINE = re.compile(r"^\s*sec ([a-z_0-9]+)\b", re.MULTILINE)
_PARAMETER_USE = re.compile(r"\$\{?(GPUNODE_[A-Z_]+)")


class ContractError(ValueError):
    """The script and the contract disagree: a bug in gpunode, found before any host is read."""


def check_script(script: str) -> None:
    """The script prints exactly the sections of Section, in order, and uses only known parameters."""
    printed = _SECTION_LINE.findall(script)
    wanted = [section.value for section in Section]
    if printed != wanted:
        raise ContractError(f"the snapshot script prints sections {printed}, the contract says {wanted}")
    known = {parameter.value for parameter in Parameter}
    unknown = sorted(set(_PARAMETER_USE.findall(script)) - known)
    if unknown:
        raise ContractError(f"the snapshot script uses parameters the contract does not know: {unknown}")


def fill(script: str, values: Mapping[Placeholder, str]) -> str:
    """Every `@GPUNODE_<NAME>@` replaced by its value, in one pass (order cannot matter)."""
    by_name = {placeholder.value: text for placeholder, text in values.items()}
    used = set(_PLACEHOLDER.findall(script))
    missing = sorted(used - set(by_name))
    unused = sorted(set(by_name) - used)
    if missing or unused:
        raise ContractError(f"snapshot placeholders without a value: {missing}; values for no placeholder: {unused}")
    return _PLACEHOLDER.sub(lambda match: by_name[match.group(1)], script)


def split_sections(output: str) -> dict[str, list[str]]:
    """The snapshot's output as its sections' lines, by name."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        if line.startswith(SECTION_MARK):
            current = sections.setdefault(line[len(SECTION_MARK) :].strip(), [])
        elif current is not None:
            current.append(line)
    return sections
