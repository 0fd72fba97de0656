"""What GPU sharing costs the device plugin: Allocate p50/p99 and resident memory with
4 GPUs x 1, 16 and 64 replicas (time-slicing through NVIDIA's config file v1).

    GPUNODE_TEST_CACHE=... .venv/bin/python benchmarks/sharing_bench.py [--record]

The plugin runs as a real process against the kubelet stand-in and the fake NVML library,
once per replica count, in alternating rounds so that every count sees the same machine
load. Each round: one caller, Allocate of one device (a replica, or a GPU with 1 replica)
3000 times after a warm-up, then GetPreferredAllocation of 4 out of every device 300
times; RSS after all of it. Prints the figures; --record writes them into
benchmarks/RESULTS.md (section "GPU sharing"), with machine, date and load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

import grpc  # noqa: E402
from plugin_bench import World, pct, rss_mb, stop  # noqa: E402
from results import load_note, measured_on, write_section  # noqa: E402
from standins.fake_nvml import FakeNvmlConfig  # noqa: E402

from gpunode.plugin.v1beta1 import api_pb2, api_pb2_grpc  # noqa: E402

GPU = "nvidia.com/gpu"
REPLICAS = (1, 16, 64)
ROUNDS = 3
CALLS = 3000
PREFERRED_CALLS = 300


def config_text(replicas: int) -> str:
    if replicas == 1:
        return "version: v1\n"  # no sharing: the same file, the same parser, whole GPUs
    return (
        "version: v1\nsharing:\n  timeSlicing:\n    resources:\n"
        f"    - name: nvidia.com/gpu\n      replicas: {replicas}\n"
    )


def one_round(world: World, replicas: int) -> tuple[list[float], list[float], float, int]:
    config = world.root / f"sharing-{replicas}.yaml"
    config.write_text(config_text(replicas))
    before = world.kubelet.registration_count(GPU)
    process = world.plugin("--config-file", str(config))
    try:
        world.kubelet.wait_registered(GPU, timeout=30, after=before)
        ids = [d.id for d in world.kubelet.devices(GPU)]
        with grpc.insecure_channel(f"unix:{world.dir / 'gpunode-nvidia.com-gpu.sock'}") as channel:
            stub = api_pb2_grpc.DevicePluginStub(channel)
            requests = [
                api_pb2.AllocateRequest(container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=[i])])
                for i in ids
            ]
            for n in range(100):
                stub.Allocate(requests[n % len(requests)], timeout=5)
            allocate = []
            for n in range(CALLS):
                started = time.perf_counter()
                stub.Allocate(requests[n % len(requests)], timeout=5)
                allocate.append(time.perf_counter() - started)
            preferred_request = api_pb2.PreferredAllocationRequest(
                container_requests=[
                    api_pb2.ContainerPreferredAllocationRequest(available_deviceIDs=ids, allocation_size=4)
                ]
            )
            preferred = []
            for _ in range(PREFERRED_CALLS):
                started = time.perf_counter()
                stub.GetPreferredAllocation(preferred_request, timeout=5)
                preferred.append(time.perf_counter() - started)
        return allocate, preferred, rss_mb(process.pid), len(ids)
    finally:
        stop(process)


def measure() -> dict[int, dict[str, float]]:
    world = World()
    world.nvml.configure(FakeNvmlConfig.uniform(4))
    samples: dict[int, dict[str, list[float]]] = {r: {"allocate": [], "preferred": [], "rss": []} for r in REPLICAS}
    devices: dict[int, int] = {}
    try:
        for round_number in range(ROUNDS):
            order = REPLICAS if round_number % 2 == 0 else tuple(reversed(REPLICAS))
            for replicas in order:
                allocate, preferred, rss, count = one_round(world, replicas)
                samples[replicas]["allocate"] += allocate
                samples[replicas]["preferred"] += preferred
                samples[replicas]["rss"].append(rss)
                devices[replicas] = count
    finally:
        world.close()
    return {
        r: {
            "devices": devices[r],
            "p50": pct(s["allocate"], 50),
            "p99": pct(s["allocate"], 99),
            "preferred_p50": pct(s["preferred"], 50),
            "rss": statistics.median(s["rss"]),
        }
        for r, s in samples.items()
    }


def table(figures: dict[int, dict[str, float]]) -> str:
    base = figures[1]
    rows = [
        "| replicas per GPU | devices | Allocate p50 | Allocate p99 | p50 vs 1 | GetPreferredAllocation p50 | RSS | RSS vs 1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r, f in figures.items():
        rows.append(
            f"| {r} | {int(f['devices'])} | {f['p50'] * 1000:.3f} ms | {f['p99'] * 1000:.3f} ms | "
            f"{(f['p50'] / base['p50'] - 1) * 100:+.1f} % | {f['preferred_p50'] * 1000:.3f} ms | "
            f"{f['rss']:.1f} MB | {f['rss'] - base['rss']:+.1f} MB |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help="write the figures into benchmarks/RESULTS.md")
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    figures = measure()
    load_end = os.getloadavg()[0]
    text = table(figures)
    print(text)
    print(f"1-minute load average: {load_start:.2f} at start, {load_end:.2f} at end")
    if args.record:
        write_section(
            "gpu-sharing",
            "GPU sharing",
            "\n\n".join(
                [
                    measured_on("benchmarks/sharing_bench.py --record")
                    + f" The plugin as a real process with NVIDIA's config file (4 fake GPUs, time-slicing), the "
                    f"kubelet stand-in's gRPC client, one caller; {ROUNDS} alternating rounds per replica count, "
                    f"{CALLS} Allocates of one device each and {PREFERRED_CALLS} GetPreferredAllocation calls "
                    "(4 out of every device) per round; RSS is the median over the rounds, after all the calls. "
                    "Target (issue 12): sharing costs no more than 10 % Allocate latency and a few MB.",
                    load_note(load_start, load_end),
                    text,
                ]
            ),
        )


if __name__ == "__main__":
    main()
