"""NVIDIA GPUs on a test host's PCI bus, as the kernel shows them in sysfs.

The machine has no GPU, so each test host gets its own /sys/bus/pci/devices (a tmpfs in
the host's private mount namespace) with one directory per PCI function holding the
files the kernel provides (vendor, device, class, and a config space header lspci can
read). Only that host sees them.
"""

from __future__ import annotations

import shlex
import struct
import textwrap
from dataclasses import dataclass

from standins.debian_host import DebianHost


@dataclass(frozen=True)
class FakePciFunction:
    bus_id: str
    vendor: int
    device: int
    pci_class: int  # 24 bits: class, subclass, programming interface


A100 = 0x20B5  # GA100 [A100 PCIe 80GB]
A100_AUDIO = 0x1AEF


def nvidia_gpus(count: int, device: int = A100) -> list[FakePciFunction]:
    functions = []
    for index in range(count):
        bus = 0x3B + index * 0x20
        functions.append(FakePciFunction(f"0000:{bus:02x}:00.0", 0x10DE, device, 0x030200))
        # What a real card also has: its HDMI audio function, which is not a GPU.
        functions.append(FakePciFunction(f"0000:{bus:02x}:00.1", 0x10DE, A100_AUDIO, 0x040300))
    # And something that is not NVIDIA at all.
    functions.append(FakePciFunction("0000:00:1f.2", 0x8086, 0xA102, 0x010601))
    return functions


def _config_space(function: FakePciFunction) -> bytes:
    header = bytearray(64)
    struct.pack_into("<HH", header, 0, function.vendor, function.device)
    header[0x09:0x0C] = function.pci_class.to_bytes(3, "little")
    header[0x0E] = 0x00  # header type 0: an endpoint
    return bytes(header)


def set_pci_functions(host: DebianHost, functions: list[FakePciFunction]) -> None:
    """Replace what the host sees under /sys/bus/pci/devices (repeatable)."""
    host.exec(f"sh -c {shlex.quote(pci_script(functions))}")


def pci_script(functions: list[FakePciFunction]) -> str:
    """The shell script that shows these functions in the host (a reboot's boot script runs
    it again: the tmpfs goes with the host's mounts)."""
    lines = [
        "set -e",
        "if mountpoint -q /sys/bus/pci/devices; then umount /sys/bus/pci/devices; fi",
        "mount -t tmpfs -o mode=0755,size=1m gpunode-pci /sys/bus/pci/devices",
    ]
    for function in functions:
        d = f"/sys/bus/pci/devices/{function.bus_id}"
        config = "".join(f"\\{b:03o}" for b in _config_space(function))
        lines += [
            f"mkdir {shlex.quote(d)}",
            f"printf '0x%04x\\n' {function.vendor} > {d}/vendor",
            f"printf '0x%04x\\n' {function.device} > {d}/device",
            f"printf '0x%06x\\n' {function.pci_class} > {d}/class",
            f"printf '{config}' > {d}/config",
        ]
    return textwrap.dedent("\n".join(lines)) + "\n"
