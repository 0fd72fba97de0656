"""Figures of the end-to-end test bed (tests/standins/debian_host.py).

    GPUNODE_TEST_CACHE=... .venv/bin/python benchmarks/testbed_bench.py [--cold-build] [--record]

Measures: the root filesystem build (mmdebstrap; from the build log of the cached one, or
a fresh build into a scratch cache with --cold-build), unpacking it (what the first host
on a machine pays once), starting a host (overlay + namespaces + sshd answering) and
stopping it, an ssh round trip, `apt-get update` and the driver userspace install
(libnvidia-ml1 + nvidia-smi from non-free) with an empty apt cache and with the shared
one, and starting 10 hosts at once. Prints the figures; --record also writes them into
benchmarks/RESULTS.md (section "Test bed") with the machine, the date and the load.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from conftest import test_cache_dir  # noqa: E402
from standins.debian_host import DebianHost, start_debian_host, start_debian_hosts, stop_all  # noqa: E402
from standins.debian_rootfs import DEFAULT_RECIPE, rootfs_tarball, rootfs_tree  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
from results import load_note, measured_on, write_section  # noqa: E402

DRIVER_PACKAGES = "libnvidia-ml1 nvidia-smi"
INSTALL = f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends {DRIVER_PACKAGES}"


def timed(action: object) -> float:
    started = time.monotonic()
    action()  # type: ignore[operator]
    return time.monotonic() - started


def load() -> float:
    return os.getloadavg()[0]


def rootfs_build_seconds(cache: Path, cold: bool) -> tuple[float, str]:
    if cold:
        with tempfile.TemporaryDirectory(prefix="testbed-cold-", dir=cache) as scratch:
            seconds = timed(lambda: rootfs_tarball(Path(scratch), DEFAULT_RECIPE))
            size = next(Path(scratch).glob("debian-host/rootfs-*.tar.zst")).stat().st_size
        return seconds, f"fresh build now, {size / 1e6:.0f} MB tarball"
    tarball = rootfs_tarball(cache, DEFAULT_RECIPE)
    log = tarball.with_suffix(".build.log").read_text()
    match = re.search(r"built in ([0-9.]+) s", log)
    if match is None:
        raise SystemExit("the cached root filesystem has no build time: run with --cold-build")
    return float(match[1]), f"from the cached build's log, {tarball.stat().st_size / 1e6:.0f} MB tarball"


def unpack_seconds(cache: Path) -> float:
    tarball = rootfs_tarball(cache, DEFAULT_RECIPE)
    rootfs_tree(cache, DEFAULT_RECIPE)
    with tempfile.TemporaryDirectory(prefix="testbed-unpack-", dir=cache) as scratch:
        return timed(
            lambda: subprocess.run(
                ["tar", "--zstd", "-C", scratch, "--numeric-owner", "-xpf", str(tarball)], check=True
            )
        )


def host_start_stop(cache: Path, runs: int) -> tuple[list[float], list[float]]:
    starts, stops = [], []
    for index in range(runs):
        started = time.monotonic()
        host = start_debian_host(cache, name=f"bench-start-{index}")
        starts.append(time.monotonic() - started)
        stops.append(timed(host.stop))
    return starts, stops


def ssh_round_trips(host: DebianHost, runs: int) -> list[float]:
    return [timed(lambda: host.ssh("true")) for _ in range(runs)]


def apt_install(cache: Path, seeded: bool) -> tuple[float, float, str]:
    with start_debian_host(cache, name="bench-apt", seed_apt_cache=seeded) as host:
        update = timed(lambda: host.ssh("apt-get update -q"))
        result: list[str] = []
        install = timed(lambda: result.append(host.ssh(INSTALL).stdout))
        fetched = re.search(r"Need to get (.+?) of archives", result[0])
        version = host.ssh("dpkg-query -W -f '${Version}' libnvidia-ml1").stdout
        return update, install, f"needed to get {fetched[1] if fetched else '?'}, libnvidia-ml1 {version}"


def fleet(cache: Path, count: int) -> tuple[float, float, float]:
    started = time.monotonic()
    hosts = start_debian_hosts(cache, count, name_prefix="bench-fleet")
    start = time.monotonic() - started
    try:
        with futures.ThreadPoolExecutor(count) as pool:
            rounds = timed(lambda: list(pool.map(lambda h: h.ssh("hostname"), hosts)))
    finally:
        stop = timed(lambda: stop_all(hosts))
    return start, rounds, stop


def fmt(values: list[float]) -> str:
    return f"median {statistics.median(values):.3f} s, max {max(values):.3f} s ({len(values)} runs)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cold-build", action="store_true", help="build the rootfs afresh")
    parser.add_argument("--record", action="store_true", help="write benchmarks/RESULTS.md")
    args = parser.parse_args()
    cache = test_cache_dir()
    load_start = load()

    build, build_note = rootfs_build_seconds(cache, args.cold_build)
    unpack = unpack_seconds(cache)
    starts, stops = host_start_stop(cache, 5)
    with start_debian_host(cache, name="bench-ssh") as host:
        trips = ssh_round_trips(host, 20)
    cold_update, cold_install, cold_note = apt_install(cache, seeded=False)
    warm_update, warm_install, warm_note = apt_install(cache, seeded=True)
    fleet_start, fleet_ssh, fleet_stop = fleet(cache, 10)
    load_end = load()

    rows = [
        ("root filesystem build (mmdebstrap, cold)", f"{build:.1f} s ({build_note})"),
        ("unpacking it (once per machine and recipe)", f"{unpack:.1f} s"),
        ("host start (overlay, namespaces, sshd answering)", fmt(starts)),
        ("host stop (everything killed, directory removed)", fmt(stops)),
        ("ssh round trip (`ssh -F ... true`, new connection each)", fmt(trips)),
        ("`apt-get update` (lists from the image revalidated)", f"{cold_update:.1f} s, then {warm_update:.1f} s"),
        (
            f"driver userspace install, cold (`{DRIVER_PACKAGES}`, empty apt cache)",
            f"{cold_install:.1f} s ({cold_note})",
        ),
        ("driver userspace install, warm (shared apt cache)", f"{warm_install:.1f} s ({warm_note})"),
        ("10 hosts started one after another", f"{fleet_start:.1f} s"),
        ("10 hosts: one ssh command on each, all at once", f"{fleet_ssh:.2f} s (stopping all: {fleet_stop:.2f} s)"),
    ]
    table = "| figure | value |\n|---|---|\n" + "".join(f"| {a} | {b} |\n" for a, b in rows)
    print(table)
    if args.record:
        record(table, load_start, load_end, args.cold_build)


def record(table: str, load_start: float, load_end: float, cold: bool) -> None:
    command = "benchmarks/testbed_bench.py --record" + (" --cold-build" if cold else "")
    write_section(
        "testbed",
        "Test bed",
        "\n\n".join(
            [
                measured_on(command) + " Debian 12 hosts from tests/standins/debian_host.py, the Debian "
                "archive (deb.debian.org) over the network.",
                load_note(load_start, load_end),
                table,
            ]
        ),
    )


if __name__ == "__main__":
    main()
