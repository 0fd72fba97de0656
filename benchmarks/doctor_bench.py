"""Figures of `gpunode doctor` and `gpunode render alerts`.

    .venv/bin/python benchmarks/doctor_bench.py [--record] [--runs N]

- snapshot: the host snapshot run on this machine with `sh -c` (what pyinfra runs over SSH),
  as bootstrap takes it and with doctor's diagnostics (live NVML check, kernel log,
  modinfo, process scan): what doctor adds to the one round trip;
- cluster: `gpunode doctor --node gpu-1 --output json` (the CLI as a user runs it, the real
  kubectl) against the Kubernetes API stand-in holding a healthy GPU node with gpunode's
  DaemonSet and its Running plugin pod (logs, events); then the same for 10 GPU nodes
  judged at once (`gpunode doctor`, no node named);
- the rules alone: `diagnose()` over one healthy case, in process;
- `gpunode render alerts` wall time.

--record writes the table into benchmarks/RESULTS.md between this script's markers.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from doctor_support import case, judge  # noqa: E402
from standins.kube_api import KubeApiStandIn, kubectl_binary  # noqa: E402

from gpunode.bootstrap.core.kube.manifests import manifest_objects  # noqa: E402
from gpunode.bootstrap.core.kube.plugin_deployment import PluginDeployment  # noqa: E402
from gpunode.bootstrap.node.snapshot import snapshot_command  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from results import installed_cli_env, load_note, measured_on, seconds, write_section  # noqa: E402

DRIVER = "535.261.03"
LIBRARY = f"/usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.{DRIVER}"
LOG = (
    "plugin_starting driver=535.261.03 gpus=2 resources=nvidia.com/gpu:2\n"
    "registered resource=nvidia.com/gpu socket=gpunode-nvidia.com-gpu.sock attempt=1\nplugin_ready version=0.1.0\n"
)


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    began = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    elapsed = time.perf_counter() - began
    if result.returncode not in (0, 1):
        raise RuntimeError(f"{argv[:4]} exited {result.returncode}: {result.stderr[-500:]}")
    return elapsed


def cluster(nodes: int) -> KubeApiStandIn:
    api = KubeApiStandIn(kubectl=kubectl_binary())
    api.start()
    api.on_pod_created(
        lambda pod: api.set_pod_phase(pod["metadata"]["namespace"], pod["metadata"]["name"], "Running", ready=True)
    )
    for index in range(1, nodes + 1):
        api.add_node(
            f"gpu-{index}",
            labels={"gpunode.io/driver-version": DRIVER},
            capacity={"nvidia.com/gpu": "2"},
            allocatable={"nvidia.com/gpu": "2"},
        )
    for obj in manifest_objects(PluginDeployment(driver_version=DRIVER, lib_path=LIBRARY)):
        api.apply(obj, field_manager="gpunode")
    api.wait_hooks_idle()
    for pod in api.list("pods", "kube-system"):
        api.set_pod_logs("kube-system", pod["metadata"]["name"], LOG)
    return api


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    rows: list[tuple[str, str]] = []

    plain = snapshot_command("/etc/containerd/config.toml", ())
    diagnosed = snapshot_command("/etc/containerd/config.toml", (), diagnostics=True)
    rows.append(
        (
            "host snapshot, as bootstrap takes it (`sh -c`, this machine)",
            seconds([timed(["sh", "-c", plain]) for _ in range(args.runs)]),
        )
    )
    rows.append(
        (
            "host snapshot with doctor's diagnostics (live NVML check, dmesg, modinfo, processes)",
            seconds([timed(["sh", "-c", diagnosed]) for _ in range(args.runs)]),
        )
    )

    gpunode = [sys.executable, "-m", "gpunode.bootstrap.cli.main"]
    for nodes, extra, label in (
        (1, ["--node", "gpu-1"], "`gpunode doctor --node gpu-1` (healthy node, cluster only)"),
        (10, [], "`gpunode doctor` with 10 GPU nodes (all judged)"),
    ):
        api = cluster(nodes)
        try:
            env = {**installed_cli_env(api.kubectl_env()), "KUBECONFIG": str(api.kubeconfig_path)}
            timed(gpunode + ["doctor", *extra], env)  # kubectl's discovery cache warmed
            rows.append(
                (
                    label,
                    seconds([timed(gpunode + ["doctor", *extra, "--output", "json"], env) for _ in range(args.runs)]),
                )
            )
        finally:
            api.stop()

    healthy = case()
    began = time.perf_counter()
    for _ in range(200):
        judge(healthy)
    rows.append(
        (
            "the rules alone: `diagnose()` of one healthy node (host and cluster evidence)",
            f"{(time.perf_counter() - began) / 200 * 1000:.2f} ms",
        )
    )
    rows.append(("`gpunode render alerts`", seconds([timed(gpunode + ["render", "alerts"]) for _ in range(args.runs)])))
    load_after = os.getloadavg()[0]

    table = "\n".join(["| figure | measured |", "|---|---|", *[f"| {name} | {value} |" for name, value in rows]])
    print(table)
    if args.record:
        write_section(
            "doctor",
            "Doctor",
            "\n\n".join(
                [
                    measured_on("benchmarks/doctor_bench.py --record") + " Each `gpunode doctor` run includes "
                    "starting Python and about eight kubectl processes (the API stand-in's own share is about "
                    "1 ms per request).",
                    load_note(load_before, load_after),
                    table,
                ]
            ),
        )


if __name__ == "__main__":
    main()
