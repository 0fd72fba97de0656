"""`gpunode agent` end to end: the agent runs as a process on this machine whose host is a
real Debian 12 test host, entered through the host's namespaces (`@nsenter/<its PID 1>`, as
a hostPID pod enters PID 1's), talking with the real kubectl to the Kubernetes API stand-in.
The plugin DaemonSet is `gpunode render`'s (GitOps), started by the stand-in as the real
bundled plugin against a kubelet stand-in per node (cluster_harness.py).

- a fresh node: the agent converges it (driver, toolkit, containerd runtime) and the Node's
  GPUNodeReady condition turns True once the plugin advertises the GPUs;
- a link broken behind its back (containerd's nvidia runtime removed; the plugin stopped):
  the condition turns False with the verdict id of that link within one interval;
- two fresh nodes, two agents, --max-unavailable 1: their disruptive steps never overlap,
  one waits for the Lease (and says so in its condition), both end True.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from polling import eventually
from standins.debian_host import DebianHost, start_debian_hosts, stop_all
from standins.fake_nvml import build_fake_nvml
from standins.kube_api import KubeApiStandIn, kubectl_binary
from standins.toolkit_packages import DEFAULT_VERSION, build_toolkit_packages

from e2e.bootstrap_harness import DRIVER, RESTART_CONTAINERD
from e2e.cluster_harness import SimulatedNode, gpus_for
from e2e.host_gpus import nvidia_gpus, set_pci_functions

LIBRARY = f"/usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.{DRIVER}"
BUS_IDS = [f.bus_id for f in nvidia_gpus(1) if f.pci_class == 0x030200]
DEVICE_PLUGINS = "/var/lib/kubelet/device-plugins"
# The node's kubelet process (doctor reads its age and flags); its sockets are served by the
# kubelet stand-in from this machine, in the host's own device-plugins directory.
KUBELET_SCRIPT = "#!/bin/sh\n# stands for the kubelet: its sockets are served by the test's kubelet stand-in\nwhile :; do sleep 3600; done\n"
NS = "kube-system"
INTERVAL = 4


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="gpa-", dir="/tmp"))  # short: unix sockets live under it
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def toolkit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("toolkit")
    build_toolkit_packages(out, version=DEFAULT_VERSION)
    return out


@pytest.fixture(scope="module")
def hosts(cache_dir: Path) -> Iterator[list[DebianHost]]:
    started = start_debian_hosts(cache_dir, 3, name_prefix="gpa")
    try:
        for host in started:
            set_pci_functions(host, nvidia_gpus(1))
            host.set_loaded_nvidia_module(DRIVER)
            host.start_containerd()
            host.put_file("/usr/local/bin/kubelet", KUBELET_SCRIPT, mode=0o755)
            host.exec(
                f"mkdir -p {DEVICE_PLUGINS} && setsid /usr/local/bin/kubelet --root-dir=/var/lib/kubelet "
                f"--hostname-override={host.name} </dev/null >/dev/null 2>&1 &"
            )
        yield started
    finally:
        stop_all(started)


@pytest.fixture(scope="module")
def api(workdir: Path, cache_dir: Path, hosts: list[DebianHost], toolkit_dir: Path) -> Iterator[KubeApiStandIn]:
    with KubeApiStandIn(workdir=workdir / "api", kubectl=kubectl_binary(cache_dir)) as server:
        for host in hosts:
            server.add_node(host.name, labels={"nvidia.com/gpu.present": "true"})
        # What an operator applies: the plugin DaemonSet and RuntimeClass of `gpunode render`,
        # and the agent's ConfigMap of `gpunode render agent --settings`.
        rendered = gpunode(server, "render", "--lib-path", LIBRARY)
        assert rendered.returncode == 0, rendered.stderr
        settings = {
            "settings": {
                "driver_version": DRIVER,
                "kernel_module": "none",
                "containerd_restart_command": RESTART_CONTAINERD,
                "toolkit_packages": str(toolkit_dir),
            }
        }
        settings_file = workdir / "settings.yaml"
        settings_file.write_text(yaml.safe_dump(settings))
        agent_objects = gpunode(server, "render", "agent", "--mode", "apply", "--settings", str(settings_file))
        assert agent_objects.returncode == 0, agent_objects.stderr
        configmap = [d for d in yaml.safe_load_all(agent_objects.stdout) if d["kind"] == "ConfigMap"]
        applied = server.kubectl("apply", "-f", "-", stdin=rendered.stdout + "---\n" + yaml.safe_dump(configmap[0]))
        assert applied.returncode == 0, applied.stderr
        yield server
        server.wait_hooks_idle()
        assert not server.hook_errors, "\n".join(server.hook_errors)


@pytest.fixture(scope="module")
def nodes(
    api: KubeApiStandIn, hosts: list[DebianHost], workdir: Path, cache_dir: Path
) -> Iterator[dict[str, SimulatedNode]]:
    lib_dir = build_fake_nvml(cache_dir)
    sims = {
        h.name: SimulatedNode(
            api, h, workdir / f"n{i}", lib_dir, gpus_for(BUS_IDS), kubelet_dir=h.root / DEVICE_PLUGINS.lstrip("/")
        )
        for i, h in enumerate(hosts, 1)
    }
    try:
        yield sims
    finally:
        for sim in sims.values():
            sim.close()


def gpunode(api: KubeApiStandIn, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**api.kubectl_env(), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "gpunode.bootstrap.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )


class AgentProcess:
    """`gpunode agent` for one host, in the background; its JSON ticks and log lines kept."""

    def __init__(self, api: KubeApiStandIn, host: DebianHost, *args: str) -> None:
        self.host = host
        argv = [
            sys.executable,
            "-m",
            "gpunode.bootstrap.cli.main",
            "agent",
            "--node-name",
            host.name,
            "--host-pid",
            str(host.init_pid),
            "--kubeconfig",
            str(api.kubeconfig_path),
            "--interval",
            str(INTERVAL),
            *args,
        ]
        env = {**api.kubectl_env(), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.ticks: list[dict[str, Any]] = []
        self.log: list[str] = []
        self._threads = [
            threading.Thread(target=self._read, args=(self.proc.stdout, True), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, False), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _read(self, stream: Any, is_stdout: bool) -> None:
        for line in stream:
            if is_stdout:
                continue
            self.log.append(line.rstrip("\n"))
            found = re.search(r" agent_tick (.*)$", line)
            if found:
                # `key=value key2="quoted value"`, as gpunode.bootstrap.log writes it.
                fields = dict(part.split("=", 1) for part in shlex.split(found.group(1)))
                self.ticks.append(fields)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=120)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        for thread in self._threads:
            thread.join(timeout=10)
        print(f"--- agent {self.host.name} log ---\n" + "\n".join(self.log[-60:]))

    def __enter__(self) -> AgentProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def condition(api: KubeApiStandIn, node: str) -> dict[str, Any] | None:
    obj = api.get("Node", node)
    for cond in (obj or {}).get("status", {}).get("conditions") or []:
        if cond.get("type") == "GPUNodeReady":
            return dict(cond)
    return None


def condition_is(api: KubeApiStandIn, node: str, status: str, reason: str | None = None) -> dict[str, Any] | None:
    cond = condition(api, node)
    if cond and cond["status"] == status and (reason is None or cond["reason"] == reason):
        return cond
    return None


def gpu_answers_once_converged(agent: AgentProcess, lib_dir: Path) -> None:
    """The machine has no GPU: once the agent has installed the driver, the driver's library
    file becomes the fake NVML (behind Debian's own symlink chain), as doctor's e2e does."""
    eventually(lambda: any(t["slot"] for t in agent.ticks), timeout=600, what=f"{agent.host.name} converged")
    agent.host.put_file(LIBRARY, (lib_dir / "libnvidia-ml.so.1").read_bytes())


def node_events(api: KubeApiStandIn, node: str) -> list[dict[str, Any]]:
    return [e for e in api.list("Event", namespace=NS) if e["involvedObject"].get("name") == node]


# --------------------------------------------------------------------------------------


def test_fresh_node_converged_then_broken_links_named(
    api: KubeApiStandIn, hosts: list[DebianHost], nodes: dict[str, SimulatedNode], cache_dir: Path
) -> None:
    host = hosts[0]
    with AgentProcess(api, host, "--mode", "apply") as agent:
        gpu_answers_once_converged(agent, build_fake_nvml(cache_dir))
        ready = eventually(lambda: condition_is(api, host.name, "True"), timeout=300, what="GPUNodeReady=True")
        assert ready["reason"] == "GPUsAdvertised"
        first = agent.ticks[0]
        assert first["mode"] == "apply" and not first["failed"], agent.log
        assert "driver" in first["disruptive"] and "containerd" in first["disruptive"], first
        # Cordoned for the disruption (the rollout's cordon), uncordoned once proven.
        node_patches = [
            r.body for r in api.request_log if r.method == "PATCH" and r.path == f"/api/v1/nodes/{host.name}"
        ]
        assert any(b'"unschedulable":true' in b for b in node_patches), node_patches
        assert any(b'"unschedulable":null' in b for b in node_patches), node_patches
        node_spec = api.get("Node", host.name)["spec"]  # type: ignore[index]
        assert not node_spec.get("unschedulable"), node_spec
        assert first["slot"] == "gpunode-disruption-0"
        assert api.allocatable(host.name) == "1"
        labels = api.get("Node", host.name)["metadata"]["labels"]  # type: ignore[index]
        assert labels["gpunode.io/driver-version"] == DRIVER
        # The slot was given back.
        lease = api.get("Lease", "gpunode-disruption-0", namespace=NS)
        assert lease is not None and not lease["spec"].get("holderIdentity")
    # From now on, only read: a check-mode agent must see what an apply agent would mend.
    with AgentProcess(api, host, "--mode", "check") as agent:
        eventually(lambda: len(agent.ticks) >= 1, timeout=120, what="a first check")
        assert agent.ticks[0]["status"] == "True" and agent.ticks[0]["mode"] == "check"
        # Break one link: containerd loses its nvidia runtime.
        host.exec(
            "rm -f /etc/containerd/conf.d/99-nvidia.toml && sed -i '/^imports = /d' /etc/containerd/config.toml && "
            + RESTART_CONTAINERD
        )
        broken_at = time.monotonic()
        broken = eventually(lambda: condition_is(api, host.name, "False"), timeout=120, what="GPUNodeReady=False")
        took = time.monotonic() - broken_at
        print(f"containerd runtime removed -> condition False ({broken['reason']}) in {took:.1f} s")
        assert broken["reason"] == "F17", broken
        assert "Fix:" in broken["message"]
        assert took < INTERVAL + 60  # one interval plus one tick's work on a busy 2-core machine
        eventually(
            lambda: [e for e in node_events(api, host.name) if e["type"] == "Warning" and "F17" in e["message"]],
            timeout=30,
            what="a Warning event naming F17 on the Node",
        )
    # Put the runtime back (an apply-mode tick), then stop the plugin: its DaemonSet goes away.
    with AgentProcess(api, host, "--mode", "apply"):
        eventually(lambda: condition_is(api, host.name, "True"), timeout=300, what="GPUNodeReady=True again")
    daemonset = next(d["metadata"]["name"] for d in api.list("DaemonSet", namespace=NS))
    manifest = json.dumps(api.get("DaemonSet", daemonset, namespace=NS))
    api.kubectl("delete", "daemonset", "-n", NS, daemonset, check=True)
    try:
        with AgentProcess(api, host, "--mode", "check"):
            gone = eventually(lambda: condition_is(api, host.name, "False"), timeout=120, what="False, plugin gone")
            print(f"plugin DaemonSet deleted -> {gone['reason']}: {gone['message']}")
            assert gone["reason"] in ("F8", "DP-NONE"), gone
    finally:
        restored = json.loads(manifest)
        for key in ("resourceVersion", "uid", "creationTimestamp", "managedFields", "generation"):
            restored["metadata"].pop(key, None)
        restored.pop("status", None)
        api.kubectl("apply", "-f", "-", stdin=json.dumps(restored), check=True)


def _disruptions(agent: AgentProcess) -> list[tuple[float, float]]:
    starts = [float(m.group(1)) for line in agent.log if (m := re.search(r"disruption_started .*at=([\d.]+)", line))]
    ends = [float(m.group(1)) for line in agent.log if (m := re.search(r"disruption_ended .*at=([\d.]+)", line))]
    assert len(starts) == len(ends), agent.log
    return list(zip(starts, ends))


def test_two_agents_with_max_unavailable_one_never_disrupt_both_at_once(
    api: KubeApiStandIn, hosts: list[DebianHost], nodes: dict[str, SimulatedNode], cache_dir: Path
) -> None:
    pair = hosts[1:]
    agents = [AgentProcess(api, h, "--mode", "apply", "--max-unavailable", "1", "--lease-duration", "20") for h in pair]
    lib_dir = build_fake_nvml(cache_dir)
    # Each GPU answers when its own agent has converged its node: whichever wins the slot
    # first (the other waits for it, and the winner keeps the slot until it is proven).
    answering = [threading.Thread(target=gpu_answers_once_converged, args=(a, lib_dir), daemon=True) for a in agents]
    try:
        for thread in answering:
            thread.start()
        for h in pair:
            eventually(lambda h=h: condition_is(api, h.name, "True"), timeout=600, what=f"{h.name} True")
    finally:
        for agent in agents:
            agent.stop()
    spans = {agent.host.name: _disruptions(agent) for agent in agents}
    print("disruptions:", spans)
    (a,), (b,) = spans.values()  # each node was disrupted exactly once
    assert a[1] <= b[0] or b[1] <= a[0], f"both nodes disrupted at once: {spans}"
    waited = [t for agent in agents for t in agent.ticks if t["waited_for"]]
    assert waited, "no agent ever met a full budget: the test did not race"
    assert waited[0]["reason"] == "WaitingForDisruptionBudget"
    waiting_events = [e for h in pair for e in node_events(api, h.name) if "WaitingForDisruptionBudget" in e["message"]]
    assert waiting_events
