"""`gpunode bootstrap` and `gpunode verify` end to end: two real Debian hosts over real SSH,
the real kubectl against the Kubernetes API stand-in, the real bundled plugin process
started from the applied DaemonSet, registering over real gRPC with a kubelet stand-in per
node that publishes Allocatable (see cluster_harness.py for who plays what).

The tests share two hosts and one cluster and run in file order, as one fleet's life:
first bootstrap (one node's taint untolerated, F15), the toleration, a no-change run,
verify and its workload, each failure verdict (absent, zero, fewer, rollout timeout, a
module/library mismatch), runtime mode, a driver upgrade across a mixed fleet, kubectl on
a control host over SSH. A test that changes the fleet puts it back before it ends.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from polling import eventually
from standins.debian_host import DebianHost, start_debian_hosts, stop_all
from standins.fake_nvml import build_fake_nvml
from standins.kube_api import KubeApiStandIn, debian_kubectl, kubectl_binary
from standins.toolkit_packages import DEFAULT_VERSION, build_toolkit_packages

from e2e.bootstrap_harness import DRIVER, NEWER_DRIVER, RESTART_CONTAINERD, Run
from e2e.cluster_harness import SimulatedNode, gpus_for, json_out
from e2e.host_gpus import nvidia_gpus, set_pci_functions

LIBRARY = f"/usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.{DRIVER}"
NEWER_LIBRARY = f"/usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.{NEWER_DRIVER}"
BUS_IDS = [f.bus_id for f in nvidia_gpus(2) if f.pci_class == 0x030200]
NS = "kube-system"
ML_TAINT = "dedicated=ml:NoSchedule"
VERSION_LABEL = "gpunode.io/driver-version"
PLUGIN_LABEL = "gpunode.io/device-plugin"
OK = "Allocatable nvidia.com/gpu = 2: OK"


# --------------------------------------------------------------------------------------
# The fleet: two GPU hosts, a cluster, and each host's kubelet side


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    # Short: the plugin's unix sockets live under it (107 bytes at most).
    path = Path(tempfile.mkdtemp(prefix="gpc-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def toolkit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("toolkit")
    build_toolkit_packages(out, version=DEFAULT_VERSION)
    return out


@pytest.fixture(scope="module")
def hosts(cache_dir: Path) -> Iterator[list[DebianHost]]:
    started = start_debian_hosts(cache_dir, 2, name_prefix="gpn")
    try:
        for host in started:
            set_pci_functions(host, nvidia_gpus(2))
            host.set_loaded_nvidia_module(DRIVER)
            host.start_containerd()
        yield started
    finally:
        stop_all(started)


@pytest.fixture(scope="module")
def api(workdir: Path, cache_dir: Path, hosts: list[DebianHost]) -> Iterator[KubeApiStandIn]:
    with KubeApiStandIn(workdir=workdir / "api", kubectl=kubectl_binary(cache_dir)) as server:
        # gpn-1 carries the usual GPU taint (gpunode tolerates it); gpn-2 a site's own one.
        server.add_node(hosts[0].name, taints=["nvidia.com/gpu=present:NoSchedule"])
        server.add_node(hosts[1].name, taints=[ML_TAINT])
        yield server
        server.wait_hooks_idle()
        assert not server.hook_errors, "\n".join(server.hook_errors)


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


def inventory(workdir: Path, hosts: list[DebianHost]) -> Path:
    path = workdir / f"inventory-{'-'.join(h.name for h in hosts)}.py"
    entries = [(h.name, h.pyinfra_host_data) for h in hosts]
    path.write_text(f"gpu_nodes = {entries!r}\n")
    return path


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


def bootstrap(
    api: KubeApiStandIn,
    workdir: Path,
    hosts: list[DebianHost],
    toolkit_dir: Path,
    *extra: str,
    driver: str = DRIVER,
    output: str = "json",
    tolerate: bool = True,
) -> Run:
    args = [
        "bootstrap",
        "-i",
        str(inventory(workdir, hosts)),
        "--yes",
        "--output",
        output,
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
        "60",
        "--verify-timeout",
        "30",
    ]
    if tolerate:
        args += ["--toleration", ML_TAINT]
    result = gpunode(api, *args, *extra)
    print(
        f"$ gpunode bootstrap {' '.join(h.name for h in hosts)} {' '.join(extra)} -> exit {result.returncode}\n"
        f"{result.stdout if output == 'text' else ''}"
    )
    summary: dict[str, Any] = {}
    if output == "json":
        summary = json_out(result)
        for host in summary["hosts"]:
            for entry in host["steps"]:
                if entry["name"] in ("nvml-library", "runtimeclass", "node-label", "device-plugin", "verify"):
                    print(f"  {host['host']} {entry['name']} {entry['status']}: {entry['detail']}")
    return Run(result, summary)


def host_report(run: Run, name: str) -> dict[str, Any]:
    return next(h for h in run.summary["hosts"] if h["host"] == name)


def step(run: Run, host: str, name: str) -> dict[str, Any]:
    report = host_report(run, host)
    found = [s for s in report["steps"] if s["name"] == name]
    assert found, f"{host} has no step {name}: {run.explain()}"
    return found[0]  # type: ignore[no-any-return]


def statuses(run: Run, host: str) -> dict[str, str]:
    return {s["name"]: s["status"] for s in host_report(run, host)["steps"]}


def verify(api: KubeApiStandIn, *args: str) -> subprocess.CompletedProcess[str]:
    result = gpunode(api, "verify", "--kubeconfig", str(api.kubeconfig_path), *args, timeout=300)
    print(f"$ gpunode verify {' '.join(args)}  -> exit {result.returncode}\n{result.stdout}{result.stderr}")
    return result


def daemonsets(api: KubeApiStandIn) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in api.list("DaemonSet", namespace=NS)}


def node_labels(api: KubeApiStandIn, name: str) -> dict[str, str]:
    node = api.get("Node", name)
    assert node is not None
    return dict(node["metadata"].get("labels") or {})


def restart_plugin(api: KubeApiStandIn, sim: SimulatedNode) -> None:
    """Delete the node's plugin pod; its DaemonSet starts a fresh one."""
    for pod in sim.plugin_pods():
        api.kubectl("delete", "pod", "-n", NS, pod["metadata"]["name"], "--wait=false", check=True)
    api.wait_hooks_idle()


# --------------------------------------------------------------------------------------
# First bootstrap of the fleet, the toleration, and a second run


@pytest.fixture(scope="module")
def first(
    api: KubeApiStandIn, nodes: dict[str, SimulatedNode], hosts: list[DebianHost], workdir: Path, toolkit_dir: Path
) -> Run:
    # Without --toleration: gpn-2's own taint is not tolerated.
    return bootstrap(api, workdir, hosts, toolkit_dir, tolerate=False)


def test_first_bootstrap_ends_with_allocatable_ok(
    first: Run, api: KubeApiStandIn, hosts: list[DebianHost], nodes: dict[str, SimulatedNode]
) -> None:
    one = hosts[0].name
    assert statuses(first, one) == {
        "preflight": "unchanged",
        "container-runtime": "unchanged",
        "driver": "changed",
        "nouveau": "skipped",
        "toolkit": "changed",
        "containerd": "changed",
        "nvml-library": "unchanged",
        "plugin-service": "skipped",
        "state": "changed",
        "runtimeclass": "changed",
        "node-label": "changed",
        "device-plugin": "changed",
        "verify": "unchanged",
    }, first.explain()
    assert step(first, one, "verify")["detail"] == OK
    assert api.allocatable(one) == "2"
    # Node label and DaemonSet: one per driver version (and host layout), gpunode's own.
    labels = node_labels(api, one)
    assert labels[VERSION_LABEL] == DRIVER
    (ds,) = daemonsets(api).values()
    assert ds["metadata"]["name"] == labels[PLUGIN_LABEL]
    assert ds["metadata"]["name"].startswith("gpunode-device-plugin-535-261-03-")
    assert ds["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "gpunode"
    assert api.get("RuntimeClass", "nvidia")["handler"] == "nvidia"  # type: ignore[index]
    assert api.get("RuntimeClass", "nvidia")["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "gpunode"  # type: ignore[index]
    # Server-side apply, field manager gpunode, for both objects.
    applies = {
        (r.method, r.path)
        for r in api.requests
        if r.content_type == "application/apply-patch+yaml" and r.field_manager == "gpunode"
    }
    assert ("PATCH", f"/apis/apps/v1/namespaces/{NS}/daemonsets/{ds['metadata']['name']}") in applies
    assert ("PATCH", "/apis/node.k8s.io/v1/runtimeclasses/nvidia") in applies
    # The plugin pod mounted the library file the node really has (checked in the host).
    assert nodes[one].mounted_libraries and set(nodes[one].mounted_libraries) == {LIBRARY}
    assert nodes[one].kubelet.healthy_count("nvidia.com/gpu") == 2


def test_untolerated_taint_is_named_with_its_fix(first: Run, api: KubeApiStandIn, hosts: list[DebianHost]) -> None:
    two = hosts[1].name
    assert first.result.returncode == 1, first.explain()
    plugin = step(first, two, "device-plugin")
    assert plugin["status"] == "failed"
    assert ML_TAINT in plugin["detail"] and "F15" in plugin["detail"]
    assert f"--toleration {ML_TAINT}" in plugin["detail"]
    assert step(first, two, "verify")["status"] == "skipped"
    assert node_labels(api, two)[VERSION_LABEL] == DRIVER  # labelled: only the plugin cannot go there
    assert api.allocatable(two) is None


def test_toleration_takes_the_plugin_onto_the_tainted_node(
    first: Run, api: KubeApiStandIn, hosts: list[DebianHost], workdir: Path, toolkit_dir: Path
) -> None:
    run = bootstrap(api, workdir, [hosts[1]], toolkit_dir, output="text")
    assert run.result.returncode == 0, run.explain()
    assert run.result.stdout.rstrip().splitlines()[-1].split()[-5:] == OK.split(), run.result.stdout
    assert "update DaemonSet" in run.result.stdout  # the shared DaemonSet gained the toleration
    assert api.allocatable(hosts[1].name) == "2"
    # The rolling update replaced gpn-1's pod too; it came back.
    check = verify(api, hosts[0].name, hosts[1].name, "--timeout", "30")
    assert check.returncode == 0, check.stdout + check.stderr


def test_second_run_changes_nothing(
    api: KubeApiStandIn, hosts: list[DebianHost], workdir: Path, toolkit_dir: Path
) -> None:
    before = {
        name: (d["metadata"]["resourceVersion"], d["metadata"]["generation"]) for name, d in daemonsets(api).items()
    }
    nodes_before = {h.name: api.get("Node", h.name)["metadata"]["labels"] for h in hosts}  # type: ignore[index]
    run = bootstrap(api, workdir, hosts, toolkit_dir)
    assert run.result.returncode == 0, run.explain()
    for host in hosts:
        assert set(statuses(run, host.name).values()) <= {"unchanged", "skipped"}, run.explain()
        assert step(run, host.name, "verify")["detail"] == OK
    after = {
        name: (d["metadata"]["resourceVersion"], d["metadata"]["generation"]) for name, d in daemonsets(api).items()
    }
    assert after == before, "an unchanged DaemonSet was written"
    assert {h.name: api.get("Node", h.name)["metadata"]["labels"] for h in hosts} == nodes_before  # type: ignore[index]


# --------------------------------------------------------------------------------------
# gpunode verify


def test_verify_says_ok_in_text_and_json(api: KubeApiStandIn, hosts: list[DebianHost]) -> None:
    names = [h.name for h in hosts]
    text = verify(api, *names)
    assert text.returncode == 0, text.stdout + text.stderr
    assert text.stdout.splitlines() == [f"{n}: {OK}" for n in names]
    report = json_out(verify(api, *names, "--output", "json", "--timeout", "0"))
    assert report["ok"] is True and report["exit_code"] == 0
    for node in report["nodes"]:
        assert (node["verdict"], node["allocatable"], node["expected"]) == ("ok", 2, 2)
        assert node["expected_from"] == "recorded by gpunode bootstrap"
    wrong = verify(api, names[0], "--expect", "3", "--timeout", "0")
    assert wrong.returncode == 1 and "(expected 3): fewer GPUs" in wrong.stdout


def test_verify_workload_runs_nvidia_smi_on_a_gpu_and_cleans_up(
    api: KubeApiStandIn, hosts: list[DebianHost], nodes: dict[str, SimulatedNode]
) -> None:
    one = hosts[0].name
    result = verify(api, one, "--workload", "--workload-timeout", "60", "--output", "json")
    report = json_out(result)
    assert result.returncode == 0, result.stdout + result.stderr
    workload = report["nodes"][0]["workload"]
    assert workload["ok"] is True
    uuids = {gpu.resolved_uuid() for gpu in nodes[one].nvml.config.gpus}
    (line,) = workload["output"].strip().splitlines()
    assert line.startswith("GPU 0: NVIDIA A100 80GB PCIe (UUID: GPU-") and line[line.index("GPU-") : -1] in uuids
    api.wait_hooks_idle()
    assert api.list("Pod", namespace="default") == [], "the workload pod was not deleted"


def test_verify_workload_without_the_nvidia_runtime_names_it(api: KubeApiStandIn, hosts: list[DebianHost]) -> None:
    """The node advertises its GPUs, but containerd has lost its nvidia runtime (F17): the
    plugin is fine, a GPU pod is not. Only the workload check can tell."""
    host = hosts[0]
    dropin = "/etc/containerd/conf.d/99-nvidia.toml"
    host.exec(f"mv {dropin} /root/99-nvidia.toml.away")
    try:
        result = verify(api, host.name, "--workload", "--workload-timeout", "3")
    finally:
        host.exec(f"mv /root/99-nvidia.toml.away {dropin}")
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.startswith(f"{host.name}: {OK}\n")
    assert "workload FAILED: the pod did not finish within 3 s" in result.stdout
    assert 'no runtime for "nvidia" is configured' in result.stdout
    api.wait_hooks_idle()
    assert api.list("Pod", namespace="default") == [], "the workload pod was not deleted"


def test_verify_absent_no_such_node_and_no_cluster(api: KubeApiStandIn, hosts: list[DebianHost]) -> None:
    api.add_node("cpu-only")
    absent = verify(api, "cpu-only", "--expect", "1", "--timeout", "1")
    assert absent.returncode == 1, absent.stdout + absent.stderr
    assert "Allocatable nvidia.com/gpu absent (expected 1): no device plugin has registered" in absent.stdout
    api.delete("Node", "cpu-only")
    missing = verify(api, "no-such-node", hosts[0].name, "--output", "json", "--timeout", "0")
    assert missing.returncode == 2
    verdicts = {n["node"]: n["verdict"] for n in json_out(missing)["nodes"]}
    assert verdicts == {"no-such-node": "no-node", hosts[0].name: "ok"}
    with api.fault("unreachable"):
        down = verify(api, hosts[0].name, "--timeout", "0")
    assert down.returncode == 2 and "could not reach the cluster" in down.stderr and "Fix:" in down.stderr


def test_verify_fewer_names_the_unhealthy_gpu(
    api: KubeApiStandIn, hosts: list[DebianHost], nodes: dict[str, SimulatedNode]
) -> None:
    one, sim = hosts[0].name, nodes[hosts[0].name]
    sim.nvml.inject_xid(1, 79)  # GPU 1 fell off the bus
    eventually(lambda: api.allocatable(one) == "1", what="allocatable 1")
    report = json_out(verify(api, one, "--output", "json", "--timeout", "2"))
    node = report["nodes"][0]
    assert (report["exit_code"], node["verdict"], node["allocatable"], node["capacity"]) == (1, "fewer", 1, 2)
    (unhealthy,) = node["unhealthy"]
    assert sim.nvml.config.gpus[1].resolved_uuid() in unhealthy and "0000:5b:00.0" in unhealthy
    assert "XID 79" in unhealthy
    restart_plugin(api, sim)
    eventually(lambda: api.allocatable(one) == "2", what="a healthy restart")


def test_verify_fewer_names_the_missing_gpu(
    api: KubeApiStandIn, hosts: list[DebianHost], nodes: dict[str, SimulatedNode]
) -> None:
    one, sim = hosts[0].name, nodes[hosts[0].name]
    sim.set_gpus(gpus_for(BUS_IDS[:1]))  # NVML sees one GPU of the two on the bus
    try:
        restart_plugin(api, sim)
        eventually(lambda: api.allocatable(one) == "1", what="allocatable 1")
        result = verify(api, one, "--timeout", "2")
        assert result.returncode == 1
        assert "Allocatable nvidia.com/gpu = 1 (expected 2): fewer GPUs than the node has" in result.stdout
        assert "missing (the plugin does not see them): 0000:5b:00.0" in result.stdout
    finally:
        sim.set_gpus(gpus_for(BUS_IDS))
        restart_plugin(api, sim)
    eventually(lambda: api.allocatable(one) == "2", what="both GPUs back")


def test_plugin_gone_is_zero_and_names_the_missing_daemonset(
    api: KubeApiStandIn, hosts: list[DebianHost], workdir: Path, toolkit_dir: Path
) -> None:
    one = hosts[0].name
    (name,) = daemonsets(api)
    api.kubectl("delete", "daemonset", "-n", NS, name, check=True)  # as a GitOps prune would (F8)
    eventually(lambda: api.allocatable(one) == "0", what="allocatable 0")
    result = verify(api, one, "--timeout", "1")
    assert result.returncode == 1
    assert "Allocatable nvidia.com/gpu = 0 (expected 2): the device plugin is gone" in result.stdout
    assert f"DaemonSet {NS}/{name} does not exist any more (F8)" in result.stdout
    again = bootstrap(api, workdir, hosts, toolkit_dir)
    assert again.result.returncode == 0, again.explain()
    assert step(again, one, "device-plugin")["detail"].startswith(f"create DaemonSet {NS}/{name}")
    assert all(step(again, h.name, "verify")["detail"] == OK for h in hosts)


def test_rollout_timeout_names_the_pod_and_its_event(
    api: KubeApiStandIn, hosts: list[DebianHost], workdir: Path, toolkit_dir: Path
) -> None:
    one = hosts[0].name
    run = bootstrap(
        api, workdir, [hosts[0]], toolkit_dir, "--image", "registry.example/gpunode:missing", "--rollout-timeout", "4"
    )
    assert run.result.returncode == 1, run.explain()
    detail = step(run, one, "device-plugin")["detail"]
    assert "did not finish within 4 s" in detail and f"pod {NS}/" in detail
    assert "ErrImagePull" in detail and "registry.example/gpunode:missing" in detail
    assert "Fix: check the plugin image (--image)" in detail
    assert step(run, one, "verify")["status"] == "skipped"
    back = bootstrap(api, workdir, hosts, toolkit_dir)
    assert back.result.returncode == 0, back.explain()


# --------------------------------------------------------------------------------------
# Plugin choices


def test_dry_run_shows_the_switch_to_nvidias_plugin_and_changes_nothing(
    api: KubeApiStandIn, hosts: list[DebianHost], workdir: Path, toolkit_dir: Path
) -> None:
    before = (sorted(daemonsets(api)), {h.name: node_labels(api, h.name) for h in hosts})
    run = bootstrap(api, workdir, hosts, toolkit_dir, "--plugin", "nvidia", "--dry-run")
    assert run.result.returncode == 0, run.explain()
    detail = step(run, hosts[0].name, "device-plugin")["detail"]
    assert detail.startswith(f"create DaemonSet {NS}/gpunode-nvidia-device-plugin-535-261-03-")
    assert "remove DaemonSet" in detail and before[0][0] in detail
    assert step(run, hosts[0].name, "verify")["status"] == "skipped"
    assert (sorted(daemonsets(api)), {h.name: node_labels(api, h.name) for h in hosts}) == before


def test_a_dry_run_without_the_cluster_still_shows_the_node_plan(
    api: KubeApiStandIn, hosts: list[DebianHost], workdir: Path, toolkit_dir: Path
) -> None:
    with api.fault("unreachable"):
        run = bootstrap(api, workdir, hosts, toolkit_dir, "--dry-run")
    # The node plan is shown, the cluster half could not be checked: exit 2, as the contract says.
    assert run.result.returncode == 2, run.explain()
    for host in hosts:
        report = host_report(run, host.name)
        statuses = {entry["name"]: entry["status"] for entry in report["steps"]}
        cluster = ("runtimeclass", "node-label", "device-plugin", "verify")
        node_steps = {name: status for name, status in statuses.items() if name not in cluster}
        assert {"preflight", "driver", "containerd", "state"} <= set(node_steps), run.explain()
        assert "failed" not in node_steps.values(), run.explain()
        runtimeclass = step(run, host.name, "runtimeclass")
        assert runtimeclass["status"] == "failed"
        assert "not planned: could not reach the cluster" in runtimeclass["detail"]
        assert "Fix:" in runtimeclass["detail"]
        assert [statuses[n] for n in ("node-label", "device-plugin", "verify")] == ["skipped"] * 3
        assert step(run, host.name, "verify")["detail"] == "not planned: see runtimeclass"
    # A real run still refuses before touching any host.
    with api.fault("unreachable"):
        refused = gpunode(
            api, "bootstrap", "-i", str(inventory(workdir, hosts)), "--yes", "--kubeconfig", str(api.kubeconfig_path)
        )
    assert refused.returncode == 2 and "Nothing was changed on the hosts" in refused.stderr


def test_runtime_mode_moves_the_fleet_to_a_runtimeclass_daemonset_and_back(
    api: KubeApiStandIn, hosts: list[DebianHost], workdir: Path, toolkit_dir: Path
) -> None:
    (mount_ds,) = daemonsets(api)
    run = bootstrap(api, workdir, hosts, toolkit_dir, "--mode", "runtime")
    assert run.result.returncode == 0, run.explain()
    (runtime_ds,) = daemonsets(api)
    assert runtime_ds != mount_ds
    spec = daemonsets(api)[runtime_ds]["spec"]["template"]["spec"]
    assert spec["runtimeClassName"] == "nvidia" and "volumes" in spec
    assert not any(v["name"] == "nvml-library" for v in spec["volumes"])
    # Removed when the last node left it: the rollout moves the nodes one at a time.
    removed = [
        h.name for h in hosts if f"removed DaemonSet {NS}/{mount_ds}" in step(run, h.name, "device-plugin")["detail"]
    ]
    assert removed == [hosts[1].name], run.explain()
    assert all(step(run, h.name, "verify")["detail"] == OK for h in hosts)
    back = bootstrap(api, workdir, hosts, toolkit_dir)
    assert back.result.returncode == 0, back.explain()
    assert list(daemonsets(api)) == [mount_ds]


# --------------------------------------------------------------------------------------
# A driver upgrade: refused until the reboot, then the node moves; a mixed fleet; cleanup


def test_driver_upgrade_across_a_mixed_fleet(
    api: KubeApiStandIn, hosts: list[DebianHost], nodes: dict[str, SimulatedNode], workdir: Path, toolkit_dir: Path
) -> None:
    one, two = hosts[0].name, hosts[1].name
    (old_ds,) = daemonsets(api)

    # The new driver is installed but the old module is still loaded: reboot required (F14).
    refused = bootstrap(api, workdir, [hosts[1]], toolkit_dir, driver=NEWER_DRIVER)
    assert refused.result.returncode == 1, refused.explain()
    library = step(refused, two, "nvml-library")
    assert library["status"] == "failed" and "F14" in library["detail"] and "reboot" in library["detail"]
    assert host_report(refused, two)["reboot_required"] is True
    assert {s: step(refused, two, s)["status"] for s in ("node-label", "device-plugin", "verify")} == {
        "node-label": "skipped",
        "device-plugin": "skipped",
        "verify": "skipped",
    }
    assert node_labels(api, two)[VERSION_LABEL] == DRIVER, "relabelled before the reboot"

    # "Reboot": the new module is loaded. The node moves to a new DaemonSet; gpn-1 keeps the old one.
    hosts[1].set_loaded_nvidia_module(NEWER_DRIVER)
    moved = bootstrap(api, workdir, [hosts[1]], toolkit_dir, driver=NEWER_DRIVER)
    assert moved.result.returncode == 0, moved.explain()
    assert f"{VERSION_LABEL}={NEWER_DRIVER} (was {DRIVER})" in step(moved, two, "node-label")["detail"]
    new_ds = node_labels(api, two)[PLUGIN_LABEL]
    assert new_ds.startswith("gpunode-device-plugin-535-309-01-")
    assert step(moved, two, "device-plugin")["detail"].startswith(f"create DaemonSet {NS}/{new_ds}")
    assert sorted(daemonsets(api)) == sorted([old_ds, new_ds]), "mixed fleet: both drivers served"
    assert NEWER_LIBRARY in nodes[two].mounted_libraries
    mixed = verify(api, one, two)
    assert mixed.returncode == 0, mixed.stdout + mixed.stderr

    # gpn-1 follows (rebooted onto the new driver first): the old DaemonSet goes.
    hosts[0].set_loaded_nvidia_module(NEWER_DRIVER)
    last = bootstrap(api, workdir, [hosts[0]], toolkit_dir, driver=NEWER_DRIVER)
    assert last.result.returncode == 0, last.explain()
    detail = step(last, one, "device-plugin")["detail"]
    assert f"removed DaemonSet {NS}/{old_ds} (driver {DRIVER}): no node uses it any more" in detail
    assert list(daemonsets(api)) == [new_ds]
    assert step(last, one, "verify")["detail"] == OK


def test_plugin_pod_of_a_mismatched_driver_is_diagnosed(
    api: KubeApiStandIn, hosts: list[DebianHost], nodes: dict[str, SimulatedNode]
) -> None:
    """A node whose module changed under a running fleet (not rebooted through bootstrap):
    the plugin cannot start NVML and verify says why (F14)."""
    one, sim = hosts[0].name, nodes[hosts[0].name]
    hosts[0].set_loaded_nvidia_module(DRIVER)  # the library is NEWER_DRIVER's
    try:
        restart_plugin(api, sim)
        eventually(lambda: api.allocatable(one) == "0", what="allocatable 0")
        result = verify(api, one, "--timeout", "3")
        assert result.returncode == 1, result.stdout
        assert "nvml_init_failed reason=driver_library_mismatch" in result.stdout and "(F14)" in result.stdout
        assert "fix: reboot the node onto the new driver" in result.stdout
    finally:
        hosts[0].set_loaded_nvidia_module(NEWER_DRIVER)
        restart_plugin(api, sim)
    eventually(lambda: api.allocatable(one) == "2", what="the plugin back", timeout=60)


# --------------------------------------------------------------------------------------
# kubectl on a control host over SSH (here: the node itself, as in a homelab)


def test_kubectl_on_the_node_over_ssh(
    api: KubeApiStandIn, hosts: list[DebianHost], workdir: Path, toolkit_dir: Path, cache_dir: Path
) -> None:
    control = hosts[0]
    # A plain kubectl binary (the machine's /usr/bin/kubectl is a dispatcher's), under a name
    # this machine does not have: only kubectl inside the host can run.
    kubectl_in_host = "/usr/local/bin/kubectl-on-gpn"
    assert shutil.which(kubectl_in_host) is None
    shutil.copy2(debian_kubectl(cache_dir), control.root / kubectl_in_host.lstrip("/"))
    control.put_file("/root/.kube/gpn-config", api.kubeconfig_path.read_text(), mode=0o600)
    assert not Path("/root/.kube/gpn-config").exists()
    kube_host = [
        "--kube-host",
        f"root@{control.address}:{control.ssh_port}",
        "--ssh-key",
        str(control.ssh_key),
        "--known-hosts",
        str(control.known_hosts_path),
        "--kubectl",
        kubectl_in_host,
        "--kubeconfig",
        "/root/.kube/gpn-config",
    ]
    api.clear_requests()
    args = [
        "bootstrap",
        "-i",
        str(inventory(workdir, [control])),
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
        NEWER_DRIVER,
        "--toleration",
        ML_TAINT,
        *kube_host,
    ]
    result = gpunode(api, *args)
    run = Run(result, json_out(result))
    assert result.returncode == 0, run.explain()
    assert step(run, control.name, "verify")["detail"] == OK
    assert set(statuses(run, control.name).values()) <= {"unchanged", "skipped"}, run.explain()
    assert any(r.method == "PATCH" and r.field_manager == "gpunode" for r in api.requests)
    check = gpunode(api, "verify", control.name, *kube_host)
    assert check.returncode == 0 and check.stdout.strip() == f"{control.name}: {OK}", check.stdout + check.stderr
