"""`nvidia-smi -L` for test pods: the GPUs NVML reports, as a container sees them.

Real nvidia-smi is NVIDIA's binary, injected into a GPU container by the NVIDIA container
runtime together with libnvidia-ml and the device nodes of the GPUs in
NVIDIA_VISIBLE_DEVICES (which the device plugin's Allocate answer set). This stand-in does
what that amounts to for `-L`: it asks NVML (the real pynvml over whatever
libnvidia-ml.so.1 the process loads: the fake one in tests) for the GPUs, keeps those
NVIDIA_VISIBLE_DEVICES names (all of them for `all`; none when it is unset or `void`, as
the runtime then exposes no device), numbers them from 0 as a container does, and prints
them in nvidia-smi's format:

    GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-...)

NVML failing to start prints nvidia-smi's own words and exits 9, as nvidia-smi does.
"""

from __future__ import annotations

import os
import sys


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def main(argv: list[str]) -> int:
    if argv != ["-L"]:
        print("this nvidia-smi stand-in knows only -L", file=sys.stderr)
        return 2
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        print(f"Failed to initialize NVML: {exc}")
        return 9
    except OSError as exc:  # the library itself is missing
        print(f"NVIDIA-SMI couldn't find libnvidia-ml.so library in your system. ({exc})")
        return 9
    try:
        visible = os.environ.get("NVIDIA_VISIBLE_DEVICES", "void").strip()
        wanted = None if visible == "all" else {v.strip() for v in visible.split(",") if v.strip()}
        if visible in ("", "void", "none"):
            wanted = set()
        shown = 0
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
            if wanted is not None and uuid not in wanted and str(index) not in wanted:
                continue
            print(f"GPU {shown}: {_text(pynvml.nvmlDeviceGetName(handle))} (UUID: {uuid})")
            shown += 1
        if not shown:
            print("No devices found.")
            return 6
        return 0
    finally:
        pynvml.nvmlShutdown()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
