"""The agent image: its size, how long `gpunode image build --kind agent` takes, and how long a
container of it takes to answer `gpunode --version` in containerd + runc.

    GPUNODE_TEST_CACHE=... .venv/bin/python benchmarks/agent_image_bench.py [--record]

Needs root (containerd; mmdebstrap only if the Debian base is not in the test cache). The
build is timed twice: with the base and the kubectl layer from the test cache (the usual
case), and with only the base cached (kubectl fetched from Debian 13's archive and unpacked:
a first build on a machine that already built the plugin image). The plain `gpunode
--version` on this machine is timed beside the container's. --record writes the figures into
benchmarks/RESULTS.md (section agent-image), beside the plugin image's.
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
from image_world import CONSOLE_SCRIPT, wait_exit  # noqa: E402
from results import installed_cli_env, load_note, measured_on, seconds, write_section  # noqa: E402
from standins.containerd_instance import ContainerdInstance  # noqa: E402

RUNS = 5


def container_version(containerd: ContainerdInstance, reference: str, work: Path) -> list[float]:
    times = []
    for run in range(RUNS):
        log = work / f"version-{run}.log"
        started = time.monotonic()
        proc = containerd.run(reference, f"version-{run}", [], ["gpunode", "--version"], log)
        assert wait_exit(proc, log, timeout=60) == 0, log.read_text()
        times.append(time.monotonic() - started)
    return times


def process_version() -> list[float]:
    times = []
    for _ in range(RUNS):
        started = time.monotonic()
        subprocess.run([str(CONSOLE_SCRIPT), "--version"], check=True, capture_output=True, env=installed_cli_env())
        times.append(time.monotonic() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help="write the figures into benchmarks/RESULTS.md")
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="gpn-bench-agent-image-"))
    figures: dict[str, str] = {}
    try:
        cache = test_cache_dir() / "plugin-image"
        build(work / "warmup.tar", cache, kind="agent")  # base and kubectl in the cache, pip's cache warm
        warm, stdout = build(work / "image.tar", cache, kind="agent")
        figures["build"] = f"{warm:.1f} s (Debian base and kubectl layer from the cache)"
        fresh = work / "base-only-cache"
        fresh.mkdir()
        for base in cache.glob("base-*"):
            shutil.copytree(base, fresh / base.name, ignore=shutil.ignore_patterns(".lock", ".build-*"))
        first, _ = build(work / "first.tar", fresh, kind="agent")
        figures["build-kubectl"] = f"{first:.1f} s (Debian base cached; kubectl fetched from Debian 13)"
        figures["archive"] = line_value(stdout, "archive:").split(" (")[0]
        figures["unpacked"] = line_value(stdout, "unpacked:")
        figures["kubectl"] = line_value(stdout, "kubectl:")
        figures["packages"] = str(len(line_value(stdout, "python packages:").split(",")))
        reference = stdout.split()[1]  # "built REF into FILE"
        ctd_dir = Path(tempfile.mkdtemp(prefix="gpn-ctd-", dir="/tmp"))
        with ContainerdInstance(ctd_dir) as containerd:
            started = time.monotonic()
            containerd.ctr("images", "import", str(work / "image.tar"))
            figures["import"] = f"{time.monotonic() - started:.1f} s"
            figures["container"] = seconds(container_version(containerd, reference, work))
        shutil.rmtree(ctd_dir, ignore_errors=True)
        figures["process"] = seconds(process_version())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_end = os.getloadavg()[0]
    labels = {
        "archive": "image archive (gzip layers)",
        "unpacked": "image unpacked",
        "kubectl": "kubectl (Debian 13 package, unpacked)",
        "packages": "Python distributions in the image",
        "build": "`gpunode image build --kind agent`",
        "build-kubectl": "`gpunode image build --kind agent`, first on a machine with the plugin's base",
        "import": "`ctr images import`",
        "container": "`ctr run ... gpunode --version` (container start to exit)",
        "process": "plain `gpunode --version` on this machine",
    }
    rows = ["| figure | value |", "|---|---|"] + [f"| {labels[k]} | {v} |" for k, v in figures.items()]
    for row in rows[2:]:
        print(row)
    print(f"1-minute load average: {load_start:.2f} at start, {load_end:.2f} at end")
    if args.record:
        write_section(
            "agent-image",
            "Agent image",
            "\n\n".join(
                [
                    measured_on("benchmarks/agent_image_bench.py --record")
                    + " Built from the checkout with no registry: the plugin image's Debian 12 base "
                    "(shared, cached), kubectl from Debian 13's archive as a layer, gpunode with all its "
                    "dependencies; run in a private containerd 1.6 + runc from Debian 12.",
                    load_note(load_start, load_end),
                    "\n".join(rows),
                ]
            ),
        )


if __name__ == "__main__":
    main()
