"""The plugin image: its size, how long `gpunode image build` takes, and container start to
Register in containerd + runc, beside the plugin as a plain process.

    GPUNODE_TEST_CACHE=... .venv/bin/python benchmarks/image_bench.py [--cold] [--record]

Needs root (mmdebstrap, containerd). The build is timed with the Debian base from the test
cache (the usual case: the base is built once per recipe); --cold also builds a base from
nothing in a temporary cache (a few minutes, mostly the Debian mirror). Container start to
Register runs the DaemonSet `gpunode render` prints, translated to `ctr run` as the tests
do, five times; the plain process is `python -m gpunode.plugin serve` on the same fake GPUs.
--record writes the figures into benchmarks/RESULTS.md (section plugin-image).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "plugin"))
sys.path.insert(0, str(REPO / "benchmarks"))

from conftest import test_cache_dir  # noqa: E402
from image_builds import build, line_value  # noqa: E402
from image_world import ImageWorld, wait_exit  # noqa: E402
from results import installed_cli_env, load_note, measured_on, seconds, write_section  # noqa: E402
from standins.containerd_instance import ContainerdInstance  # noqa: E402
from standins.fake_nvml import build_fake_nvml  # noqa: E402

GPU = "nvidia.com/gpu"
RUNS = 5


def container_registers(containerd: ContainerdInstance, library: Path) -> list[float]:
    times = []
    for run in range(RUNS):
        root = Path(tempfile.mkdtemp(prefix="gpn-b-", dir="/tmp"))
        world = ImageWorld(root, library, containerd)
        try:
            spec = world.daemonset()["spec"]["template"]["spec"]
            started = time.monotonic()
            proc, log = world.run(spec, f"bench-{run}")
            registration = world.kubelet.wait_registered(GPU, timeout=60)
            times.append(registration.at - started)
            containerd.kill(f"bench-{run}", "SIGTERM")
            wait_exit(proc, log)
        finally:
            world.close()
            shutil.rmtree(root, ignore_errors=True)
    return times


def process_registers(library: Path) -> list[float]:
    from standins.fake_nvml import FakeNvml, FakeNvmlConfig
    from standins.kubelet import KubeletStandIn

    times = []
    for _ in range(RUNS):
        root = Path(tempfile.mkdtemp(prefix="gpn-b-", dir="/tmp"))
        nvml = FakeNvml(root / "gpu", library, FakeNvmlConfig.uniform(2))
        kubelet = KubeletStandIn(root / "dp")
        kubelet.start()
        # As installed: with bytecode (the image's packages come compiled too).
        env = {k: v for k, v in installed_cli_env().items() if not k.startswith(("GPUNODE_", "FAKE_NVML_"))}
        env.update(nvml.env())
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "gpunode.plugin", "serve", "--kubelet-dir", str(root / "dp")],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            times.append(kubelet.wait_registered(GPU, timeout=60).at - started)
        finally:
            proc.terminate()
            proc.wait(20)
            kubelet.stop()
            shutil.rmtree(root, ignore_errors=True)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold", action="store_true", help="also build the Debian base from nothing")
    parser.add_argument("--record", action="store_true", help="write the figures into benchmarks/RESULTS.md")
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="gpn-bench-image-"))
    figures: dict[str, str] = {}
    try:
        cache = test_cache_dir() / "plugin-image"
        build(work / "warmup.tar", cache)  # the base in the cache, pip's cache warm
        warm, stdout = build(work / "image.tar", cache)
        figures["build"] = f"{warm:.1f} s (Debian base from the cache)"
        if args.cold:
            cold, _ = build(work / "cold.tar", work / "cold-cache")
            figures["build-cold"] = f"{cold:.1f} s (Debian base built by mmdebstrap)"
        figures["archive"] = line_value(stdout, "archive:").split(" (")[0]
        figures["unpacked"] = line_value(stdout, "unpacked:")
        figures["packages"] = line_value(stdout, "python packages:")
        figures["base"] = line_value(stdout, "base:").split(" (")[0]
        library = build_fake_nvml(test_cache_dir())
        ctd_dir = Path(tempfile.mkdtemp(prefix="gpn-ctd-", dir="/tmp"))
        with ContainerdInstance(ctd_dir) as containerd:
            started = time.monotonic()
            containerd.ctr("images", "import", str(work / "image.tar"))
            figures["import"] = f"{time.monotonic() - started:.1f} s"
            figures["container"] = seconds(container_registers(containerd, library))
        shutil.rmtree(ctd_dir, ignore_errors=True)
        figures["process"] = seconds(process_registers(library))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_end = os.getloadavg()[0]
    labels = {
        "archive": "image archive (gzip layers)",
        "unpacked": "image unpacked",
        "base": "base",
        "packages": "Python packages in the image",
        "build": "`gpunode image build`",
        "build-cold": "`gpunode image build`, cold",
        "import": "`ctr images import`",
        "container": "container start (`ctr run`) to Register",
        "process": "plain process start to Register",
    }
    rows = ["| figure | value |", "|---|---|"] + [f"| {labels[k]} | {v} |" for k, v in figures.items()]
    for row in rows[2:]:
        print(row)
    print(f"1-minute load average: {load_start:.2f} at start, {load_end:.2f} at end")
    if args.record:
        write_section(
            "plugin-image",
            "Plugin image",
            "\n\n".join(
                [
                    measured_on("sudo benchmarks/image_bench.py --cold --record")
                    + " Built from the checkout with no registry (Debian 12 base by mmdebstrap, Debian's "
                    "python3); run in a private containerd 1.6 + runc from Debian 12 as the rendered "
                    "DaemonSet asks (2 fake GPUs). NVIDIA's plugin starts to Register in 0.02 s as a "
                    "process (ANCHORS.md).",
                    load_note(load_start, load_end),
                    "\n".join(rows),
                ]
            ),
        )


if __name__ == "__main__":
    main()
