"""GPU conditions the plugin says in its log, so `gpunode doctor` (which reads the plugin's
log) sees them without scraping /metrics: a GPU whose row remapping failed (no spare rows
left: it needs replacing) is logged once, when first seen, as `gpu_row_remap_failure`.

Checked by a thread every interval (a handful of NVML calls a minute); telemetry serves the
same fact on /metrics as DCGM_FI_DEV_ROW_REMAP_FAILURE.
"""

from __future__ import annotations

import threading

import pynvml

from gpunode.plugin.log import log_event
from gpunode.plugin.nvml import Inventory

ROW_REMAP_FIX = (
    "the GPU has no spare memory rows left: drain the node and replace the GPU (RMA); "
    "until then keep it out of service (its uncorrectable errors will recur)"
)


class ConditionWatch(threading.Thread):
    def __init__(self, inventory: Inventory, interval: float) -> None:
        super().__init__(name="gpu-conditions", daemon=True)
        self._inventory = inventory
        self._interval = interval
        self._stop = threading.Event()
        self._reported: set[str] = set()

    def stop(self) -> None:
        self._stop.set()

    def check_once(self) -> None:
        for gpu in self._inventory.gpus:
            if gpu.uuid in self._reported:
                continue
            try:
                corrected, uncorrected, pending, failed = pynvml.nvmlDeviceGetRemappedRows(
                    pynvml.nvmlDeviceGetHandleByUUID(gpu.uuid)
                )
            except pynvml.NVMLError:
                continue  # not supported before Ampere, or the GPU is lost (reported elsewhere)
            if failed:
                self._reported.add(gpu.uuid)
                log_event(
                    "gpu_row_remap_failure",
                    gpu=gpu.uuid,
                    index=gpu.index,
                    name=gpu.name,
                    uncorrectable_rows=uncorrected,
                    correctable_rows=corrected,
                    pending=pending,
                    fix=ROW_REMAP_FIX,
                )

    def run(self) -> None:
        while True:
            self.check_once()
            if self._stop.wait(self._interval):
                return
