"""GPU telemetry figures: the plugin as a real process with 8 fake GPUs (the fake NVML over
the real NVML ABI), a kubelet stand-in and a PodResources stand-in holding a pod on every GPU.

    GPUNODE_TEST_CACHE=... .venv/bin/python benchmarks/telemetry_bench.py [--record]

Measures what issue 13 asks for: the time a scrape of /metrics takes for 8 GPUs (client
side, HTTP included; target under 20 ms), the plugin's resident memory with telemetry on
against the same plugin with metrics off (target: at most 5 MB more), and its idle CPU with
telemetry on (target: under 1 % of a core), both unscraped and scraped every 15 s. Plugins
with and without telemetry run in alternating rounds so the machine's load falls on both.
Prints the figures; --record writes them into benchmarks/RESULTS.md ("GPU telemetry").
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

from plugin_bench import World, cpu_seconds, pct, rss_mb, stop  # noqa: E402
from results import load_note, measured_on, write_section  # noqa: E402
from standins.pod_resources import PodResourcesStandIn  # noqa: E402

GPU = "nvidia.com/gpu"
SCRAPES = 300
IDLE_SECONDS = 30.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body = response.read()
    elapsed = time.perf_counter() - started
    assert b"DCGM_FI_DEV_GPU_TEMP" in body
    return elapsed


def wait_registered(world: World, count: int) -> None:
    world.kubelet.wait_registered(GPU, timeout=30, after=count)


def one_round(world: World, pods: PodResourcesStandIn, round_no: int) -> dict[str, float]:
    figures: dict[str, float] = {}
    # Without metrics: the plugin as it ran before telemetry.
    before = world.kubelet.registration_count(GPU)
    plain = world.plugin("--metrics-addr", "")
    wait_registered(world, before)
    time.sleep(2.0)
    figures["rss_off"] = rss_mb(plain.pid)
    cpu0 = cpu_seconds(plain.pid)
    time.sleep(IDLE_SECONDS / 2)
    figures["cpu_off"] = (cpu_seconds(plain.pid) - cpu0) / (IDLE_SECONDS / 2)
    stop(plain)

    before = world.kubelet.registration_count(GPU)
    port = free_port()
    plugin = world.plugin("--metrics-addr", f"127.0.0.1:{port}")
    wait_registered(world, before)
    for _ in range(20):  # warm: first imports, first NVML calls, first PodResources dial
        scrape(port)
    times = [scrape(port) for _ in range(SCRAPES)]
    figures["scrape_p50"] = pct(times, 50)
    figures["scrape_p99"] = pct(times, 99)
    time.sleep(2.0)
    figures["rss_on"] = rss_mb(plugin.pid)
    cpu0 = cpu_seconds(plugin.pid)
    time.sleep(IDLE_SECONDS / 2)
    figures["cpu_on_idle"] = (cpu_seconds(plugin.pid) - cpu0) / (IDLE_SECONDS / 2)
    cpu0, started = cpu_seconds(plugin.pid), time.monotonic()
    for _ in range(2):
        scrape(port)
        time.sleep(15.0)
    figures["cpu_on_scraped"] = (cpu_seconds(plugin.pid) - cpu0) / (time.monotonic() - started)
    figures["rss_on_after"] = rss_mb(plugin.pid)
    stop(plugin)
    print(f"round {round_no}: " + ", ".join(f"{k}={v:.4g}" for k, v in figures.items()), flush=True)
    return figures


def measure(rounds: int) -> dict[str, float]:
    world = World()
    pods = PodResourcesStandIn(world.root / "pod-resources" / "kubelet.sock")
    pods.start()
    try:
        for index, gpu in enumerate(world.nvml.config.gpus):
            pods.assign("ml", f"trainer-{index}", "main", GPU, [gpu.resolved_uuid()])
        results = [one_round(world, pods, r + 1) for r in range(rounds)]
    finally:
        pods.stop()
        world.close()
    return {key: statistics.median(r[key] for r in results) for key in results[0]}


def record(figures: dict[str, float], rounds: int, load_start: float, load_end: float) -> None:
    rss_delta = figures["rss_on_after"] - figures["rss_off"]
    body = "\n".join(
        [
            measured_on(f"benchmarks/telemetry_bench.py --rounds {rounds} --record")
            + " The plugin as a real process with 8 fake GPUs (DGX-like) and a PodResources stand-in "
            f"holding a pod on every GPU; {SCRAPES} scrapes per round after 20 to warm up, timed by the "
            "client (HTTP included); RSS 2 s after start (and after the scrapes, for telemetry on); idle "
            f"CPU over {IDLE_SECONDS / 2:g} s. Medians of {rounds} rounds, plugins with and without "
            "telemetry alternating. Targets (issue 13): scrape under 20 ms, at most 5 MB more RSS, "
            "idle under 1 % of a core.",
            "",
            load_note(load_start, load_end),
            "",
            "| figure | metrics off | telemetry on |",
            "|---|---|---|",
            f"| scrape of /metrics, 8 GPUs, p50 / p99 | - | {figures['scrape_p50'] * 1000:.2f} ms / "
            f"{figures['scrape_p99'] * 1000:.2f} ms |",
            f"| resident memory | {figures['rss_off']:.1f} MB | {figures['rss_on']:.1f} MB at start, "
            f"{figures['rss_on_after']:.1f} MB after the scrapes (+{rss_delta:.1f} MB) |",
            f"| idle CPU, not scraped | {figures['cpu_off'] * 100:.3f} % | {figures['cpu_on_idle'] * 100:.3f} % |",
            f"| CPU, scraped every 15 s | - | {figures['cpu_on_scraped'] * 100:.3f} % |",
        ]
    )
    write_section("gpu-telemetry", "GPU telemetry", body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--record", action="store_true", help="write the figures into benchmarks/RESULTS.md")
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    figures = measure(args.rounds)
    load_end = os.getloadavg()[0]
    for key, value in figures.items():
        print(f"{key}: {value:.4g}")
    print(f"1-minute load average: {load_start:.2f} at start, {load_end:.2f} at end")
    if args.record:
        record(figures, args.rounds, load_start, load_end)


if __name__ == "__main__":
    main()
