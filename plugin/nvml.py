"""Everything the plugin asks NVML (through pynvml), and why NVML could not start.

NVML answers once at start (GPUs, MIG devices, topology); afterwards only the health
monitor's event set talks to it. Every failure to start becomes an NvmlInitError whose
`line()` is the one log line an operator (and `gpunode doctor`) reads: the reason as a
stable keyword, NVML's own words, and the likely fix.
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pynvml

from gpunode.plugin.log import format_event

LIBRARY = "libnvidia-ml.so.1"
NO_INSTANCE = 0xFFFFFFFF

# nvmlGpuTopologyLevel_t, with the short names `nvidia-smi topo -m` prints.
TOPOLOGY_NAMES = {0: "X", 10: "PIX", 20: "PXB", 30: "PHB", 40: "NODE", 50: "SYS"}

_MOUNT_FIX = (
    "mount the host's real libnvidia-ml.so.<driver version> (resolve the .so.1 symlink on the host) "
    "at /usr/local/lib/libnvidia-ml.so.1 with LD_LIBRARY_PATH=/usr/local/lib, "
    "or run the pod with runtimeClassName nvidia"
)
_DEVICE_FIX = (
    "give the plugin the GPU device nodes: run it privileged with the host's /dev mounted, "
    "or run the pod with runtimeClassName nvidia"
)
# NVML return codes -> (reason keyword, fix). The keyword is part of the log contract.
_INIT_FAILURES: dict[int, tuple[str, str]] = {
    pynvml.NVML_ERROR_LIBRARY_NOT_FOUND: ("library_not_found", _MOUNT_FIX),
    pynvml.NVML_ERROR_FUNCTION_NOT_FOUND: (
        "library_too_old",
        "the mounted libnvidia-ml is older than this plugin needs; mount the driver's current "
        "libnvidia-ml.so.<version> (gpunode bootstrap re-renders the mount after a driver upgrade)",
    ),
    pynvml.NVML_ERROR_DRIVER_NOT_LOADED: (
        "driver_not_loaded",
        "load the NVIDIA kernel module on the host (modprobe nvidia); if nouveau is loaded, "
        "blacklist it, rebuild the initramfs and reboot (gpunode bootstrap does this)",
    ),
    pynvml.NVML_ERROR_NO_PERMISSION: ("no_permission", _DEVICE_FIX),
    pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH: (
        "driver_library_mismatch",
        "the driver was upgraded without a reboot: reboot the host so the kernel module matches the "
        "library, then re-run gpunode bootstrap so the plugin mounts the new library",
    ),
    pynvml.NVML_ERROR_UNKNOWN: (
        "nvml_unknown_error",
        _DEVICE_FIX + "; if nvidia-smi fails on the host too, the driver itself is broken",
    ),
}


class NvmlInitError(Exception):
    """NVML could not start, or found nothing to advertise."""

    def __init__(self, reason: str, error: str, fix: str) -> None:
        super().__init__(f"{reason}: {error}")
        self.reason = reason
        self.error = error
        self.fix = fix

    def line(self) -> str:
        return format_event("nvml_init_failed", reason=self.reason, error=self.error, fix=self.fix)


def nvml_error_code(exc: BaseException) -> int | None:
    value = getattr(exc, "value", None)
    return value if isinstance(value, int) else None


def start_nvml() -> None:
    """Load libnvidia-ml.so.1 and initialise NVML, or raise NvmlInitError saying why not."""
    # pynvml reports any load failure as "library not found"; loading it first keeps the
    # loader's own words (not found, wrong ELF class, missing GLIBC symbols ...).
    try:
        ctypes.CDLL(LIBRARY)
    except OSError as exc:
        text = str(exc)
        if "cannot open shared object file" in text:
            raise NvmlInitError("library_not_found", text, _MOUNT_FIX) from exc
        raise NvmlInitError(
            "library_unusable",
            text,
            "mount the library built for this machine's architecture (never the i386 copy), as a single "
            "file at its own path; never mount a whole host library directory over the container's",
        ) from exc
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        code = nvml_error_code(exc)
        reason, fix = _INIT_FAILURES.get(
            code if code is not None else -1, ("nvml_error", "check `nvidia-smi` on the host; " + _DEVICE_FIX)
        )
        raise NvmlInitError(reason, f"NVML: {exc}", fix) from exc


@dataclass(frozen=True)
class MigInfo:
    slot: int  # index among the parent's MIG devices
    uuid: str
    gpu_instance: int
    compute_instance: int
    profile: str  # e.g. 1g.5gb, 1c.2g.10gb, 1g.10gb+me
    memory_mib: int
    # NVML's attributes of the MIG device (GPU feature discovery labels them).
    multiprocessors: int = 0
    gi_slices: int = 0
    ci_slices: int = 0
    copy_engines: int = 0
    decoders: int = 0
    encoders: int = 0
    jpegs: int = 0
    ofas: int = 0


@dataclass(frozen=True)
class GpuInfo:
    index: int
    uuid: str
    name: str
    pci_bus_id: str
    minor: int
    memory_bytes: int
    numa_node: int | None
    mig_enabled: bool | None  # None: the GPU cannot do MIG
    migs: tuple[MigInfo, ...] = ()
    compute_capability: tuple[int, int] | None = None  # CUDA's (major, minor); None: NVML did not say


@dataclass(frozen=True)
class Topology:
    """Pairwise links between GPUs, keyed by (lower index, higher index)."""

    levels: dict[tuple[int, int], int] = field(default_factory=dict)
    nvlinks: dict[tuple[int, int], int] = field(default_factory=dict)

    def level(self, a: int, b: int) -> int | None:
        return self.levels.get((min(a, b), max(a, b)))

    def links(self, a: int, b: int) -> int:
        return self.nvlinks.get((min(a, b), max(a, b)), 0)


@dataclass(frozen=True)
class Inventory:
    driver_version: str
    nvml_version: str
    gpus: tuple[GpuInfo, ...]
    topology: Topology
    lost_indices: tuple[int, ...] = ()
    cuda_version: int | None = None  # nvmlSystemGetCudaDriverVersion: 12020 is CUDA 12.2


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def mig_memory_gb(parent_total_bytes: int, mig_memory_mib: int) -> int:
    """A MIG device's memory as its profile name states it: the fraction of the GPU's memory,
    rounded up to eighths, times the GPU's memory in whole GB (how NVIDIA names profiles)."""
    if parent_total_bytes <= 0:
        return math.ceil(mig_memory_mib / 1024)
    fraction = math.ceil(mig_memory_mib * 1024 * 1024 / parent_total_bytes * 8) / 8
    total_gb = (parent_total_bytes + (1 << 30) - 1) >> 30
    return round(fraction * total_gb)


def mig_profile(gi_slices: int, ci_slices: int, memory_gb: int, media_extensions: bool) -> str:
    name = f"{gi_slices}g.{memory_gb}gb" if gi_slices == ci_slices else f"{ci_slices}c.{gi_slices}g.{memory_gb}gb"
    return name + ("+me" if media_extensions else "")


def _numa_node(handle: Any, bus_id: str, sysfs: Path) -> int | None:
    try:
        mask = pynvml.nvmlDeviceGetMemoryAffinity(handle, 1, pynvml.NVML_AFFINITY_SCOPE_NODE)
        nodes = [bit for bit in range(64) if int(mask[0]) >> bit & 1]
        if len(nodes) == 1:
            return nodes[0]
    except pynvml.NVMLError:
        pass
    # The kernel's view, as NVIDIA's plugin reads it (sysfs wants a 4-digit PCI domain).
    domain, _, rest = bus_id.lower().partition(":")
    try:
        node = int((sysfs / "bus/pci/devices" / f"{domain[-4:]}:{rest}" / "numa_node").read_text())
    except (OSError, ValueError):
        return None
    return node if node >= 0 else None


def _migs(handle: Any, memory_bytes: int) -> tuple[MigInfo, ...]:
    found = []
    for slot in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
        except pynvml.NVMLError as exc:
            if nvml_error_code(exc) in (pynvml.NVML_ERROR_NOT_FOUND, pynvml.NVML_ERROR_INVALID_ARGUMENT):
                continue
            raise
        attrs = pynvml.nvmlDeviceGetAttributes(mig)
        gb = mig_memory_gb(memory_bytes, int(attrs.memorySizeMB))
        media = attrs.gpuInstanceSliceCount == 1 and attrs.sharedOfaCount > 0
        found.append(
            MigInfo(
                slot=slot,
                uuid=_text(pynvml.nvmlDeviceGetUUID(mig)),
                gpu_instance=int(pynvml.nvmlDeviceGetGpuInstanceId(mig)),
                compute_instance=int(pynvml.nvmlDeviceGetComputeInstanceId(mig)),
                profile=mig_profile(int(attrs.gpuInstanceSliceCount), int(attrs.computeInstanceSliceCount), gb, media),
                memory_mib=int(attrs.memorySizeMB),
                multiprocessors=int(attrs.multiprocessorCount),
                gi_slices=int(attrs.gpuInstanceSliceCount),
                ci_slices=int(attrs.computeInstanceSliceCount),
                copy_engines=int(attrs.sharedCopyEngineCount),
                decoders=int(attrs.sharedDecoderCount),
                encoders=int(attrs.sharedEncoderCount),
                jpegs=int(attrs.sharedJpegCount),
                ofas=int(attrs.sharedOfaCount),
            )
        )
    return tuple(found)


def _topology(handles: dict[int, Any], bus_to_index: dict[str, int]) -> Topology:
    levels: dict[tuple[int, int], int] = {}
    nvlinks: dict[tuple[int, int], int] = {}
    indices = sorted(handles)
    for pos, a in enumerate(indices):
        for b in indices[pos + 1 :]:
            try:
                levels[(a, b)] = int(pynvml.nvmlDeviceGetTopologyCommonAncestor(handles[a], handles[b]))
            except pynvml.NVMLError:
                pass
    max_links = int(getattr(pynvml, "NVML_NVLINK_MAX_LINKS", 18))
    for a in indices:
        for link in range(max_links):
            try:
                if not pynvml.nvmlDeviceGetNvLinkState(handles[a], link):
                    continue
                remote = _text(pynvml.nvmlDeviceGetNvLinkRemotePciInfo(handles[a], link).busId).upper()
            except pynvml.NVMLError as exc:
                if nvml_error_code(exc) in (pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_INVALID_ARGUMENT):
                    break  # no NVLink on this GPU, or past its last link
                continue
            peer = bus_to_index.get(remote)
            # Every link shows up on both GPUs; count it once, from the lower index.
            if peer is not None and a < peer:
                nvlinks[(a, peer)] = nvlinks.get((a, peer), 0) + 1
    return Topology(levels=levels, nvlinks=nvlinks)


def discover(with_migs: bool, sysfs: Path = Path("/sys")) -> Inventory:
    """Read the GPUs, their MIG devices (when asked) and their topology from NVML.

    Raises NvmlInitError when a query the plugin cannot do without is refused."""
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        try:
            nvml_version = _text(pynvml.nvmlSystemGetNVMLVersion())
        except pynvml.NVMLError:
            nvml_version = ""
        gpus: list[GpuInfo] = []
        handles: dict[int, Any] = {}
        lost: list[int] = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
            except pynvml.NVMLError as exc:
                if nvml_error_code(exc) == pynvml.NVML_ERROR_GPU_IS_LOST:
                    lost.append(index)
                    continue
                raise
            bus_id = _text(pynvml.nvmlDeviceGetPciInfo(handle).busId).upper()
            memory = int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)
            try:
                mig_enabled: bool | None = pynvml.nvmlDeviceGetMigMode(handle)[0] == pynvml.NVML_DEVICE_MIG_ENABLE
            except pynvml.NVMLError:
                mig_enabled = None
            migs = _migs(handle, memory) if (with_migs and mig_enabled) else ()
            handles[index] = handle
            gpus.append(
                GpuInfo(
                    index=index,
                    uuid=uuid,
                    name=_text(pynvml.nvmlDeviceGetName(handle)),
                    pci_bus_id=bus_id,
                    minor=int(pynvml.nvmlDeviceGetMinorNumber(handle)),
                    memory_bytes=memory,
                    numa_node=_numa_node(handle, bus_id, sysfs),
                    mig_enabled=mig_enabled,
                    migs=migs,
                    compute_capability=_compute_capability(handle),
                )
            )
        topology = _topology(handles, {gpu.pci_bus_id: gpu.index for gpu in gpus})
    except pynvml.NVMLError as exc:
        code = nvml_error_code(exc)
        if code == pynvml.NVML_ERROR_NO_PERMISSION and with_migs:
            raise NvmlInitError(
                "mig_no_permission",
                f"NVML: {exc} (reading MIG devices)",
                "give the plugin MIG monitoring rights: NVIDIA_MIG_MONITOR_DEVICES=all and capability "
                "SYS_ADMIN, or use --mig-strategy none",
            ) from exc
        reason, fix = _INIT_FAILURES.get(
            -1 if code is None else code, ("nvml_query_failed", "check `nvidia-smi -q` on the host; " + _DEVICE_FIX)
        )
        raise NvmlInitError(reason, f"NVML: {exc}", fix) from exc
    return Inventory(
        driver_version=driver,
        nvml_version=nvml_version,
        gpus=tuple(gpus),
        topology=topology,
        lost_indices=tuple(lost),
        cuda_version=_cuda_version(),
    )


def _compute_capability(handle: Any) -> tuple[int, int] | None:
    try:
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
    except pynvml.NVMLError:
        return None
    return int(major), int(minor)


def _cuda_version() -> int | None:
    try:
        return int(pynvml.nvmlSystemGetCudaDriverVersion())
    except pynvml.NVMLError:
        return None


@dataclass(frozen=True)
class NvmlEvent:
    """One thing the event set said: an XID on a GPU (or one MIG device of it), or a lost GPU."""

    gpu_uuid: str | None  # None: NVML could not say which GPU
    xid: int | None  # None: the GPU is lost (or the wait failed)
    gpu_instance: int | None = None
    compute_instance: int | None = None
    error: str | None = None


def _address(handle: Any) -> int | None:
    value = ctypes.cast(handle, ctypes.c_void_p).value
    return int(value) if value is not None else None


class XidEventSet:
    """NVML's event set for XID critical errors on every GPU that supports them.

    Raises pynvml.NVMLError when NVML offers no event sets at all."""

    def __init__(self, gpu_uuids: list[str]) -> None:
        self._set = pynvml.nvmlEventSetCreate()
        self.watched: list[str] = []
        self.unsupported: list[str] = []
        self._uuids = gpu_uuids
        # Events name their GPU by handle; a GPU that fell off the bus may no longer answer
        # nvmlDeviceGetUUID, so remember which handle is which while it still does.
        self._by_handle: dict[int | None, str] = {}
        for uuid in gpu_uuids:
            try:
                handle = pynvml.nvmlDeviceGetHandleByUUID(uuid)
                self._by_handle[_address(handle)] = uuid
                supported = pynvml.nvmlDeviceGetSupportedEventTypes(handle)
                pynvml.nvmlDeviceRegisterEvents(handle, supported & pynvml.nvmlEventTypeXidCriticalError, self._set)
                self.watched.append(uuid)
            except pynvml.NVMLError:
                self.unsupported.append(uuid)

    def wait(self, timeout_ms: int) -> NvmlEvent | None:
        """The next event, or None when timeout_ms passed without one."""
        try:
            data = pynvml.nvmlEventSetWait(self._set, timeout_ms)
        except pynvml.NVMLError as exc:
            if nvml_error_code(exc) == pynvml.NVML_ERROR_TIMEOUT:
                return None
            return NvmlEvent(gpu_uuid=None, xid=None, error=str(exc))
        if data.eventType != pynvml.nvmlEventTypeXidCriticalError:
            return None
        uuid = self._by_handle.get(_address(data.device))
        if uuid is None:
            try:
                uuid = _text(pynvml.nvmlDeviceGetUUID(data.device))
            except pynvml.NVMLError:
                uuid = None
        gi, ci = int(data.gpuInstanceId), int(data.computeInstanceId)
        return NvmlEvent(
            gpu_uuid=uuid,
            xid=int(data.eventData),
            gpu_instance=None if gi == NO_INSTANCE else gi,
            compute_instance=None if ci == NO_INSTANCE else ci,
        )

    def lost_gpus(self) -> list[str]:
        """GPUs that NVML now reports as gone (asked after a failed wait)."""
        lost = []
        for uuid in self._uuids:
            try:
                handle = pynvml.nvmlDeviceGetHandleByUUID(uuid)
                pynvml.nvmlDeviceGetMemoryInfo(handle)
            except pynvml.NVMLError as exc:
                if nvml_error_code(exc) == pynvml.NVML_ERROR_GPU_IS_LOST:
                    lost.append(uuid)
        return lost


def gpu_is_lost(uuid: str) -> bool:
    """NVML now answers GPU_IS_LOST for this GPU (fallen off the bus)."""
    try:
        pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByUUID(uuid))
    except pynvml.NVMLError as exc:
        return bool(nvml_error_code(exc) == pynvml.NVML_ERROR_GPU_IS_LOST)
    return False
