"""GPU telemetry on /metrics, named and labelled as NVIDIA's dcgm-exporter names them.

Dashboards and alerts written for dcgm-exporter (`DCGM_FI_DEV_GPU_TEMP{gpu, UUID,
pci_bus_id, device, modelName, Hostname, DCGM_FI_DRIVER_VERSION, namespace, pod,
container}`) work on gpunode's plugin unchanged. Values come from NVML at scrape time
(no background polling: an idle plugin costs nothing); the pod, namespace and container
holding each GPU come from the kubelet's PodResources API, as dcgm-exporter's
Kubernetes mapping does.

Names and units follow dcgm-exporter's default counters (etc/default-counters.csv): clocks
in MHz, temperatures in C, power in W, energy in mJ, framebuffer in MiB. The fields it
declares as counters (energy, PCIe replays, ECC, remapped rows) carry no `_total`, and
prometheus_client writes a counter family as `<name>_total`: they are typed gauge here so
that their names stay exactly dcgm-exporter's (rate() and increase() read them the same). A field a
GPU does not support (NVML NOT_SUPPORTED) is left out, as dcgm-exporter leaves it blank;
any other NVML failure is counted in gpunode_gpu_read_errors_total, and a GPU NVML cannot
read at all (fallen off the bus) shows as gpunode_gpu_up 0, never as a silent gap.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pynvml
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from gpunode.plugin.metrics import XidRecord
from gpunode.plugin.nvml import GpuInfo, Inventory, nvml_error_code
from gpunode.plugin.pod_attribution import Owner

# name -> (Prometheus type, help). The order is the order of the exposition.
FIELDS: dict[str, tuple[str, str]] = {
    "DCGM_FI_DEV_SM_CLOCK": ("gauge", "SM clock frequency (in MHz)."),
    "DCGM_FI_DEV_MEM_CLOCK": ("gauge", "Memory clock frequency (in MHz)."),
    "DCGM_FI_DEV_MEMORY_TEMP": ("gauge", "Memory temperature (in C)."),
    "DCGM_FI_DEV_GPU_TEMP": ("gauge", "GPU temperature (in C)."),
    "DCGM_FI_DEV_POWER_USAGE": ("gauge", "Power draw (in W)."),
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": ("gauge", "Total energy consumption since boot (in mJ)."),
    "DCGM_FI_DEV_PCIE_REPLAY_COUNTER": ("gauge", "Total number of PCIe retries."),
    "DCGM_FI_DEV_GPU_UTIL": ("gauge", "GPU utilization (in %)."),
    "DCGM_FI_DEV_MEM_COPY_UTIL": ("gauge", "Memory utilization (in %)."),
    "DCGM_FI_DEV_ENC_UTIL": ("gauge", "Encoder utilization (in %)."),
    "DCGM_FI_DEV_DEC_UTIL": ("gauge", "Decoder utilization (in %)."),
    "DCGM_FI_DEV_XID_ERRORS": ("gauge", "Value of the last XID error encountered."),
    "DCGM_FI_DEV_FB_FREE": ("gauge", "Framebuffer memory free (in MiB)."),
    "DCGM_FI_DEV_FB_USED": ("gauge", "Framebuffer memory used (in MiB)."),
    "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL": ("gauge", "Total number of single-bit volatile ECC errors."),
    "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": ("gauge", "Total number of double-bit volatile ECC errors."),
    "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL": ("gauge", "Total number of single-bit persistent ECC errors."),
    "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL": ("gauge", "Total number of double-bit persistent ECC errors."),
    "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": ("gauge", "Number of remapped rows for uncorrectable errors"),
    "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS": ("gauge", "Number of remapped rows for correctable errors"),
    "DCGM_FI_DEV_ROW_REMAP_FAILURE": ("gauge", "Whether remapping of rows has failed"),
    "DCGM_FI_DEV_ROW_REMAP_PENDING": ("gauge", "Whether remapping of rows is pending (a GPU reset applies it)"),
    "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS": ("gauge", "Current clock throttle reasons (bitmask of NVML's reasons)."),
}
XID_COUNT = "DCGM_EXP_XID_ERRORS_COUNT"
GPU_UP = "gpunode_gpu_up"
READ_ERRORS = "gpunode_gpu_read_errors_total"
PODRESOURCES_UP = "gpunode_podresources_up"

_NVML_ERROR_NAMES = {
    getattr(pynvml, name): name.removeprefix("NVML_ERROR_")
    for name in dir(pynvml)
    if name.startswith("NVML_ERROR_") and isinstance(getattr(pynvml, name), int)
}


def _error_name(exc: pynvml.NVMLError) -> str:
    code = nvml_error_code(exc)
    return _NVML_ERROR_NAMES.get(code, str(code)) if code is not None else "UNKNOWN"


@dataclass(frozen=True)
class _Target:
    """One GPU (or MIG device) to read: its NVML handle and its dcgm-exporter labels."""

    gpu: GpuInfo
    handle: Any
    labels: dict[str, str]
    uuid: str  # the UUID pods are attributed by (the MIG device's own, for MIG)


def base_labels(gpu: GpuInfo, hostname: str, driver: str) -> dict[str, str]:
    """dcgm-exporter's label set for a GPU, in its order."""
    return {
        "gpu": str(gpu.index),
        "UUID": gpu.uuid,
        "pci_bus_id": gpu.pci_bus_id,
        "device": f"nvidia{gpu.minor}",
        "modelName": gpu.name,
        "Hostname": hostname,
        "DCGM_FI_DRIVER_VERSION": driver,
    }


def _read_memory_temp(handle: Any) -> float:
    value = pynvml.nvmlDeviceGetFieldValues(handle, [pynvml.NVML_FI_DEV_MEMORY_TEMP])[0]
    if value.nvmlReturn != pynvml.NVML_SUCCESS:
        raise pynvml.NVMLError(value.nvmlReturn)
    return float(value.value.uiVal)


def _readers() -> list[tuple[tuple[str, ...], Callable[[Any], tuple[float, ...]]]]:
    """NVML calls and the dcgm-exporter fields each one answers (one call, several fields)."""
    m = pynvml
    return [
        (("DCGM_FI_DEV_SM_CLOCK",), lambda h: (m.nvmlDeviceGetClockInfo(h, m.NVML_CLOCK_SM),)),
        (("DCGM_FI_DEV_MEM_CLOCK",), lambda h: (m.nvmlDeviceGetClockInfo(h, m.NVML_CLOCK_MEM),)),
        (("DCGM_FI_DEV_MEMORY_TEMP",), lambda h: (_read_memory_temp(h),)),
        (("DCGM_FI_DEV_GPU_TEMP",), lambda h: (m.nvmlDeviceGetTemperature(h, m.NVML_TEMPERATURE_GPU),)),
        (("DCGM_FI_DEV_POWER_USAGE",), lambda h: (m.nvmlDeviceGetPowerUsage(h) / 1000.0,)),
        (("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",), lambda h: (m.nvmlDeviceGetTotalEnergyConsumption(h),)),
        (("DCGM_FI_DEV_PCIE_REPLAY_COUNTER",), lambda h: (m.nvmlDeviceGetPcieReplayCounter(h),)),
        (
            ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_MEM_COPY_UTIL"),
            lambda h: (lambda u: (u.gpu, u.memory))(m.nvmlDeviceGetUtilizationRates(h)),
        ),
        (("DCGM_FI_DEV_ENC_UTIL",), lambda h: (m.nvmlDeviceGetEncoderUtilization(h)[0],)),
        (("DCGM_FI_DEV_DEC_UTIL",), lambda h: (m.nvmlDeviceGetDecoderUtilization(h)[0],)),
        (
            ("DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_FB_USED"),
            lambda h: (lambda mem: (mem.free >> 20, mem.used >> 20))(m.nvmlDeviceGetMemoryInfo(h)),
        ),
        (
            ("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL"),
            lambda h: (
                m.nvmlDeviceGetTotalEccErrors(h, m.NVML_MEMORY_ERROR_TYPE_CORRECTED, m.NVML_VOLATILE_ECC),
                m.nvmlDeviceGetTotalEccErrors(h, m.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, m.NVML_VOLATILE_ECC),
            ),
        ),
        (
            ("DCGM_FI_DEV_ECC_SBE_AGG_TOTAL", "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL"),
            lambda h: (
                m.nvmlDeviceGetTotalEccErrors(h, m.NVML_MEMORY_ERROR_TYPE_CORRECTED, m.NVML_AGGREGATE_ECC),
                m.nvmlDeviceGetTotalEccErrors(h, m.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, m.NVML_AGGREGATE_ECC),
            ),
        ),
        (
            (
                "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
                "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
                "DCGM_FI_DEV_ROW_REMAP_PENDING",
                "DCGM_FI_DEV_ROW_REMAP_FAILURE",
            ),
            lambda h: tuple(m.nvmlDeviceGetRemappedRows(h)),
        ),
        (("DCGM_FI_DEV_CLOCK_THROTTLE_REASONS",), lambda h: (m.nvmlDeviceGetCurrentClocksThrottleReasons(h),)),
    ]


def _number(value: float) -> str:
    """A sample value as the text format (and prometheus_client) writes it."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _escape_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class GpuTelemetry(Collector):
    """A prometheus_client collector: reads NVML for every GPU when scraped.

    `render()` writes the same families in the text format with each distinct label set
    escaped once and remembered: prometheus_client's generate_latest escapes and validates
    every label of every sample on every scrape, which measured three quarters of a scrape's
    time (benchmarks/telemetry_bench.py); the values and families are still prometheus_client's.
    """

    def __init__(
        self,
        inventory: Inventory,
        hostname: str,
        xids: XidRecord,
        owners: Callable[[], dict[str, list[Owner]] | None] | None = None,
    ) -> None:
        """owners: GPU or MIG UUID -> the containers holding it (None: the kubelet did not answer)."""
        self._inventory = inventory
        self._xids = xids
        self._owners = owners
        self._readers = _readers()
        self._errors: dict[tuple[str, str, str], int] = {}  # (gpu index, field, error) -> count
        self._label_text: dict[tuple[tuple[str, str], ...], str] = {}
        self._lock = threading.Lock()
        self._targets: list[_Target] = []
        self._migs: list[_Target] = []
        for gpu in inventory.gpus:
            labels = base_labels(gpu, hostname, inventory.driver_version)
            handle = pynvml.nvmlDeviceGetHandleByIndex(gpu.index)
            self._targets.append(_Target(gpu, handle, labels, gpu.uuid))
            for mig in gpu.migs:
                mig_handle = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, mig.slot)
                # dcgm-exporter puts the MIG labels between modelName and Hostname.
                mig_labels = dict(list(labels.items())[:5])
                mig_labels.update(GPU_I_PROFILE=mig.profile, GPU_I_ID=str(mig.gpu_instance))
                mig_labels.update(list(labels.items())[5:])
                self._migs.append(_Target(gpu, mig_handle, mig_labels, mig.uuid))
        self._lost_labels = [
            {"gpu": str(index), "Hostname": hostname, "DCGM_FI_DRIVER_VERSION": inventory.driver_version}
            for index in inventory.lost_indices
        ]

    def describe(self) -> list[Metric]:
        return []  # collected fresh on every scrape; nothing to check at registration

    def _count_error(self, gpu: str, field: str, error: str) -> None:
        with self._lock:
            key = (gpu, field, error)
            self._errors[key] = self._errors.get(key, 0) + 1

    def _read(self, target: _Target) -> tuple[dict[str, float], bool]:
        """The fields NVML answered, and whether it answered any (a lost GPU: nothing more is asked)."""
        values: dict[str, float] = {}
        for fields, read in self._readers:
            try:
                values.update(zip(fields, (float(v) for v in read(target.handle))))
            except pynvml.NVMLError as exc:
                code = nvml_error_code(exc)
                if code == pynvml.NVML_ERROR_NOT_SUPPORTED:
                    continue
                self._count_error(target.labels["gpu"], fields[0], _error_name(exc))
                if code == pynvml.NVML_ERROR_GPU_IS_LOST:
                    return {}, False
        return values, bool(values)

    def _with_owners(self, labels: dict[str, str], uuid: str, owners: dict[str, list[Owner]]) -> list[dict[str, str]]:
        held = owners.get(uuid)
        if not held:
            return [labels]
        return [{**labels, "container": c, "namespace": ns, "pod": pod} for ns, pod, c in held]

    def collect(self) -> Iterator[Metric]:
        families = {name: Metric(name, text, kind) for name, (kind, text) in FIELDS.items()}
        xid_count = Metric(XID_COUNT, "Count of XID errors within the last five minutes, by XID.", "gauge")
        up = Metric(GPU_UP, "1 when NVML answered for the GPU at this scrape, 0 when it answered nothing.", "gauge")
        owners: dict[str, list[Owner]] = {}
        if self._owners is not None:
            answer = self._owners()
            pod_up = Metric(PODRESOURCES_UP, "1 when the kubelet's PodResources API answered this scrape.", "gauge")
            pod_up.add_sample(PODRESOURCES_UP, {}, 0.0 if answer is None else 1.0)
            yield pod_up
            owners = answer or {}
        for target in self._targets:
            values, alive = self._read(target)
            up.add_sample(GPU_UP, target.labels, 1.0 if alive else 0.0)
            if not alive:
                continue
            values["DCGM_FI_DEV_XID_ERRORS"] = float(self._xids.last(target.gpu.uuid))
            series = self._with_owners(target.labels, target.uuid, owners)
            for name, value in values.items():
                for labels in series:
                    families[name].add_sample(name, labels, value)
            for xid, count in sorted(self._xids.counts(target.gpu.uuid).items()):
                for labels in series:
                    xid_count.add_sample(XID_COUNT, {**labels, "xid": str(xid)}, float(count))
        for target in self._migs:
            try:
                memory = pynvml.nvmlDeviceGetMemoryInfo(target.handle)
            except pynvml.NVMLError as exc:
                self._count_error(target.labels["gpu"], "DCGM_FI_DEV_FB_USED", _error_name(exc))
                continue
            for labels in self._with_owners(target.labels, target.uuid, owners):
                families["DCGM_FI_DEV_FB_FREE"].add_sample("DCGM_FI_DEV_FB_FREE", labels, float(memory.free >> 20))
                families["DCGM_FI_DEV_FB_USED"].add_sample("DCGM_FI_DEV_FB_USED", labels, float(memory.used >> 20))
        for labels in self._lost_labels:
            up.add_sample(GPU_UP, labels, 0.0)
        yield from families.values()
        yield xid_count
        yield up
        errors = Metric(
            READ_ERRORS.removesuffix("_total"), "NVML queries that failed, by GPU, field and error.", "counter"
        )
        with self._lock:
            for (gpu, field, error), count in sorted(self._errors.items()):
                errors.add_sample(READ_ERRORS, {"gpu": gpu, "field": field, "error": error}, float(count))
        yield errors

    def _labels(self, labels: dict[str, str]) -> str:
        key = tuple(labels.items())
        text = self._label_text.get(key)
        if text is None:
            if len(self._label_text) > 4096:  # pods come and go: never grow without bound
                self._label_text.clear()
            text = "{" + ",".join(f'{k}="{_escape_value(v)}"' for k, v in key) + "}" if key else ""
            self._label_text[key] = text
        return text

    def render(self) -> str:
        """The text exposition (format 0.0.4) of every family collect() yields."""
        lines: list[str] = []
        for family in self.collect():
            help_text = family.documentation.replace("\\", "\\\\").replace("\n", "\\n")
            # As prometheus_client writes it: a counter family is named by its _total samples.
            name = family.name + "_total" if family.type == "counter" else family.name
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {family.type}")
            for sample in family.samples:
                lines.append(f"{sample.name}{self._labels(sample.labels)} {_number(sample.value)}")
        return "\n".join(lines) + "\n"
