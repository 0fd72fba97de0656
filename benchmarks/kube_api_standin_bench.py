"""Figures of the Kubernetes API stand-in (tests/standins/kube_api).

    .venv/bin/python benchmarks/kube_api_standin_bench.py [--record]

- start: KubeApiStandIn() + start() until kubectl can connect (cold: the first one of a
  process also generates the CA and server key);
- server latency: GET /api/v1/nodes and a server-side apply PATCH of a DaemonSet, over
  one kept-alive TLS connection, measured by an in-process client (no kubectl);
- watch latency: a pod status write until the event arrives on an open watch stream;
- kubectl: wall time of `kubectl get nodes -o name` (this machine's /usr/bin/kubectl,
  the gcloud dispatcher: two Go binaries and one extra /version request per run) and
  of `kubectl version --client` (no server) for comparison.

--record writes the table into benchmarks/RESULTS.md between this script's markers.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from standins.kube_api import KubeApiStandIn, kubectl_binary  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from results import load_note, measured_on, write_section  # noqa: E402


def ms(values: list[float]) -> str:
    values = sorted(values)
    p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
    return f"median {statistics.median(values) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms"


def client(api: KubeApiStandIn) -> http.client.HTTPSConnection:
    config = yaml.safe_load(api.kubeconfig_path.read_text())
    ca = base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"])
    context = ssl.create_default_context(cadata=ca.decode())
    return http.client.HTTPSConnection("127.0.0.1", api.port, context=context, timeout=10)


def request(
    conn: http.client.HTTPSConnection,
    api: KubeApiStandIn,
    method: str,
    path: str,
    body: bytes | None = None,
    content_type: str = "application/json",
) -> bytes:
    headers = {"Authorization": f"Bearer {api.token}", "Content-Type": content_type}
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    if response.status >= 300:
        raise RuntimeError(f"{method} {path}: {response.status} {data[:200]!r}")
    return data


DAEMONSET = {
    "apiVersion": "apps/v1",
    "kind": "DaemonSet",
    "metadata": {"name": "bench", "namespace": "kube-system"},
    "spec": {
        "selector": {"matchLabels": {"app": "bench"}},
        "template": {
            "metadata": {"labels": {"app": "bench"}},
            "spec": {"containers": [{"name": "c", "image": "busybox:1.36", "env": [{"name": "N", "value": "0"}]}]},
        },
    },
}


def measure(rounds: int) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        starts = []
        for n in range(rounds // 10 or 1):
            began = time.perf_counter()
            api = KubeApiStandIn(workdir=Path(tmp) / f"s{n}").start()
            starts.append(time.perf_counter() - began)
            api.stop()
        rows.append(
            (
                "start (constructor + start(), kubeconfig written)",
                f"first {starts[0] * 1000:.0f} ms (makes the CA), then "
                f"{ms(starts[1:] or starts)} ({len(starts)} starts)",
            )
        )

        with KubeApiStandIn(workdir=Path(tmp) / "main") as api:
            api.add_node("gpu-1")
            conn = client(api)
            gets = []
            for _ in range(rounds):
                began = time.perf_counter()
                request(conn, api, "GET", "/api/v1/nodes")
                gets.append(time.perf_counter() - began)
            rows.append(("GET /api/v1/nodes, one TLS connection", ms(gets)))

            applies = []
            path = "/apis/apps/v1/namespaces/kube-system/daemonsets/bench?fieldManager=gpunode&force=true"
            for n in range(rounds):
                DAEMONSET["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] = str(n)
                body = json.dumps(DAEMONSET).encode()
                began = time.perf_counter()
                request(conn, api, "PATCH", path, body, "application/apply-patch+yaml")
                applies.append(time.perf_counter() - began)
            rows.append(
                (
                    "server-side apply of a changed DaemonSet (controller included: "
                    "old pod deleted, new one created and bound)",
                    ms(applies),
                )
            )

            pod = api.list("pods", "kube-system")[0]["metadata"]["name"]
            watch = client(api)
            watch.request(
                "GET",
                f"/api/v1/namespaces/kube-system/pods?watch=true&fieldSelector=metadata.name%3D{pod}",
                headers={"Authorization": f"Bearer {api.token}"},
            )
            stream = watch.getresponse()
            stream.readline()  # the initial ADDED
            latencies = []
            for n in range(min(rounds, 200)):
                ready = n % 2 == 0
                began = time.perf_counter()
                api.set_pod_phase("kube-system", pod, "Running", ready=ready)
                while True:
                    event = json.loads(stream.readline())
                    if event["type"] == "MODIFIED":
                        break
                latencies.append(time.perf_counter() - began)
            watch.close()
            rows.append(("pod status write to event on an open watch", ms(latencies)))

            kubectl = kubectl_binary()
            env = api.kubectl_env()
            base = [str(kubectl), "--kubeconfig", str(api.kubeconfig_path)]
            subprocess.run(base + ["get", "nodes"], env=env, capture_output=True, check=True)
            runs, bare = [], []
            for _ in range(max(rounds // 50, 10)):
                began = time.perf_counter()
                subprocess.run(base + ["get", "nodes", "-o", "name"], env=env, capture_output=True, check=True)
                runs.append(time.perf_counter() - began)
                began = time.perf_counter()
                subprocess.run([str(kubectl), "version", "--client"], capture_output=True, check=True)
                bare.append(time.perf_counter() - began)
            rows.append((f"`kubectl get nodes -o name` ({kubectl}, discovery cached)", ms(runs)))
            rows.append(("`kubectl version --client` (no server at all)", ms(bare)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    rows = measure(args.rounds)
    load_after = os.getloadavg()[0]
    table = ["| figure | measured |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]
    print("\n".join(table))
    print(f"1-minute load average: {load_before:.2f} before, {load_after:.2f} after")
    if not args.record:
        return
    write_section(
        "kube-api-standin",
        "Kubernetes API stand-in (tests)",
        "\n\n".join(
            [
                measured_on("benchmarks/kube_api_standin_bench.py --record") + f" {args.rounds} rounds.",
                load_note(load_before, load_after),
                "\n".join(table),
            ]
        ),
    )


if __name__ == "__main__":
    main()
