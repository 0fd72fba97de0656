"""What the rollout costs per node beyond the upgrade itself.

    .venv/bin/python benchmarks/rollout_bench.py [--record] [--rounds N]

Two real Debian test hosts behind sshd, the API stand-in with the real kubectl, the
simulated kubelet side of each node (tests/e2e/cluster_harness.py), one workload pod per
node to evict. Each round is a disruptive run, max-unavailable 1: containerd's nvidia
runtime becomes the default runtime (or stops being it), so containerd restarts on each
node. From the run's JSON, per node:

- overhead = cordon start to uncordon end, minus the steps (node steps, cluster steps and
  verify of the batch): cordon + drain (eviction, and waiting for the pod to go) + the
  Ready check + uncordon;
- the planning pass (the dry run that decides which nodes a run disrupts), per node: the
  run's wall time minus the node spans and the steps, over the nodes;
- then a no-change run with the cluster (nothing disrupted: planning dry run + the run) and
  a --dry-run of it, whole commands: what the planning pass adds to every run.

--record writes the table into benchmarks/RESULTS.md between this script's markers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import test_cache_dir  # noqa: E402
from e2e.bootstrap_harness import DRIVER, RESTART_CONTAINERD  # noqa: E402
from e2e.cluster_harness import SimulatedNode, gpus_for  # noqa: E402
from e2e.host_gpus import nvidia_gpus, set_pci_functions  # noqa: E402
from standins.debian_host import start_debian_hosts, stop_all  # noqa: E402
from standins.fake_nvml import build_fake_nvml  # noqa: E402
from standins.kube_api import KubeApiStandIn, kubectl_binary  # noqa: E402
from standins.toolkit_packages import DEFAULT_VERSION, build_toolkit_packages  # noqa: E402

from gpunode.bootstrap.core.kube.manifests import DEFAULT_VERIFY_IMAGE  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from results import installed_cli_env, load_note, measured_on, write_section  # noqa: E402

BUS_IDS = [f.bus_id for f in nvidia_gpus(2) if f.pci_class == 0x030200]


def gpunode(api: KubeApiStandIn, args: list[str]) -> tuple[float, dict[str, Any]]:
    env = installed_cli_env({**os.environ, **api.kubectl_env()})
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "gpunode.bootstrap.cli.main", *args], capture_output=True, text=True, env=env
    )
    wall = time.monotonic() - start
    if done.returncode != 0:
        raise SystemExit(f"gpunode failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return wall, json.loads(done.stdout)


def workload(api: KubeApiStandIn, node: str) -> None:
    api.create(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"web-{node}-{time.monotonic_ns()}",
                "namespace": "default",
                "labels": {"app": "web"},
                "ownerReferences": [
                    {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "web", "controller": True}
                ],
            },
            "spec": {
                "nodeName": node,
                "containers": [{"name": "web", "image": DEFAULT_VERIFY_IMAGE, "command": ["sleep", "3600"]}],
            },
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    load_start = os.getloadavg()[0]
    cache = test_cache_dir()
    work = Path(tempfile.mkdtemp(prefix="gprb-", dir="/tmp"))
    hosts = start_debian_hosts(cache, 2, name_prefix="gprb")
    sims: list[SimulatedNode] = []
    try:
        toolkit = work / "toolkit"
        toolkit.mkdir()
        build_toolkit_packages(toolkit, version=DEFAULT_VERSION)
        with KubeApiStandIn(workdir=work / "api", kubectl=kubectl_binary(cache)) as api:
            lib_dir = build_fake_nvml(cache)
            for index, host in enumerate(hosts):
                api.add_node(host.name)
                set_pci_functions(host, nvidia_gpus(2))
                host.set_loaded_nvidia_module(DRIVER)
                host.start_containerd()
                sims.append(SimulatedNode(api, host, work / f"n{index}", lib_dir, gpus_for(BUS_IDS)))
            inventory = work / "inventory.py"
            inventory.write_text(f"gpu_nodes = {[(h.name, h.pyinfra_host_data) for h in hosts]!r}\n")
            base = [
                "bootstrap", "-i", str(inventory), "--yes", "--output", "json", "--kernel-module", "none",
                "--containerd-restart-command", RESTART_CONTAINERD, "--toolkit-packages", str(toolkit),
                "--driver-version", DRIVER, "--kubeconfig", str(api.kubeconfig_path),
            ]  # fmt: skip
            gpunode(api, [*base, "--max-unavailable", "100%"])  # set-up, not measured
            overheads: list[float] = []
            phases: dict[str, list[float]] = {"cordon": [], "drain": [], "ready": [], "uncordon": []}
            planning: list[float] = []
            steps: list[float] = []
            for round_ in range(options.rounds):
                for host in hosts:
                    workload(api, host.name)
                flag = ["--set-default-runtime"] if round_ % 2 == 0 else []
                wall, doc = gpunode(api, [*base, "--max-unavailable", "1", *flag])
                spans = 0.0
                rolled = [node for node in doc["rollout"]["nodes"] if node["batch"]]
                if len(rolled) != len(hosts):
                    raise SystemExit(
                        f"round {round_ + 1} disrupted {len(rolled)} of {len(hosts)} nodes: {doc['rollout']}"
                    )
                for node in rolled:
                    by_name = {p["name"]: p for p in node["phases"]}
                    first, last = node["phases"][0], node["phases"][-1]
                    span = last["started"] + last["seconds"] - first["started"]
                    overheads.append(span - by_name["steps"]["seconds"])
                    steps.append(by_name["steps"]["seconds"])
                    spans += span
                    for name in phases:
                        phases[name].append(by_name[name]["seconds"])
                planning.append((wall - spans) / len(hosts))
            # Whatever the last round left (default runtime on or off), keep it: no change.
            same = ["--set-default-runtime"] if (options.rounds - 1) % 2 == 0 else []
            no_change = [gpunode(api, [*base, *same])[0] for _ in range(options.rounds)]
            dry = [gpunode(api, [*base, *same, "--dry-run"])[0] for _ in range(options.rounds)]
    finally:
        for sim in sims:
            sim.close()
        stop_all(hosts)
        shutil.rmtree(work, ignore_errors=True)
    load_end = os.getloadavg()[0]
    med = statistics.median
    lines = [
        "| per node, median of " + f"{len(overheads)} | seconds |",
        "|---|---|",
        f"| rollout overhead (cordon to uncordon minus the steps) | {med(overheads):.2f} |",
        *(f"| of which {name} | {med(values):.2f} |" for name, values in phases.items()),
        f"| planning pass (dry run deciding the disruption, Python start included), per node | {med(planning):.2f} |",
        f"| the steps themselves (containerd restart, cluster steps, verify) | {med(steps):.2f} |",
        "",
        f"| both hosts, whole command, median of {options.rounds} | seconds |",
        "|---|---|",
        f"| a no-change run with the cluster (the planning dry run, then the run) | {med(no_change):.2f} |",
        f"| `--dry-run` of the same (what the planning pass costs, plus its own start) | {med(dry):.2f} |",
    ]
    body = "\n".join(
        [
            measured_on(f"benchmarks/rollout_bench.py --rounds {options.rounds}"),
            load_note(load_start, load_end),
            "",
            "Two test hosts, max-unavailable 1, one workload pod per node evicted, a containerd "
            "restart per node (default runtime toggled).",
            "",
            *lines,
        ]
    )
    print(body)
    if options.record:
        write_section("rollout", "Rollout (cordon, drain, prove, uncordon)", body)


if __name__ == "__main__":
    main()
