"""The fake libnvidia-ml.so.1 keeps NVML's ABI as the real pynvml sees it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from plugin_harness import fake_nvml_lib  # noqa: F401 (fixture)
from standins.fake_nvml import FakeGpu, FakeMig, FakeNvml, FakeNvmlConfig

PROBE = r"""
import ctypes, json, pynvml
lib = ctypes.CDLL("libnvidia-ml.so.1")
lib.fakeNvmlStructSize.argtypes = [ctypes.c_char_p]
ours = {name: lib.fakeNvmlStructSize(name.encode()) for name in
        ("nvmlPciInfo_t", "nvmlMemory_t", "nvmlMemory_v2_t", "nvmlDeviceAttributes_t", "nvmlEventData_t",
         "nvmlUtilization_t", "nvmlFieldValue_t")}
theirs = {"nvmlPciInfo_t": ctypes.sizeof(pynvml.nvmlPciInfo_t), "nvmlMemory_t": ctypes.sizeof(pynvml.c_nvmlMemory_t),
          "nvmlMemory_v2_t": ctypes.sizeof(pynvml.c_nvmlMemory_v2_t),
          "nvmlDeviceAttributes_t": ctypes.sizeof(pynvml.c_nvmlDeviceAttributes),
          "nvmlEventData_t": ctypes.sizeof(pynvml.c_nvmlEventData_t),
          "nvmlUtilization_t": ctypes.sizeof(pynvml.c_nvmlUtilization_t),
          "nvmlFieldValue_t": ctypes.sizeof(pynvml.c_nvmlFieldValue_t)}
pynvml.nvmlInit()
gpu = pynvml.nvmlDeviceGetHandleByIndex(0)
mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 0)
attrs = pynvml.nvmlDeviceGetAttributes(mig)
print(json.dumps({
    "ours": ours, "theirs": theirs,
    "driver": pynvml.nvmlSystemGetDriverVersion(),
    "count": pynvml.nvmlDeviceGetCount(),
    "pci": pynvml.nvmlDeviceGetPciInfo(gpu).busId if isinstance(pynvml.nvmlDeviceGetPciInfo(gpu).busId, str)
           else pynvml.nvmlDeviceGetPciInfo(gpu).busId.decode(),
    "memory": [pynvml.nvmlDeviceGetMemoryInfo(gpu).total, pynvml.nvmlDeviceGetMemoryInfo(gpu, pynvml.nvmlMemory_v2).total],
    "mig_mode": pynvml.nvmlDeviceGetMigMode(gpu),
    "mig": [pynvml.nvmlDeviceGetUUID(mig), pynvml.nvmlDeviceGetGpuInstanceId(mig), attrs.gpuInstanceSliceCount,
            attrs.memorySizeMB, pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig))],
}))
"""


def probe(nvml: FakeNvml, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("FAKE_NVML_")}
    full.update(nvml.env())
    full.update(env or {})
    return subprocess.run([sys.executable, "-c", PROBE], env=full, capture_output=True, text=True, timeout=30)


def test_struct_sizes_and_values_through_real_pynvml(tmp_path: Path, fake_nvml_lib: Path) -> None:
    import json

    config = FakeNvmlConfig(
        gpus=(FakeGpu(0, mig="1", pci_bus_id="00000000:3B:00.0", memory_mib=40960), FakeGpu(1)),
        migs=(FakeMig(0, gi=5, gi_slices=1, memory_mib=4864),),
    )
    result = probe(FakeNvml(tmp_path, fake_nvml_lib, config))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["ours"] == data["theirs"]
    assert data["driver"] == "535.261.03" and data["count"] == 2
    assert data["pci"] == "00000000:3B:00.0"
    assert data["memory"] == [40960 << 20] * 2
    assert data["mig_mode"] == [1, 1]
    assert data["mig"] == [FakeMig(0, gi=5).resolved_uuid(), 5, 1, 4864, FakeGpu(0).resolved_uuid()]


def test_driver_version_and_init_error_come_from_the_environment(tmp_path: Path, fake_nvml_lib: Path) -> None:
    nvml = FakeNvml(tmp_path, fake_nvml_lib, FakeNvmlConfig.uniform(1))
    code = "import pynvml; pynvml.nvmlInit(); print(pynvml.nvmlSystemGetDriverVersion())"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FAKE_NVML_")},
        **nvml.env(),
        "FAKE_NVML_DRIVER_VERSION": "570.86.15",
    }
    assert (
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip()
        == "570.86.15"
    )
    env["FAKE_NVML_INIT_ERROR"] = "LIB_RM_VERSION_MISMATCH"
    failed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert failed.returncode != 0 and "NVMLError_LibRmVersionMismatch" in failed.stderr


TELEMETRY_PROBE = r"""
import json, pynvml, sys
pynvml.nvmlInit()
def read(i):
    h = pynvml.nvmlDeviceGetHandleByIndex(i)
    try:
        u = pynvml.nvmlDeviceGetUtilizationRates(h)
        return {
            "util": [u.gpu, u.memory, pynvml.nvmlDeviceGetEncoderUtilization(h)[0],
                     pynvml.nvmlDeviceGetDecoderUtilization(h)[0]],
            "temp": pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU),
            "mem_temp": pynvml.nvmlDeviceGetFieldValues(h, [pynvml.NVML_FI_DEV_MEMORY_TEMP])[0].value.uiVal,
            "power": pynvml.nvmlDeviceGetPowerUsage(h),
            "energy": pynvml.nvmlDeviceGetTotalEnergyConsumption(h),
            "clocks": [pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
                       pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM)],
            "replay": pynvml.nvmlDeviceGetPcieReplayCounter(h),
            "ecc": [pynvml.nvmlDeviceGetTotalEccErrors(h, e, c) for e in (0, 1) for c in (0, 1)],
            "remap": list(pynvml.nvmlDeviceGetRemappedRows(h)),
            "throttle": pynvml.nvmlDeviceGetCurrentClocksThrottleReasons(h),
            "used_mib": pynvml.nvmlDeviceGetMemoryInfo(h).used >> 20,
            "cc": list(pynvml.nvmlDeviceGetCudaComputeCapability(h)),
        }
    except pynvml.NVMLError as exc:
        return {"error": str(exc)}
for line in sys.stdin:
    print(json.dumps([read(0), read(1)]), flush=True)
"""


def test_telemetry_follows_the_file_while_the_process_runs(tmp_path: Path, fake_nvml_lib: Path) -> None:
    import json

    config = FakeNvmlConfig(gpus=(FakeGpu(0, cc="9.0"), FakeGpu(1)))
    nvml = FakeNvml(tmp_path, fake_nvml_lib, config)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAKE_NVML_")} | nvml.env()
    proc = subprocess.Popen(
        [sys.executable, "-c", TELEMETRY_PROBE], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdin and proc.stdout

    def ask() -> list[dict[str, object]]:
        proc.stdin.write("\n")
        proc.stdin.flush()
        return json.loads(proc.stdout.readline())

    try:
        first, second = ask()
        assert first["temp"] == 35 and first["mem_temp"] == 40 and first["power"] == 60000
        assert first["clocks"] == [1410, 1215] and first["cc"] == [9, 0] and second["cc"] == [8, 0]
        nvml.set_telemetry(0, temp=95, util_gpu=80, util_mem=30, util_dec=5, fb_used_mib=2048, ecc_dbe_vol=2)
        nvml.set_telemetry(0, remap_unc=3, remap_failure=1, throttle="0x40", pcie_replay=7, energy_mj=5)
        nvml.set_telemetry("*", power_mw=120000)
        nvml.set_telemetry(1, fail="UNKNOWN")
        first, second = ask()
        assert first["temp"] == 95 and first["util"] == [80, 30, 0, 5] and first["used_mib"] == 2048
        assert first["ecc"] == [0, 0, 2, 0] and first["remap"] == [0, 3, 0, 1] and first["throttle"] == 0x40
        assert first["replay"] == 7 and first["energy"] == 5 and first["power"] == 120000
        assert second == {"error": "Unknown Error"}
        nvml.set_telemetry(1, fail="none")
        assert ask()[1]["power"] == 120000
    finally:
        proc.kill()
        proc.wait()
