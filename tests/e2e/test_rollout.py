"""A driver upgrade rolled across a fleet of four real Debian hosts, one node at a time:
cordon, drain through the Eviction API (the API stand-in answers 429 when a
PodDisruptionBudget would break), upgrade, reboot (the host really goes away and boots
again from its disk: see DebianHost.allow_reboots), prove, uncordon.

The tests share the fleet and run in file order, as one upgrade's life:
the fleet is set up, a dry run shows the batches and the budget that would block, the
upgrade stops at the node whose budget blocks (cordoned, the others untouched), a re-run
resumes it and stops at a node whose plugin does not come back, a last run finishes, and
an operator's own cordon is never lifted.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from polling import eventually
from standins.debian_host import LOAD_MODULE_SCRIPT, DebianHost, start_debian_hosts, stop_all
from standins.fake_nvml import build_fake_nvml
from standins.kube_api import KubeApiStandIn, kubectl_binary
from standins.toolkit_packages import DEFAULT_VERSION, build_toolkit_packages

from e2e.bootstrap_harness import DRIVER, NEWER_DRIVER, RESTART_CONTAINERD, Run
from e2e.cluster_harness import SimulatedNode, gpus_for, json_out
from e2e.host_gpus import nvidia_gpus, pci_script, set_pci_functions
from e2e.test_cluster import gpunode, inventory
from gpunode.bootstrap.core.kube.manifests import DEFAULT_VERIFY_IMAGE
from gpunode.bootstrap.core.kube.rollout_plan import CORDONED_BY_ANNOTATION

# Per host, when each reboot took it down and when it answered again.
DOWNTIME: dict[str, list[list[float]]] = {}
BUS_IDS = [f.bus_id for f in nvidia_gpus(2) if f.pci_class == 0x030200]
ML = "ml"
# What a boot does on these hosts: the kernel finds the GPUs and loads the installed driver's
# module, containerd starts.
RC_LOCAL = """#!/bin/sh
lib=$(readlink -f /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1)
version=${lib##*/libnvidia-ml.so.}
case "$version" in [0-9]*) sh /usr/local/sbin/load-nvidia-module "$version" ;; esac
sh /usr/local/sbin/show-gpus
mkdir -p /var/log
setsid containerd </dev/null >>/var/log/containerd.log 2>&1 &
"""


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="gpr-", dir="/tmp"))  # short: unix sockets live under it
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def toolkit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("toolkit")
    build_toolkit_packages(out, version=DEFAULT_VERSION)
    return out


@pytest.fixture(scope="module")
def api(workdir: Path, cache_dir: Path) -> Iterator[KubeApiStandIn]:
    with KubeApiStandIn(workdir=workdir / "api", kubectl=kubectl_binary(cache_dir)) as server:
        server.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ML}})
        yield server
        server.wait_hooks_idle()
        assert not server.hook_errors, "\n".join(server.hook_errors)


@pytest.fixture(scope="module")
def hosts(cache_dir: Path, api: KubeApiStandIn) -> Iterator[list[DebianHost]]:
    started = start_debian_hosts(cache_dir, 4, name_prefix="gpr")

    def kubelet_down(host: DebianHost) -> None:
        DOWNTIME.setdefault(host.name, []).append([time.monotonic(), 0.0])
        api.set_node_status(host.name, conditions={"Ready": "Unknown"})

    def kubelet_up(host: DebianHost) -> None:
        DOWNTIME[host.name][-1][1] = time.monotonic()
        api.set_node_status(host.name, conditions={"Ready": "True"})

    try:
        for host in started:
            api.add_node(host.name)
            set_pci_functions(host, nvidia_gpus(2))
            host.put_file("/usr/local/sbin/show-gpus", pci_script(nvidia_gpus(2)), mode=0o755)
            host.put_file("/usr/local/sbin/load-nvidia-module", LOAD_MODULE_SCRIPT, mode=0o755)
            host.put_file("/etc/rc.local", RC_LOCAL, mode=0o755)
            host.set_loaded_nvidia_module(DRIVER)
            host.start_containerd()
            host.allow_reboots(on_down=kubelet_down, on_up=kubelet_up)
        yield started
    finally:
        stop_all(started)


@pytest.fixture(scope="module")
def nodes(
    api: KubeApiStandIn, hosts: list[DebianHost], workdir: Path, cache_dir: Path
) -> Iterator[dict[str, SimulatedNode]]:
    lib_dir = build_fake_nvml(cache_dir)
    sims = {
        h.name: SimulatedNode(api, h, workdir / f"n{i}", lib_dir, gpus_for(BUS_IDS)) for i, h in enumerate(hosts, 1)
    }
    try:
        yield sims
    finally:
        for sim in sims.values():
            sim.close()


def rollout(
    api: KubeApiStandIn, workdir: Path, hosts: list[DebianHost], toolkit_dir: Path, *extra: str, driver: str
) -> Run:
    args = [
        "bootstrap",
        "-i",
        str(inventory(workdir, hosts)),
        "--yes",
        "--output",
        "json",
        "--kernel-module",
        "none",
        "--containerd-restart-command",
        RESTART_CONTAINERD,
        "--toolkit-packages",
        str(toolkit_dir),
        "--driver-version",
        driver,
        "--kubeconfig",
        str(api.kubeconfig_path),
        "--rollout-timeout",
        "20",
        "--verify-timeout",
        "10",
        "--drain-timeout",
        "6",
        *extra,
    ]
    result = gpunode(api, *args, timeout=900)
    summary = json_out(result)
    print(f"$ gpunode {' '.join(extra)} -> exit {result.returncode}\n{result.stderr[-3000:]}")
    for node in summary.get("rollout", {}).get("nodes", []):
        print(
            f"  {node['node']} batch {node['batch']} {node['status']}: "
            + ", ".join(f"{p['name']} {p['status']} {p['seconds']}s" for p in node["phases"])
        )
    return Run(result, summary)


def rolled(run: Run) -> dict[str, dict[str, Any]]:
    return {n["node"]: n for n in run.summary["rollout"]["nodes"]}


def library_version(host: DebianHost) -> str:
    return host.exec("readlink -f /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1").stdout.strip().rsplit(".so.", 1)[1]


def cordon_of(api: KubeApiStandIn, node: str) -> str:
    """ "gpunode", "other" or "" (schedulable)."""
    obj = api.get("Node", node)
    assert obj is not None
    if not obj["spec"].get("unschedulable"):
        return ""
    return "gpunode" if CORDONED_BY_ANNOTATION in (obj["metadata"].get("annotations") or {}) else "other"


def one_at_a_time(run: Run) -> None:
    """Every node's cordon-to-uncordon span ends before the next node's begins."""
    spans = sorted(
        (n["phases"][0]["started"], n["phases"][-1]["started"] + n["phases"][-1]["seconds"], n["node"])
        for n in run.summary["rollout"]["nodes"]
        if n["batch"] and n["phases"]
    )
    for (_, end, first), (begin, _, second) in zip(spans, spans[1:]):
        assert end <= begin, f"{second} started before {first} was finished: {spans}"


# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fleet(
    api: KubeApiStandIn, hosts: list[DebianHost], nodes: dict[str, SimulatedNode], workdir: Path, toolkit_dir: Path
) -> list[DebianHost]:
    """The fleet on the old driver, set up in one batch of four."""
    run = rollout(api, workdir, hosts, toolkit_dir, "--max-unavailable", "100%", driver=DRIVER)
    assert run.result.returncode == 0, run.explain()
    assert {n["batch"] for n in rolled(run).values()} == {1}
    assert all(cordon_of(api, h.name) == "" for h in hosts)
    # A database replica on gpr-2 whose budget allows no disruption, and an operator's
    # own cordon on gpr-4.
    api.create(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "db-0",
                "namespace": ML,
                "labels": {"app": "db"},
                "ownerReferences": [
                    {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "db", "controller": True}
                ],
            },
            "spec": {
                "nodeName": hosts[1].name,
                "containers": [{"name": "db", "image": DEFAULT_VERIFY_IMAGE, "command": ["sleep", "3600"]}],
            },
        }
    )
    api.create(
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": "db", "namespace": ML},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "db"}}},
        }
    )
    api.kubectl("cordon", hosts[3].name, check=True)
    return hosts


def test_dry_run_shows_batches_evictions_and_the_budget_that_would_block(
    api: KubeApiStandIn, fleet: list[DebianHost], workdir: Path, toolkit_dir: Path
) -> None:
    eventually(lambda: (api.get("PodDisruptionBudget", "db", ML) or {}).get("status", {}).get("currentHealthy") == 1)
    run = rollout(api, workdir, fleet, toolkit_dir, "--reboot", "--dry-run", driver=NEWER_DRIVER)
    assert run.result.returncode == 0, run.explain()
    nodes = rolled(run)
    assert [nodes[h.name]["batch"] for h in fleet] == [1, 2, 3, 4]
    assert "the driver packages change" in nodes["gpr-1"]["reasons"]
    assert nodes["gpr-2"]["would_evict"] == [f"{ML}/db-0"]
    assert nodes["gpr-2"]["blocked_by"] == [
        f"PodDisruptionBudget {ML}/db allows 0 disruption(s) (needs 1 healthy pods, has 1) and covers {ML}/db-0"
    ]
    assert [cordon_of(api, h.name) for h in fleet] == ["", "", "", "other"], "a dry run cordoned"


def test_a_budget_stops_the_upgrade_with_that_node_cordoned_and_the_rest_untouched(
    api: KubeApiStandIn, fleet: list[DebianHost], workdir: Path, toolkit_dir: Path
) -> None:
    run = rollout(api, workdir, fleet, toolkit_dir, "--reboot", driver=NEWER_DRIVER)
    assert run.result.returncode == 1, run.explain()
    nodes = rolled(run)
    stopped = run.summary["rollout"]["stopped"]
    assert "Rollout stopped at node gpr-2" in stopped and "drain failed" in stopped
    assert "violate the pod's disruption budget" in stopped and f"PodDisruptionBudget {ML}/db needs 1" in stopped
    assert "kubectl uncordon gpr-2" in stopped and "Not started: gpr-3, gpr-4" in stopped
    # gpr-1: upgraded, rebooted, proven, back in service.
    assert nodes["gpr-1"]["status"] == "done"
    assert [p["name"] for p in nodes["gpr-1"]["phases"]] == ["cordon", "drain", "steps", "ready", "uncordon"]
    assert (fleet[0].reboots, library_version(fleet[0]), cordon_of(api, "gpr-1")) == (1, NEWER_DRIVER, "")
    # gpr-2: cordoned by gpunode, drained no further, not upgraded.
    assert nodes["gpr-2"]["status"] == "failed" and nodes["gpr-2"]["cordoned"]
    assert (fleet[1].reboots, library_version(fleet[1]), cordon_of(api, "gpr-2")) == (0, DRIVER, "gpunode")
    assert [p["metadata"]["name"] for p in api.list("Pod", namespace=ML)] == ["db-0"]
    # gpr-3, gpr-4: untouched.
    assert [nodes[n]["status"] for n in ("gpr-3", "gpr-4")] == ["not started", "not started"]
    for host, cordon in ((fleet[2], ""), (fleet[3], "other")):
        assert (host.reboots, library_version(host), cordon_of(api, host.name)) == (0, DRIVER, cordon)
    one_at_a_time(run)


def test_a_rerun_resumes_the_cordoned_node_and_stops_where_the_plugin_does_not_come_back(
    api: KubeApiStandIn,
    fleet: list[DebianHost],
    nodes: dict[str, SimulatedNode],
    workdir: Path,
    toolkit_dir: Path,
) -> None:
    api.delete("PodDisruptionBudget", "db", ML)
    nodes["gpr-3"].set_gpus(())  # its next plugin finds no GPU: Allocatable stays 0
    run = rollout(api, workdir, fleet, toolkit_dir, "--reboot", driver=NEWER_DRIVER)
    assert run.result.returncode == 1, run.explain()
    rolled_nodes = rolled(run)
    assert (rolled_nodes["gpr-2"]["batch"], rolled_nodes["gpr-3"]["batch"], rolled_nodes["gpr-4"]["batch"]) == (1, 2, 3)
    assert rolled_nodes["gpr-1"]["batch"] == 0, "an upgraded node was disrupted again"
    assert rolled_nodes["gpr-2"]["status"] == "done"
    assert [p["metadata"]["name"] for p in api.list("Pod", namespace=ML)] == [], "db-0 was not evicted"
    assert (fleet[1].reboots, library_version(fleet[1]), cordon_of(api, "gpr-2")) == (1, NEWER_DRIVER, "")
    stopped = run.summary["rollout"]["stopped"]
    # Its plugin pod never registers (no GPU found), so it never becomes Ready.
    assert "Rollout stopped at node gpr-3" in stopped and "steps failed: device-plugin" in stopped
    assert rolled_nodes["gpr-3"]["status"] == "failed" and cordon_of(api, "gpr-3") == "gpunode"
    assert (fleet[3].reboots, library_version(fleet[3]), cordon_of(api, "gpr-4")) == (0, DRIVER, "other")
    one_at_a_time(run)


def test_the_last_run_finishes_and_leaves_someone_elses_cordon(
    api: KubeApiStandIn,
    fleet: list[DebianHost],
    nodes: dict[str, SimulatedNode],
    workdir: Path,
    toolkit_dir: Path,
) -> None:
    nodes["gpr-3"].set_gpus(gpus_for(BUS_IDS))
    for pod in nodes["gpr-3"].plugin_pods():  # the operator's fix: a plugin that sees the GPUs
        api.kubectl("delete", "pod", "-n", "kube-system", pod["metadata"]["name"], "--wait=false", check=True)
    run = rollout(api, workdir, fleet, toolkit_dir, "--reboot", driver=NEWER_DRIVER)
    assert run.result.returncode == 0, run.explain()
    rolled_nodes = rolled(run)
    assert (rolled_nodes["gpr-3"]["batch"], rolled_nodes["gpr-4"]["batch"]) == (1, 2)
    assert rolled_nodes["gpr-4"]["status"] == "done" and rolled_nodes["gpr-4"]["cordoned"]
    assert rolled_nodes["gpr-4"]["phases"][-1]["detail"].startswith("left cordoned")
    assert [cordon_of(api, h.name) for h in fleet] == ["", "", "", "other"]
    assert [library_version(h) for h in fleet] == [NEWER_DRIVER] * 4
    assert [h.reboots for h in fleet] == [1, 1, 1, 1]
    assert [h.reboot_errors for h in fleet] == [[], [], [], []]
    one_at_a_time(run)


def test_without_the_cluster_reboots_go_in_waves(
    api: KubeApiStandIn, fleet: list[DebianHost], workdir: Path, toolkit_dir: Path
) -> None:
    """--skip-cluster keeps the old behaviour (no cordon, no drain), and --max-parallel-reboots
    1 reboots one host at a time: each is back before the next goes down."""
    pair = fleet[:2]
    for host in pair:  # the old module still loaded under the new library: F14, reboot required
        host.set_loaded_nvidia_module(DRIVER)
    args = [
        "bootstrap", "-i", str(inventory(workdir, pair)), "--yes", "--output", "json", "--skip-cluster",
        "--kernel-module", "none", "--containerd-restart-command", RESTART_CONTAINERD,
        "--toolkit-packages", str(toolkit_dir), "--driver-version", NEWER_DRIVER,
        "--reboot", "--max-parallel-reboots", "1",
    ]  # fmt: skip
    result = gpunode(api, *args, timeout=900)
    summary = json_out(result)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rollout" not in summary
    assert [h.reboots for h in pair] == [2, 2]
    (first_down, first_up), (second_down, second_up) = sorted(DOWNTIME[h.name][-1] for h in pair)
    assert first_up <= second_down, f"two hosts were down at once: {DOWNTIME}"
    assert [cordon_of(api, h.name) for h in pair] == ["", ""]
