"""Device plugin figures, against the kubelet stand-in and the fake NVML library.

    GPUNODE_TEST_CACHE=... .venv/bin/python benchmarks/plugin_bench.py [--record]

Runs the plugin as a real process (`python -m gpunode.plugin serve`) with 8 fake GPUs and
measures what issue 3 asks for: start to registered, Allocate round trips (one caller,
8 concurrent callers, 1000 calls at once), XID to Unhealthy on the ListAndWatch stream,
kubelet.sock re-created to registered, resident memory over 20,000 Allocates, idle CPU.
Prints the figures; --record also writes them into benchmarks/RESULTS.md (section
"Device plugin"), with the machine, the date and the load average while measuring.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import grpc  # noqa: E402
from conftest import test_cache_dir  # noqa: E402
from standins.fake_nvml import FakeNvml, FakeNvmlConfig, build_fake_nvml  # noqa: E402
from standins.kubelet import UNHEALTHY, KubeletStandIn  # noqa: E402

from gpunode.plugin.v1beta1 import api_pb2  # noqa: E402

GPU = "nvidia.com/gpu"
sys.path.insert(0, str(REPO / "benchmarks"))
from results import installed_cli_env, load_note, measured_on, write_section  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def ms(value: float) -> str:
    return f"{value * 1000:.2f} ms"


class World:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="gpn-bench-", dir="/tmp"))
        self.nvml = FakeNvml(self.root / "nvml", build_fake_nvml(test_cache_dir()), FakeNvmlConfig.dgx_like())
        self.dir = self.root / "dp"
        self.kubelet = KubeletStandIn(self.dir)
        self.kubelet.start()

    def plugin(self, *args: str) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in installed_cli_env().items() if not k.startswith(("GPUNODE_", "FAKE_NVML_"))}
        env.update(self.nvml.env())
        return subprocess.Popen(
            [sys.executable, "-m", "gpunode.plugin", "serve", "--kubelet-dir", str(self.dir), *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(self.root / "plugin.log").open("a"),
        )

    def close(self) -> None:
        self.kubelet.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(10)


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert match
    return int(match.group(1)) / 1024


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


FLOOR_SERVER = """
import sys, time
from concurrent import futures
import grpc
from gpunode.plugin.v1beta1 import api_pb2, api_pb2_grpc
class Trivial(api_pb2_grpc.DevicePluginServicer):
    def Allocate(self, request, context):
        return api_pb2.AllocateResponse(container_responses=[api_pb2.ContainerAllocateResponse()])
server = grpc.server(futures.ThreadPoolExecutor(8))
api_pb2_grpc.add_DevicePluginServicer_to_server(Trivial(), server)
server.add_insecure_port("unix:" + sys.argv[1])
server.start()
time.sleep(600)
"""


def allocate_times(stub: object, request: api_pb2.AllocateRequest, count: int) -> list[float]:
    call = stub.Allocate
    for _ in range(50):
        call(request, timeout=5)
    times = []
    for _ in range(count):
        t = time.perf_counter()
        call(request, timeout=5)
        times.append(time.perf_counter() - t)
    return times


def interleaved_with_floor(
    root: Path, stub: object, request: api_pb2.AllocateRequest, blocks: int = 10, per_block: int = 300
) -> tuple[list[float], list[float]]:
    """Allocate times against the plugin and, in alternating blocks so that both see the
    same machine load, against a Python gRPC server that does nothing: what this machine
    and grpcio cost before the plugin does any work."""
    from gpunode.plugin.v1beta1 import api_pb2_grpc

    socket = root / "floor.sock"
    server = subprocess.Popen([sys.executable, "-c", FLOOR_SERVER, str(socket)])
    try:
        with grpc.insecure_channel(f"unix:{socket}") as channel:
            grpc.channel_ready_future(channel).result(timeout=20)
            floor_stub = api_pb2_grpc.DevicePluginStub(channel)
            ours: list[float] = []
            floor: list[float] = []
            for _ in range(blocks):
                ours += allocate_times(stub, request, per_block)
                floor += allocate_times(floor_stub, request, per_block)
            return ours, floor
    finally:
        server.kill()
        server.wait()


def measure() -> dict[str, str]:
    figures: dict[str, str] = {}
    world = World()
    try:
        # -- process start to Register (and to the first device list) --
        to_register, to_list = [], []
        for run in range(10):
            started = time.monotonic()
            process = world.plugin()
            registration = world.kubelet.wait_registered(GPU, timeout=20, after=run)
            to_register.append(registration.at - started)
            first = next(u for u in world.kubelet.updates if u.at >= registration.at and not u.disconnected)
            to_list.append(first.at - started)
            stop(process)
        base = []
        for _ in range(5):
            t = time.monotonic()
            subprocess.run([sys.executable, "-c", "pass"], check=True)
            base.append(time.monotonic() - t)
        figures["start_to_register"] = (
            f"median {statistics.median(to_register):.3f} s, max {max(to_register):.3f} s "
            f"(10 starts; first device list {statistics.median(to_list):.3f} s; "
            f"bare `python -c pass` here: {statistics.median(base):.3f} s)"
        )

        process = world.plugin("--health-recovery-seconds", "0.2")
        world.kubelet.wait_registered(GPU, timeout=20, after=10)
        ids = [d.id for d in world.kubelet.devices(GPU)]
        _, stub = world.kubelet._stub(GPU)
        request = api_pb2.AllocateRequest(container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=ids[:2])])

        # -- Allocate, one caller (and the same client against a do-nothing gRPC server) --
        one, floor = interleaved_with_floor(world.root, stub, request)
        figures["allocate_one_caller"] = (
            f"p50 {ms(pct(one, 50))}, p99 {ms(pct(one, 99))} (3000 calls; a do-nothing "
            f"Python gRPC server, same client, same moment: p50 {ms(pct(floor, 50))}, "
            f"p99 {ms(pct(floor, 99))})"
        )

        # -- Allocate, 8 concurrent callers (own channels, as separate clients) --
        def caller(count: int) -> list[float]:
            with grpc.insecure_channel(f"unix:{world.dir / 'gpunode-nvidia.com-gpu.sock'}") as channel:
                from gpunode.plugin.v1beta1 import api_pb2_grpc

                own = api_pb2_grpc.DevicePluginStub(channel)
                times = []
                for _ in range(count):
                    t = time.perf_counter()
                    own.Allocate(request, timeout=10)
                    times.append(time.perf_counter() - t)
                return times

        with futures.ThreadPoolExecutor(8) as pool:
            eight = [t for result in pool.map(caller, [300] * 8) for t in result]
        figures["allocate_8_callers"] = f"p50 {ms(pct(eight, 50))}, p99 {ms(pct(eight, 99))} (8 x 300 calls)"

        # -- 1000 calls at once --
        t = time.perf_counter()
        calls = [stub.Allocate.future(request, timeout=30) for _ in range(1000)]
        errors = 0
        for call in calls:
            try:
                call.result()
            except grpc.RpcError:
                errors += 1
        figures["allocate_1000_at_once"] = f"{errors} errors, all answered in {time.perf_counter() - t:.2f} s"

        # -- memory over 20,000 Allocates --
        rss = [rss_mb(process.pid)]
        done = 10 * (50 + 300) + 2400 + 1000
        marks = {}
        for target in (10_000, 20_000):
            while done < target:
                stub.Allocate(request, timeout=5)
                done += 1
            marks[target] = rss_mb(process.pid)
        figures["rss"] = (
            f"{rss[0]:.1f} MB after {10 * (50 + 300) + 2400 + 1000} Allocates, {marks[10_000]:.1f} MB after "
            f"10,000, {marks[20_000]:.1f} MB after 20,000"
        )

        # -- idle CPU --
        time.sleep(1.0)
        cpu0, t0 = cpu_seconds(process.pid), time.monotonic()
        time.sleep(15)
        idle = (cpu_seconds(process.pid) - cpu0) / (time.monotonic() - t0) * 100
        figures["idle_cpu"] = f"{idle:.2f} % of one core (15 s idle, 8 GPUs, one ListAndWatch stream)"

        # -- XID to Unhealthy on the ListAndWatch stream --
        xid = []
        for i in range(20):
            gpu = i % 8
            world.kubelet.wait_devices(GPU, lambda ds: all(d.health != UNHEALTHY for d in ds), timeout=5)
            t = time.monotonic()
            world.nvml.inject_xid(gpu, 8)
            world.kubelet.wait_devices(GPU, lambda ds, g=gpu: ds[g].health == UNHEALTHY, timeout=5)
            seen = next(u.at for u in reversed(world.kubelet.updates) if u.devices[gpu].health == UNHEALTHY)
            xid.append(seen - t)
        figures["xid_to_unhealthy"] = f"median {ms(statistics.median(xid))}, max {ms(max(xid))} (20 XIDs)"

        # -- kubelet.sock re-created to registered --
        world.kubelet.wait_devices(GPU, lambda ds: all(d.health != UNHEALTHY for d in ds), timeout=5)
        world.nvml.inject_xid(3, 79)
        world.kubelet.wait_devices(GPU, lambda ds: ds[3].health == UNHEALTHY, timeout=5)
        again = []
        for _ in range(10):
            count = world.kubelet.registration_count(GPU)
            world.kubelet.stop()
            for entry in world.dir.iterdir():
                entry.unlink()
            t = time.monotonic()
            world.kubelet.start()
            registration = world.kubelet.wait_registered(GPU, timeout=10, after=count)
            again.append(registration.at - t)
        after_restarts = world.kubelet.devices(GPU)[3].health
        figures["kubelet_restart_to_register"] = (
            f"median {ms(statistics.median(again))}, max {ms(max(again))} (10 kubelet restarts)"
        )
        figures["xid79_after_kubelet_restart"] = f"GPU 3 still {after_restarts} after 10 kubelet restarts"
        stop(process)
    finally:
        world.close()
    return figures


LABELS = [
    ("start_to_register", "process start to Register", "0.02 s", "< 0.5 s"),
    ("allocate_one_caller", "Allocate, one caller", "p50 0.32 to 0.41 ms, p99 0.5 to 1.0 ms", "p99 < 2 ms"),
    ("allocate_8_callers", "Allocate, 8 concurrent callers", "p99 6 to 9 ms", ""),
    ("allocate_1000_at_once", "1000 concurrent Allocate calls", "", "no error"),
    ("xid_to_unhealthy", "XID to Unhealthy on the ListAndWatch stream", "1 to 11 ms", "< 200 ms"),
    ("kubelet_restart_to_register", "kubelet.sock re-created to registered again", "0.002 s", "< 1 s"),
    (
        "xid79_after_kubelet_restart",
        "GPU that fell off the bus (XID 79), after kubelet restarts",
        "reported Healthy again",
        "stays Unhealthy",
    ),
    ("rss", "resident memory over Allocates", "28 MB after 1000", "< 60 MB, not growing"),
    ("idle_cpu", "idle CPU", "", "< 1 %"),
]


def record(figures: dict[str, str], load_start: float, load_end: float) -> None:
    rows = ["| figure | gpunode plugin | NVIDIA's plugin | target |", "|---|---|---|---|"]
    for key, label, theirs, target in LABELS:
        rows.append(f"| {label} | {figures[key]} | {theirs or '-'} | {target or '-'} |")
    rows += [
        "| devices Unhealthy after a transient XID | Healthy again after the quiet period "
        "(`--health-recovery-seconds`, default 60 s) | stay Unhealthy until the pod restarts | recover |",
        "| ListAndWatch stream ended by the kubelet | noticed at once, re-registered (see tests) | not noticed; "
        "waits for a file event or a 30 s retry | re-register |",
    ]
    write_section(
        "device-plugin",
        "Device plugin",
        "\n\n".join(
            [
                measured_on("benchmarks/plugin_bench.py --record")
                + " The plugin as a real process (`python -m gpunode.plugin serve`, 8 fake GPUs in NVLink "
                "pairs), the kubelet stand-in as client, the fake libnvidia-ml.so.1 behind the real pynvml. "
                "NVIDIA's figures are those of k8s-device-plugin v0.20.0 measured the same way on the same kind of machine. The "
                "do-nothing gRPC server beside the Allocate figures shows what this machine's Python gRPC "
                "costs by itself.",
                load_note(load_start, load_end),
                "\n".join(rows),
            ]
        ),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help="write the figures into benchmarks/RESULTS.md")
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    figures = measure()
    load_end = os.getloadavg()[0]
    for key, label, _, _ in LABELS:
        print(f"{label}: {figures[key]}")
    print(f"1-minute load average: {load_start:.2f} at start, {load_end:.2f} at end")
    if args.record:
        record(figures, load_start, load_end)


if __name__ == "__main__":
    main()
