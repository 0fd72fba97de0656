"""`gpunode doctor HOST` on a real Debian 12 host behind real sshd, bootstrapped by gpunode,
joined to a cluster: the node's kubelet is the kubelet stand-in serving in the host's own
device-plugins directory, the cluster is the Kubernetes API stand-in, and the device plugin
pod is the real bundled plugin (a process on this machine, its hostPath mounts pointing
into the host), loading the host's libnvidia-ml file. That file is the fake NVML library
put in place of the driver's (same path, same symlink chain): no GPU here, the real ABI.

The healthy node is judged healthy, then broken one link at a time, the way nodes break
(nouveau loaded, driver upgraded without reboot, the library chain broken, containerd
without the runtime or with a broken config, the toolkit removed, the wrong library
mounted, the default runtime trusted, a kubelet restart the plugin never noticed), and
restored; each time doctor must name exactly that failure mode first.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomlkit
import yaml
from conftest import REPO_ROOT
from polling import eventually
from standins.debian_host import DebianHost, start_debian_host
from standins.fake_nvml import FakeNvml, FakeNvmlConfig, build_fake_nvml
from standins.kube_api import KubeApiStandIn, kubectl_binary
from standins.kube_api.process_pods import PodProcessRunner
from standins.kubelet import HEALTHY, DeviceState, KubeletStandIn
from standins.toolkit_packages import DEFAULT_VERSION, build_toolkit_packages

from e2e.bootstrap_harness import DRIVER, NEWER_DRIVER, bootstrap, target_args
from e2e.host_gpus import nvidia_gpus, set_pci_functions
from gpunode.bootstrap.core.kube.manifests import manifest_objects
from gpunode.bootstrap.core.kube.plugin_deployment import PluginDeployment

JSON = dict[str, Any]
NODE = "gpu-doctor"
NS = "kube-system"
GPU = "nvidia.com/gpu"
LIBRARY = f"/usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.{DRIVER}"
SO1 = "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"
DEVICE_PLUGINS = "/var/lib/kubelet/device-plugins"
DROPIN = "/etc/containerd/conf.d/99-nvidia.toml"
# The node's kubelet process: the kubelet stand-in serves its sockets from this machine, so
# in the host only its process is needed (doctor reads its age and command line).
KUBELET_SCRIPT = "#!/bin/sh\n# stands for the kubelet: its sockets are served by the test's kubelet stand-in\nwhile :; do sleep 3600; done\n"
START_KUBELET = (
    f"setsid /usr/local/bin/kubelet --root-dir=/var/lib/kubelet --hostname-override={NODE} </dev/null >/dev/null 2>&1 &"
)


@dataclass
class Node:
    host: DebianHost
    api: KubeApiStandIn
    kubelet: KubeletStandIn
    runner: PodProcessRunner
    nvml: FakeNvml

    def doctor(self, *extra: str) -> tuple[int, JSON]:
        args = [
            sys.executable,
            "-m",
            "gpunode.bootstrap.cli.main",
            "doctor",
            *target_args(self.host),
            "--kubeconfig",
            str(self.api.kubeconfig_path),
            "--output",
            "json",
            *extra,
        ]
        result = subprocess.run(
            args, capture_output=True, text=True, timeout=180, check=False, env={**os.environ, **self.api.kubectl_env()}
        )
        try:
            return result.returncode, json.loads(result.stdout)
        except ValueError as exc:
            raise AssertionError(f"no JSON (exit {result.returncode}):\n{result.stdout}\n{result.stderr}") from exc

    def apply(self, *objects: JSON) -> None:
        result = self.api.kubectl(
            "apply",
            "--server-side",
            "--field-manager=gpunode",
            "--force-conflicts",
            "-f",
            "-",
            stdin=yaml.safe_dump_all(objects),
        )
        assert result.returncode == 0, result.stderr

    def allocatable(self) -> str | None:
        return self.api.allocatable(NODE, GPU)

    def daemonset(self) -> JSON:
        objects = manifest_objects(PluginDeployment(driver_version=DRIVER, lib_path=LIBRARY))
        return next(o for o in objects if o["kind"] == "DaemonSet")

    def healthy_again(self) -> None:
        """The gpunode DaemonSet as rendered, its pod registered, Allocatable 1."""
        self.apply(self.daemonset())
        eventually(lambda: self.allocatable() == "1" and self.kubelet.registered(GPU), what="Allocatable back at 1")

    def restart_kubelet(self) -> None:
        self.host.exec("pkill -x kubelet; " + START_KUBELET)
        self.kubelet.restart()


def ids(data: JSON) -> list[str]:
    return [v["id"] for v in data["verdicts"]]


def explain(data: JSON) -> str:
    return json.dumps(data, indent=1)


@pytest.fixture(scope="module")
def node(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    toolkit = tmp_path_factory.mktemp("toolkit")
    build_toolkit_packages(toolkit, version=DEFAULT_VERSION)
    short = Path(tempfile.mkdtemp(prefix="gpn-e2e-", dir="/tmp"))  # unix socket paths stay short
    host = start_debian_host(cache_dir, name=NODE)
    try:
        set_pci_functions(host, nvidia_gpus(1))
        host.set_loaded_nvidia_module(DRIVER)
        host.start_containerd()
        run = bootstrap(host, toolkit_dir=toolkit)
        assert run.result.returncode == 0, run.explain()
        # The driver's library file becomes the fake NVML (the chain to it is Debian's own).
        library_dir = build_fake_nvml(cache_dir)
        host.put_file(LIBRARY, (library_dir / "libnvidia-ml.so.1").read_bytes())
        host.put_file("/usr/local/bin/kubelet", KUBELET_SCRIPT, mode=0o755)
        host.exec(f"mkdir -p {DEVICE_PLUGINS} && " + START_KUBELET)
        api = KubeApiStandIn(workdir=short / "api", kubectl=kubectl_binary(cache_dir))
        api.start()
        nvml = FakeNvml(short / "nvml", library_dir, FakeNvmlConfig.uniform(1, driver_version=DRIVER))

        def publish(resource: str, devices: list[DeviceState]) -> None:
            healthy = sum(1 for d in devices if d.health == HEALTHY)
            api.set_node_status(NODE, capacity={resource: str(len(devices))}, allocatable={resource: str(healthy)})

        api.add_node(NODE, labels={"gpunode.io/driver-version": DRIVER})
        with KubeletStandIn(host.root / DEVICE_PLUGINS.lstrip("/"), on_update=publish) as kubelet:
            runner = PodProcessRunner(
                api,
                short / "pods",
                select=lambda pod: pod["metadata"]["namespace"] == NS,
                host_paths={
                    LIBRARY: host.root / LIBRARY.lstrip("/"),
                    SO1: host.root / SO1.lstrip("/"),
                    DEVICE_PLUGINS: host.root / DEVICE_PLUGINS.lstrip("/"),
                    "/var/lib/kubelet/pod-resources": short / "pod-resources",
                },
                extra_env={
                    "FAKE_NVML_CONFIG": str(nvml.config_path),
                    "FAKE_NVML_EVENTS": str(nvml.events_path),
                    "PYTHONPATH": str(REPO_ROOT / "tests"),
                    # Pods here share this machine's network: no fixed metrics port for them.
                    "GPUNODE_METRICS_ADDR": "off",
                },
                grace_seconds=1.0,
            )
            the_node = Node(host, api, kubelet, runner, nvml)
            the_node.apply(*manifest_objects(PluginDeployment(driver_version=DRIVER, lib_path=LIBRARY)))
            eventually(lambda: the_node.allocatable() == "1", what="the plugin registered: Allocatable 1")
            try:
                yield the_node
            finally:
                runner.stop_all()
                api.stop()
    finally:
        host.stop()
        shutil.rmtree(short, ignore_errors=True)


def assert_first(node: Node, expected: str) -> JSON:
    code, data = node.doctor()
    assert code == 1 and data["verdicts"], explain(data)
    assert ids(data)[0] == expected, explain(data)
    assert not [n for n in data["not_checked"] if n["asked"]], explain(data)
    return data


@contextmanager
def moved(host: DebianHost, path: str) -> Iterator[None]:
    host.exec(f"mv {shlex.quote(path)} {shlex.quote(path)}.doctor-test")
    try:
        yield
    finally:
        host.exec(f"mv {shlex.quote(path)}.doctor-test {shlex.quote(path)}")


# --- the healthy node ------------------------------------------------------------------------------


def test_a_bootstrapped_node_in_its_cluster_is_healthy(node: Node) -> None:
    code, data = node.doctor()
    assert code == 0, explain(data)
    assert data["verdicts"] == [] and data["not_checked"] == [], explain(data)
    text = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpunode.bootstrap.cli.main",
            "doctor",
            *target_args(node.host),
            "--kubeconfig",
            str(node.api.kubeconfig_path),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **node.api.kubectl_env()},
        check=False,
    )
    assert text.returncode == 0 and text.stdout.strip().endswith("every link that was checked holds"), text.stdout


# --- the driver --------------------------------------------------------------------------------------


def test_f13_nouveau_loaded(node: Node) -> None:
    # The host sees nouveau where the facts look (/sys/module), and no nvidia module.
    script = textwrap.dedent("""
        set -e
        base=/run/gpunode-doctor/nouveau
        if mountpoint -q /sys/module; then umount /sys/module; fi
        rm -rf "$base"; mkdir -p "$base/upper" "$base/work"
        mount -t overlay gpunode-nouveau -o "lowerdir=/sys/module,upperdir=$base/upper,workdir=$base/work" /sys/module
        mkdir /sys/module/nouveau
    """)
    node.host.set_loaded_nvidia_module(None)
    node.host.exec(f"sh -c {shlex.quote(script)}")
    try:
        data = assert_first(node, "F13")
        verdict = data["verdicts"][0]
        assert "nouveau" in verdict["cause"] and verdict["reboot_required"] is True
    finally:
        node.host.exec("umount /sys/module")
        node.host.set_loaded_nvidia_module(DRIVER)


def test_f14_module_and_library_disagree(node: Node) -> None:
    node.host.set_loaded_nvidia_module(NEWER_DRIVER)
    try:
        data = assert_first(node, "F14")
        assert DRIVER in data["verdicts"][0]["cause"] and NEWER_DRIVER in data["verdicts"][0]["cause"]
    finally:
        node.host.set_loaded_nvidia_module(DRIVER)


def test_f2_the_library_chain_leads_nowhere(node: Node) -> None:
    with moved(node.host, LIBRARY):
        data = assert_first(node, "F2")
        assert data["verdicts"][0]["link"] == "driver" and "dangling" in data["verdicts"][0]["cause"]


# --- toolkit and containerd ----------------------------------------------------------------------------


@contextmanager
def edited_dropin(node: Node, edit: Callable[[Any], None]) -> Iterator[None]:
    """gpunode's drop-in, changed through tomlkit (config.toml imports it by path)."""
    original = node.host.exec(f"cat {DROPIN}").stdout
    document = tomlkit.parse(original)
    edit(document["plugins"]["io.containerd.grpc.v1.cri"]["containerd"])  # type: ignore[index]
    node.host.put_file(DROPIN, tomlkit.dumps(document))
    try:
        yield
    finally:
        node.host.put_file(DROPIN, original)


def test_f17_containerd_without_the_nvidia_runtime(node: Node) -> None:
    with edited_dropin(node, lambda cri: cri["runtimes"].pop("nvidia")):
        data = assert_first(node, "F17")
        assert 'no runtime "nvidia"' in data["verdicts"][0]["cause"]


def test_a_missing_imported_file_is_a_broken_config(node: Node) -> None:
    with moved(node.host, DROPIN):
        data = assert_first(node, "CONTAINERD-CONFIG")
        assert "99-nvidia.toml" in " ".join(data["verdicts"][0]["evidence"])


def test_a_malformed_containerd_config(node: Node) -> None:
    original = node.host.exec("cat /etc/containerd/config.toml").stdout
    node.host.put_file("/etc/containerd/config.toml", original + '\n[plugins."io.containerd.grpc.v1.cri"\n')
    try:
        data = assert_first(node, "CONTAINERD-CONFIG")
        assert "/etc/containerd/config.toml" in data["verdicts"][0]["cause"]
    finally:
        node.host.put_file("/etc/containerd/config.toml", original)


def test_f17_the_toolkit_removed(node: Node) -> None:
    debs = node.host.exec("find /var/lib/gpunode/packages -name '*.deb' | sort").stdout.split()
    assert debs, "bootstrap keeps the toolkit packages it uploaded"
    node.host.exec(
        "dpkg --remove --force-depends nvidia-container-toolkit nvidia-container-toolkit-base "
        "libnvidia-container-tools libnvidia-container1 >/dev/null"
    )
    try:
        data = assert_first(node, "F17")
        assert data["verdicts"][0]["link"] == "toolkit"
    finally:
        node.host.exec("dpkg -i " + " ".join(shlex.quote(d) for d in debs) + " >/dev/null")


# --- the device plugin: what it mounts, what it trusts ---------------------------------------------------


def test_f2_the_daemonset_mounts_the_so1_symlink(node: Node) -> None:
    daemonset = node.daemonset()
    for volume in daemonset["spec"]["template"]["spec"]["volumes"]:
        if volume["name"] == "nvml-library":
            volume["hostPath"]["path"] = SO1
    node.apply(daemonset)
    try:
        eventually(lambda: any(e["reason"] == "FailedMount" for e in node.api.list("events", NS)), what="FailedMount")
        data = assert_first(node, "F2")
        assert any("libnvidia-ml.so.1" in line for line in data["verdicts"][0]["evidence"])
    finally:
        node.healthy_again()


def test_f4_the_plugin_trusts_containerds_default_runtime(node: Node) -> None:
    daemonset = node.daemonset()
    spec = daemonset["spec"]["template"]["spec"]
    spec["volumes"] = [v for v in spec["volumes"] if v["name"] != "nvml-library"]
    container = spec["containers"][0]
    container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] != "nvml-library"]
    container["env"] = [e for e in container["env"] if e["name"] != "LD_LIBRARY_PATH"]
    with edited_dropin(node, lambda cri: cri.__setitem__("default_runtime_name", "nvidia")):
        node.apply(daemonset)
        try:
            eventually(
                lambda: any(
                    "library_not_found"
                    in (node.api._logs_of(NS, p["metadata"]["name"], "gpunode-device-plugin", False) or "")
                    for p in node.api.list("pods", NS)
                ),
                what="the plugin failing to load NVML",
            )
            data = assert_first(node, "F4")
            verdict = data["verdicts"][0]
            assert verdict["severity"] == "critical" and "default runtime" in verdict["cause"]
        finally:
            node.healthy_again()


def test_f12_a_kubelet_restart_the_plugin_never_noticed(node: Node) -> None:
    daemonset = node.daemonset()
    daemonset["spec"]["template"]["spec"]["containers"][0]["command"] = [
        "python",
        "-m",
        "standins.naive_plugin",
        "--devices",
        "1",
    ]
    before = node.kubelet.registration_count(GPU)
    node.apply(daemonset)
    try:
        eventually(
            lambda: node.kubelet.registration_count(GPU) > before and node.allocatable() == "1",
            what="the naive plugin registered",
        )
        time.sleep(1.1)  # whole seconds: the kubelet must be younger than the plugin's pod
        node.restart_kubelet()
        eventually(lambda: node.allocatable() == "0", what="Allocatable down to 0")
        data = assert_first(node, "F12")
        evidence = " ".join(data["verdicts"][0]["evidence"])
        assert "kubelet process started" in evidence and "kubelet.sock" in evidence
    finally:
        node.healthy_again()


def test_the_node_is_healthy_again_after_every_scenario(node: Node) -> None:
    code, data = node.doctor()
    assert code == 0 and data["verdicts"] == [], explain(data)
