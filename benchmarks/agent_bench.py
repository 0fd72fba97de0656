"""Figures of `gpunode agent`: what one agent costs its node and the API server.

    .venv/bin/python benchmarks/agent_bench.py [--ticks N] [--record]

Set-up (as tests/e2e/test_agent.py): a real Debian 12 test host (its namespaces entered as
a hostPID pod enters PID 1's), the Kubernetes API stand-in with the real kubectl, the plugin
DaemonSet of `gpunode render` run as the real bundled plugin against a kubelet stand-in in
the host's device-plugins directory, the fake NVML as the GPU. The agent converges the node
once (not timed), then runs as it runs in its pod: `gpunode agent --interval I --heartbeat I`
(the defaults' ratio: heartbeat = interval, so every tick rewrites the condition).

Measured over N steady-state ticks, in check mode and in apply mode (a node already
converged: apply plans bootstrap's steps as a dry run every tick):
- API requests per tick, by verb, and their bytes (request bodies; answers as the stand-in
  sent them), from the stand-in's request log;
- the agent's CPU per tick (its own and its children's: kubectl, nsenter, the host's shell),
  from /proc/<pid>/stat; its resident memory after the ticks and its peak;
- the API server's load for 1,000 nodes at the default interval (300 s), from those.

--record writes the table into benchmarks/RESULTS.md between this script's markers.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from e2e.bootstrap_harness import DRIVER, RESTART_CONTAINERD  # noqa: E402
from e2e.cluster_harness import SimulatedNode, gpus_for  # noqa: E402
from e2e.host_gpus import nvidia_gpus, set_pci_functions  # noqa: E402
from results import load_note, measured_on, write_section  # noqa: E402
from standins.debian_host import start_debian_host  # noqa: E402
from standins.fake_nvml import build_fake_nvml  # noqa: E402
from standins.kube_api import KubeApiStandIn, kubectl_binary  # noqa: E402
from standins.toolkit_packages import DEFAULT_VERSION, build_toolkit_packages  # noqa: E402

LIBRARY = f"/usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.{DRIVER}"
DEVICE_PLUGINS = "/var/lib/kubelet/device-plugins"
KUBELET_SCRIPT = "#!/bin/sh\nwhile :; do sleep 3600; done\n"
FLEET = 1000
DEFAULT_INTERVAL = 300
TICK = os.sysconf("SC_CLK_TCK")


def cache_dir() -> Path:
    return Path(os.environ.get("GPUNODE_TEST_CACHE", ROOT / ".cache"))


def gpunode(api: KubeApiStandIn, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**api.kubectl_env(), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "gpunode.bootstrap.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime stime cutime cstime: fields 14-17 of stat, 12-15 after the command name.
    return sum(int(v) for v in fields[11:15]) / TICK


def memory_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


class RunningAgent:
    def __init__(self, api: KubeApiStandIn, node: str, pid: int, mode: str, interval: float) -> None:
        argv = [
            sys.executable,
            "-m",
            "gpunode.bootstrap.cli.main",
            "agent",
            "--node-name",
            node,
            "--host-pid",
            str(pid),
            "--kubeconfig",
            str(api.kubeconfig_path),
            "--mode",
            mode,
            "--interval",
            str(interval),
            "--heartbeat",
            str(interval),
        ]
        env = {**api.kubectl_env(), "PYTHONUNBUFFERED": "1"}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        self.ticks = 0
        self.lines: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if " agent_tick " in line:
                with self._changed:
                    self.ticks += 1
                    self._changed.notify_all()

    def wait_ticks(self, count: int, timeout: float = 600) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: self.ticks >= count, timeout=timeout):
                raise RuntimeError("the agent did not tick:\n" + "".join(self.lines[-30:]))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=120)


def measure(api: KubeApiStandIn, node: str, pid: int, mode: str, ticks: int, interval: float) -> dict[str, Any]:
    agent = RunningAgent(api, node, pid, mode, interval)
    try:
        agent.wait_ticks(1)  # warm: imports, kubectl's discovery cache
        api.clear_requests()
        cpu0 = cpu_seconds(agent.proc.pid)
        agent.wait_ticks(1 + ticks)
        cpu1 = cpu_seconds(agent.proc.pid)
        memory = memory_kib(agent.proc.pid)
        requests = api.request_log
        ticked = [line for line in agent.lines if " agent_tick " in line][-ticks:]
    finally:
        agent.stop()
    verbs = Counter(f"{r.method} {_kind(r.path)}" for r in requests)
    return {
        "mode": mode,
        "ticks": ticks,
        "requests": len(requests) / ticks,
        "by_verb": {k: v / ticks for k, v in sorted(verbs.items())},
        "sent": sum(len(r.body) for r in requests) / ticks,
        "received": sum(r.response_bytes for r in requests) / ticks,
        "cpu": (cpu1 - cpu0) / ticks,
        "rss_mib": memory["VmRSS"] / 1024,
        "peak_mib": memory["VmHWM"] / 1024,
        "tick_seconds": sorted(float(re.search(r"seconds=([\d.]+)", t).group(1)) for t in ticked),  # type: ignore[union-attr]
        "conditions": sorted({re.search(r"status=(\w+)", t).group(1) for t in ticked}),  # type: ignore[union-attr]
    }


def _kind(path: str) -> str:
    """`/api/v1/nodes/gpu-1/status` -> `nodes/status`; discovery paths as they are."""
    parts = [p for p in path.split("?")[0].split("/") if p]
    if parts[:1] == ["api"]:
        parts = parts[2:]
    elif parts[:1] == ["apis"]:
        parts = parts[3:]
    if len(parts) >= 2 and parts[0] == "namespaces":
        parts = parts[2:]
    if not parts:
        return path
    return parts[0] + ("/" + parts[2] if len(parts) > 2 else "")


def setup(workdir: Path) -> tuple[Any, KubeApiStandIn, SimulatedNode]:
    cache = cache_dir()
    host = start_debian_host(cache, name="agb-1")
    set_pci_functions(host, nvidia_gpus(1))
    host.set_loaded_nvidia_module(DRIVER)
    host.start_containerd()
    host.put_file("/usr/local/bin/kubelet", KUBELET_SCRIPT, mode=0o755)
    host.exec(
        f"mkdir -p {DEVICE_PLUGINS} && setsid /usr/local/bin/kubelet --root-dir=/var/lib/kubelet "
        f"--hostname-override={host.name} </dev/null >/dev/null 2>&1 &"
    )
    api = KubeApiStandIn(workdir=workdir / "api", kubectl=kubectl_binary(cache))
    api.start()
    api.add_node(host.name, labels={"nvidia.com/gpu.present": "true"})
    toolkit = workdir / "toolkit"
    toolkit.mkdir()
    build_toolkit_packages(toolkit, version=DEFAULT_VERSION)
    settings = workdir / "settings.yaml"
    settings.write_text(
        yaml.safe_dump(
            {
                "settings": {
                    "driver_version": DRIVER,
                    "kernel_module": "none",
                    "containerd_restart_command": RESTART_CONTAINERD,
                    "toolkit_packages": str(toolkit),
                }
            }
        )
    )
    rendered = gpunode(api, "render", "--lib-path", LIBRARY).stdout
    agent_objects = yaml.safe_load_all(gpunode(api, "render", "agent", "--settings", str(settings)).stdout)
    configmap = next(d for d in agent_objects if d["kind"] == "ConfigMap")
    api.kubectl("apply", "-f", "-", stdin=rendered + "---\n" + yaml.safe_dump(configmap), check=True)
    lib_dir = build_fake_nvml(cache)
    sim = SimulatedNode(
        api,
        host,
        workdir / "n1",
        lib_dir,
        gpus_for([f.bus_id for f in nvidia_gpus(1) if f.pci_class == 0x030200]),
        kubelet_dir=host.root / DEVICE_PLUGINS.lstrip("/"),
    )
    once = ["agent", "--once", "--mode", "apply", "--node-name", host.name, "--host-pid", str(host.init_pid)]
    first = gpunode(api, *once, "--kubeconfig", str(api.kubeconfig_path))
    print("converged:", first.stdout.strip() or first.stderr[-500:])
    host.put_file(LIBRARY, (lib_dir / "libnvidia-ml.so.1").read_bytes())  # the GPU answers
    for _ in range(20):
        if gpunode(api, *once, "--kubeconfig", str(api.kubeconfig_path)).returncode == 0:
            break
        time.sleep(2)
    else:
        raise RuntimeError("the node never became GPUNodeReady=True")
    return host, api, sim


def table(results: list[dict[str, Any]]) -> str:
    rows = [
        "| per node, per tick | " + " | ".join(f"{r['mode']} mode" for r in results) + " |",
        "|---|" + "---|" * len(results),
        "| API requests | " + " | ".join(f"{r['requests']:.1f}" for r in results) + " |",
        "| ... by verb and resource | "
        + " | ".join(", ".join(f"{k} {v:g}" for k, v in r["by_verb"].items()) for r in results)
        + " |",
        "| ... of which kubectl's own (discovery /api, /apis; /version) | "
        + " | ".join(
            f"{sum(v for k, v in r['by_verb'].items() if k in ('GET /api', 'GET /apis', 'GET version')):g}"
            for r in results
        )
        + " |",
        "| bytes sent (request bodies) | " + " | ".join(f"{r['sent'] / 1024:.1f} KiB" for r in results) + " |",
        "| bytes received (answers) | " + " | ".join(f"{r['received'] / 1024:.1f} KiB" for r in results) + " |",
        "| agent CPU (itself, kubectl, nsenter, host shell) | "
        + " | ".join(f"{r['cpu']:.2f} s" for r in results)
        + " |",
        "| tick wall time (median) | "
        + " | ".join(f"{r['tick_seconds'][len(r['tick_seconds']) // 2]:.2f} s" for r in results)
        + " |",
        "| agent RSS after the ticks (peak) | "
        + " | ".join(f"{r['rss_mib']:.0f} MiB ({r['peak_mib']:.0f} MiB)" for r in results)
        + " |",
        f"| **{FLEET} nodes at --interval {DEFAULT_INTERVAL}: requests/s** | "
        + " | ".join(f"{FLEET * r['requests'] / DEFAULT_INTERVAL:.1f}" for r in results)
        + " |",
        f"| **{FLEET} nodes: API traffic** | "
        + " | ".join(f"{FLEET * (r['sent'] + r['received']) / DEFAULT_INTERVAL / 1024:.0f} KiB/s" for r in results)
        + " |",
        f"| **{FLEET} nodes: writes/s** (status PATCH, heartbeat = interval) | "
        + " | ".join(
            f"{FLEET * sum(v for k, v in r['by_verb'].items() if not k.startswith('GET')) / DEFAULT_INTERVAL:.1f}"
            for r in results
        )
        + " |",
        "| agent CPU, share of one core at --interval 300 | "
        + " | ".join(f"{100 * r['cpu'] / DEFAULT_INTERVAL:.2f} %" for r in results)
        + " |",
    ]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ticks", type=int, default=5)
    parser.add_argument("--interval", type=float, default=6.0)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    workdir = Path(tempfile.mkdtemp(prefix="agb-", dir="/tmp"))
    host = api = sim = None
    try:
        host, api, sim = setup(workdir)
        results = [
            measure(api, host.name, host.init_pid, mode, args.ticks, args.interval) for mode in ("check", "apply")
        ]
    finally:
        if sim is not None:
            sim.close()
        if api is not None:
            api.stop()
        if host is not None:
            host.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    load_end = os.getloadavg()[0]
    text = table(results)
    print(text)
    for r in results:
        print(r["mode"], "conditions seen:", r["conditions"], "tick seconds:", r["tick_seconds"])
    body = "\n\n".join(
        [
            measured_on(f"benchmarks/agent_bench.py --ticks {args.ticks} --interval {args.interval:g}"),
            load_note(load_start, load_end),
            text,
            "How it is read: the agent's steady state on a converged node (GPUNodeReady True every tick), "
            f"{args.ticks} ticks per mode at --interval {args.interval:g} with --heartbeat equal to it (the defaults "
            "are 300 and 300: the condition is rewritten once per interval, as the kubelet rewrites its own "
            "node status every 5 minutes). Requests are every request the API server saw, kubectl's included "
            "(this machine's kubectl is a dispatcher that asks /version on every run, and re-reads /api and "
            "/apis: about half of the requests, none of them the agent's own reads). The fleet rows multiply one node's figures: "
            "each agent reads only its own Node, its own pods (field selector) and the cluster's DaemonSets "
            "and RuntimeClasses; nothing grows with the fleet except the DaemonSet list's size. CPU counts "
            "the agent and every process it waited for (kubectl runs, nsenter, the host's shell); most of it "
            "is kubectl's process start (about 0.1 s each).",
        ]
    )
    if args.record:
        write_section("agent", "gpunode agent: per node and per 1,000 nodes", body)


if __name__ == "__main__":
    main()
