"""Figures of the cluster half of `gpunode bootstrap` and of `gpunode verify`.

    .venv/bin/python benchmarks/cluster_steps_bench.py [--record] [--rounds N]

Against the Kubernetes API stand-in (tests/standins/kube_api) with this machine's kubectl,
and the smallest kubelet (a bound pod is Running and Ready at once, a plugin pod makes its
node advertise 2 GPUs), so the figures are gpunode's and kubectl's own cost, not a real
rollout's:

- the cluster steps (runtimeclass, node-label, device-plugin with rollout wait, verify)
  for 1 and for 10 nodes: a first run (everything created) and a no-change run, wall
  time and the number of kubectl runs;
- `gpunode verify NODE` as a whole command (Python start, kubectl, verdict) on an OK node.

kubectl's own start (~75 ms a run here, /usr/bin/kubectl being gcloud's dispatcher) is
most of it; the no-change run is what a re-run of bootstrap adds to the node half.

--record writes the table into benchmarks/RESULTS.md between this script's markers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from standins.kube_api import KubeApiStandIn, kubectl_binary  # noqa: E402

from gpunode.bootstrap.cluster.kubectl import KubeAccess, Kubectl, KubectlResult  # noqa: E402
from gpunode.bootstrap.cluster.steps import run_cluster_steps  # noqa: E402
from gpunode.bootstrap.core.kube.cluster_plan import ClusterSettings, NodeTarget  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from results import installed_cli_env, load_note, measured_on, write_section  # noqa: E402

LIBRARY = "/usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.535.261.03"


class CountingKubectl(Kubectl):
    runs = 0

    def run(self, *args: str, **kwargs: Any) -> KubectlResult:
        CountingKubectl.runs += 1
        return super().run(*args, **kwargs)


def small_kubelet(api: KubeApiStandIn) -> None:
    def started(pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        api.set_pod_phase(meta["namespace"], meta["name"], "Running", ready=True)
        if meta["namespace"] == "kube-system":
            api.set_node_status(
                pod["spec"]["nodeName"], capacity={"nvidia.com/gpu": "2"}, allocatable={"nvidia.com/gpu": "2"}
            )

    api.on_pod_created(started)


def steps_round(nodes: int) -> tuple[float, int, float, int]:
    with KubeApiStandIn(kubectl=kubectl_binary()) as api:
        os.environ["KUBECACHEDIR"] = str(api.cache_dir)
        small_kubelet(api)
        targets = []
        for index in range(nodes):
            name = f"gpu{index:02d}"
            api.add_node(name)
            targets.append(
                NodeTarget(name, name, "535.261.03", LIBRARY, "/var/lib/kubelet", ("0000:3b:00.0", "0000:5b:00.0"))
            )
        kubectl = CountingKubectl(KubeAccess(kubeconfig=str(api.kubeconfig_path)))
        settings = ClusterSettings(rollout_timeout=30, verify_timeout=30)
        figures = []
        for _ in range(2):
            CountingKubectl.runs = 0
            started = time.perf_counter()
            results = run_cluster_steps(kubectl, targets, settings)
            seconds = time.perf_counter() - started
            bad = [s for steps in results.values() for s in steps if s.status == "failed"]
            assert not bad, bad
            figures += [seconds, CountingKubectl.runs]
        return figures[0], int(figures[1]), figures[2], int(figures[3])


def verify_round(rounds: int) -> list[float]:
    with KubeApiStandIn(kubectl=kubectl_binary()) as api:
        small_kubelet(api)
        api.add_node("gpu00")
        api.set_node_status("gpu00", capacity={"nvidia.com/gpu": "2"}, allocatable={"nvidia.com/gpu": "2"})
        env = installed_cli_env(api.kubectl_env())
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "gpunode.bootstrap.cli.main",
                    "verify",
                    "gpu00",
                    "--expect",
                    "2",
                    "--kubeconfig",
                    str(api.kubeconfig_path),
                ],
                capture_output=True,
                text=True,
                env=env,
                check=False,
            )
            times.append(time.perf_counter() - started)
            assert result.returncode == 0, result.stdout + result.stderr
        return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    rows = []
    for nodes in (1, 10):
        runs = [steps_round(nodes) for _ in range(args.rounds)]
        first = statistics.median(r[0] for r in runs)
        again = statistics.median(r[2] for r in runs)
        rows.append(
            f"| cluster steps, {nodes} node{'s' if nodes > 1 else ''}: first run | "
            f"median {first:.2f} s, {runs[0][1]} kubectl runs |"
        )
        rows.append(
            f"| cluster steps, {nodes} node{'s' if nodes > 1 else ''}: no-change run | "
            f"median {again:.2f} s, {runs[0][3]} kubectl runs |"
        )
    verify_times = verify_round(args.rounds * 2)
    rows.append(
        f"| `gpunode verify NODE` on an OK node (whole command) | "
        f"median {statistics.median(verify_times):.2f} s, max {max(verify_times):.2f} s |"
    )
    load_end = os.getloadavg()[0]
    table = ["| figure | measured |", "|---|---|", *rows]
    print("\n".join(table))
    print(f"load average {load_start:.2f} -> {load_end:.2f}")
    if not args.record:
        return
    write_section(
        "cluster-steps",
        "Cluster steps and verify",
        "\n\n".join(
            [
                measured_on("benchmarks/cluster_steps_bench.py --record") + f" {args.rounds} rounds; medians. "
                f"Against the API stand-in with kubectl {kubectl_binary()} and a kubelet that makes pods "
                "Ready at once: gpunode's and kubectl's own cost.",
                load_note(load_start, load_end),
                "\n".join(table),
            ]
        ),
    )


if __name__ == "__main__":
    main()
