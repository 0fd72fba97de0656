"""What `gpunode doctor` reads from a host on top of the snapshot bootstrap uses. Pure.

The snapshot script prints these sections only when asked (GPUNODE_DIAGNOSE=1): a live
NVML check on the host itself (NVML is what every device plugin loads, so it is the
driver's real test), `nvidia-smi -L`, the kernel's log lines about the driver, the nvidia
module file's version and signer, the kubelet's age and the times of the device-plugins
sockets, device plugin processes running on the host, and whether the runtime binaries
containerd names exist.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

from gpunode.bootstrap.core.host.snapshot_contract import Section
from gpunode.bootstrap.core.nvml.library import LibraryEvidence, LibraryProblem, parse_probe

# Runs on the host with its own python3 (any 3.x: ctypes only, no f-strings), the way a
# device plugin starts NVML: load libnvidia-ml.so.1 (or the file GPUNODE_NVML_LIB names: the
# GPU Operator's, in its driver container's root), nvmlInit, count and name the GPUs.
# One result per line: `load-error <text>`, `init-error <code> <text>`, `driver <v>`,
# `count <n>`, `count-error <code> <text>`, `device <index> <uuid> <name>`,
# `device-error <index> <code> <text>`.
NVML_CHECK_SOURCE = r"""
import ctypes, os, sys
try:
    lib = ctypes.CDLL(os.environ.get("GPUNODE_NVML_LIB") or "libnvidia-ml.so.1")
except OSError as exc:
    print("load-error " + str(exc))
    sys.exit(3)
lib.nvmlErrorString.restype = ctypes.c_char_p
def text(code):
    value = lib.nvmlErrorString(code)
    return value.decode("utf-8", "replace") if value else "error %d" % code
def first(*names):
    for name in names:
        if hasattr(lib, name):
            return getattr(lib, name)
code = first("nvmlInit_v2", "nvmlInit")()
if code:
    print("init-error %d %s" % (code, text(code)))
    sys.exit(4)
buf = ctypes.create_string_buffer(96)
if lib.nvmlSystemGetDriverVersion(buf, 96) == 0:
    print("driver " + buf.value.decode("utf-8", "replace"))
count = ctypes.c_uint(0)
code = first("nvmlDeviceGetCount_v2", "nvmlDeviceGetCount")(ctypes.byref(count))
if code:
    print("count-error %d %s" % (code, text(code)))
    sys.exit(5)
print("count %d" % count.value)
for index in range(count.value):
    handle = ctypes.c_void_p()
    code = first("nvmlDeviceGetHandleByIndex_v2", "nvmlDeviceGetHandleByIndex")(index, ctypes.byref(handle))
    if code:
        print("device-error %d %d %s" % (index, code, text(code)))
        continue
    name = ctypes.create_string_buffer(96)
    uuid = ctypes.create_string_buffer(96)
    lib.nvmlDeviceGetName(handle, name, 96)
    lib.nvmlDeviceGetUUID(handle, uuid, 96)
    print("device %d %s %s" % (index, uuid.value.decode("utf-8", "replace"), name.value.decode("utf-8", "replace")))
lib.nvmlShutdown()
"""


@dataclass(frozen=True)
class CommandRun:
    """One command run on the host: its exit status and its combined output."""

    status: int
    output: str

    @property
    def ok(self) -> bool:
        return self.status == 0

    def first_line(self) -> str:
        return next((line.strip() for line in self.output.splitlines() if line.strip()), "")


@dataclass(frozen=True)
class NvmlCheck:
    """The host's own NVML, as the check above saw it."""

    status: int
    load_error: str | None = None
    init_error: str | None = None  # NVML's words, e.g. "Driver/library version mismatch"
    init_code: int | None = None
    driver: str | None = None
    count: int | None = None
    devices: tuple[str, ...] = ()  # "<uuid> <name>"
    device_errors: tuple[str, ...] = ()
    raw: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 0 and self.count is not None


@dataclass(frozen=True)
class HostProcess:
    pid: int
    age_seconds: int | None
    state: str  # R, S, T (stopped), Z ...
    comm: str


@dataclass(frozen=True)
class HostDiagnostics:
    now: int | None = None  # the host's clock, seconds since the epoch
    nvml: NvmlCheck | None = None  # None: the host has no python3 to run the check with
    nvidia_smi: CommandRun | None = None  # None: no nvidia-smi on the host
    kernel_log: tuple[str, ...] = ()
    module_file_version: str | None = None  # `modinfo -F version nvidia`: the module on disk
    module_signer: str | None = None
    module_file: str | None = None
    modinfo_available: bool = False
    kubelet_age_seconds: int | None = None
    socket_mtimes: dict[str, int] = field(default_factory=dict)  # device-plugins entry -> mtime
    plugin_processes: tuple[HostProcess, ...] = ()
    runtime_binaries: dict[str, bool] = field(default_factory=dict)  # path -> exists
    # The GPU Operator's driver container root and the NVML evidence read inside it.
    driver_root: str | None = None
    driver_root_nvml: LibraryEvidence | None = None


def _decode_b64(data: str) -> str:
    try:
        return base64.b64decode(data.strip() or "", validate=True).decode("utf-8", errors="replace")
    except (binascii.Error, ValueError):
        return ""


def _command_line(line: str) -> tuple[str, int, str] | None:
    """`<name> <status> <base64>` -> (name, status, text)."""
    parts = line.strip().split(" ", 2)
    if len(parts) < 2:
        return None
    name, status = parts[0], parts[1]
    try:
        code = int(status)
    except ValueError:
        return None
    return name, code, _decode_b64(parts[2] if len(parts) > 2 else "").rstrip("\n")


def parse_nvml_check(status: int, output: str) -> NvmlCheck:
    load_error = init_error = driver = None
    init_code = count = None
    devices: list[str] = []
    device_errors: list[str] = []
    for line in output.splitlines():
        key, _, rest = line.strip().partition(" ")
        if key == "load-error":
            load_error = rest
        elif key in ("init-error", "count-error"):
            code, _, words = rest.partition(" ")
            init_error = words or rest
            init_code = int(code) if code.isdigit() else None
        elif key == "driver":
            driver = rest or None
        elif key == "count" and rest.isdigit():
            count = int(rest)
        elif key == "device":
            devices.append(rest.split(" ", 1)[1] if " " in rest else rest)
        elif key == "device-error":
            device_errors.append(rest)
    if status != 0 and load_error is None and init_error is None and count is None:
        # Neither NVML's words nor a count: python3 itself failed, or the check was killed.
        init_error = output.strip().splitlines()[-1] if output.strip() else f"the NVML check exited {status}"
    return NvmlCheck(
        status, load_error, init_error, init_code, driver, count, tuple(devices), tuple(device_errors), output
    )


def _int(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isdigit() else None


def parse_diagnostics(sections: dict[str, list[str]]) -> HostDiagnostics | None:
    """The doctor sections of a snapshot, or None when the snapshot was taken without them."""
    if Section.DIAG_NOW not in sections:
        return None
    now = _int((sections.get(Section.DIAG_NOW) or [""])[0])
    nvml: NvmlCheck | None = None
    smi: CommandRun | None = None
    for line in sections.get(Section.DIAG_NVML, []):
        parsed = _command_line(line)
        if parsed is None:
            continue
        name, status, text = parsed
        if name == "python3":
            nvml = parse_nvml_check(status, text)
        elif name == "nvidia-smi":
            smi = CommandRun(status, text)
    kernel: tuple[str, ...] = ()
    for line in sections.get(Section.DIAG_KERNEL_LOG, []):
        parsed = _command_line(line)
        if parsed is not None and parsed[0] == "lines":
            kernel = tuple(l for l in parsed[2].splitlines() if l.strip())
    modinfo: dict[str, str] = {}
    for line in sections.get(Section.DIAG_MODINFO, []):
        key, _, value = line.partition(" ")
        modinfo[key] = value.strip()
    kubelet_age = None
    mtimes: dict[str, int] = {}
    for line in sections.get(Section.DIAG_KUBELET, []):
        key, _, rest = line.partition(" ")
        if key == "age":
            kubelet_age = _int(rest)
        elif key == "mtime":
            stamp, _, path = rest.partition(" ")
            if _int(stamp) is not None and path:
                mtimes[path] = int(stamp)
    processes: list[HostProcess] = []
    for line in sections.get(Section.DIAG_PLUGIN_PROCESSES, []):
        parts = line.split(" ", 4)
        # Without procps the age is empty: `process <pid>  <state> <comm>` still splits in 5.
        if len(parts) == 5 and parts[0] == "process" and parts[1].isdigit():
            processes.append(HostProcess(int(parts[1]), _int(parts[2]), parts[3], parts[4]))
    driver_root: str | None = None
    driver_root_nvml: LibraryEvidence | None = None
    root_lines = sections.get(Section.DIAG_DRIVER_ROOT, [])
    if root_lines and root_lines[0].startswith("root "):
        driver_root = root_lines[0].split(" ", 1)[1].strip()
        try:
            driver_root_nvml = parse_probe("\n".join(root_lines[1:]))
        except LibraryProblem:
            driver_root_nvml = None
    binaries: dict[str, bool] = {}
    for line in sections.get(Section.DIAG_RUNTIME_BINARIES, []):
        key, _, path = line.strip().partition(" ")
        if key in ("present", "missing") and path:
            binaries[path] = key == "present"
    return HostDiagnostics(
        now=now,
        nvml=nvml,
        nvidia_smi=smi,
        kernel_log=kernel,
        module_file_version=modinfo.get("version") or None,
        module_signer=modinfo.get("signer") or None,
        module_file=modinfo.get("filename") or None,
        modinfo_available=bool(modinfo),
        kubelet_age_seconds=kubelet_age,
        socket_mtimes=mtimes,
        plugin_processes=tuple(processes),
        runtime_binaries=binaries,
        driver_root=driver_root,
        driver_root_nvml=driver_root_nvml,
    )
