"""Per-node config: named configs in a directory (a mounted ConfigMap), the node label
`nvidia.com/device-plugin.config` choosing one. The plugin runs as a real process against
the kubelet stand-in (gRPC) and the Kubernetes API stand-in (HTTPS, a watch on its Node);
a label or ConfigMap change must reach the kubelet within seconds, from the same process."""

from __future__ import annotations

import os
import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from plugin_harness import GPU, PluginHarness, fake_nvml_lib, harness, short_dir  # noqa: F401 (fixtures)
from standins.fake_nvml import FakeGpu, FakeNvmlConfig
from standins.kube_api import KubeApiStandIn

LABEL = "nvidia.com/device-plugin.config"
SHARED = "nvidia.com/gpu.shared"
NODE = "gpu-node-1"


def uuid(index: int) -> str:
    return FakeGpu(index=index).resolved_uuid()


def sliced(replicas: int, rename: bool = False) -> str:
    return textwrap.dedent(
        f"""\
        version: v1
        sharing:
          timeSlicing:
            renameByDefault: {"true" if rename else "false"}
            resources:
            - name: nvidia.com/gpu
              replicas: {replicas}
        """
    )


class ConfigMapDir:
    """A ConfigMap volume as the kubelet writes it: files are symlinks through `..data`,
    which is swapped atomically to a new timestamped directory on every update."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir()
        self._generation = 0

    def write(self, configs: dict[str, str]) -> None:
        self._generation += 1
        data = self.root / f"..2026_{self._generation:04d}"
        data.mkdir()
        for name, text in configs.items():
            (data / name).write_text(text)
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(data.name)
        os.replace(tmp, self.root / "..data")
        for name in configs:
            link = self.root / name
            if not link.is_symlink():
                link.symlink_to(f"..data/{name}")
        for entry in self.root.iterdir():
            if entry.is_symlink() and not entry.name.startswith(".") and entry.name not in configs:
                entry.unlink()
        for old in self.root.glob("..2026_*"):
            if old != data:
                shutil.rmtree(old)


@pytest.fixture
def api(short_dir: Path) -> Iterator[KubeApiStandIn]:
    with KubeApiStandIn(workdir=short_dir / "api") as standin:
        yield standin


def start(harness: PluginHarness, api: KubeApiStandIn, configs: ConfigMapDir, *args: str, resource: str = GPU):
    process = harness.start(
        "--config-dir", str(configs.root), "--node-name", NODE, *args, env={"KUBECONFIG": str(api.kubeconfig_path)}
    )
    try:
        harness.kubelet.wait_registered(resource, timeout=15)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\nplugin log:\n{process.log()}") from exc
    return process


def ids(harness: PluginHarness, resource: str = GPU) -> list[str]:
    return [d.id for d in harness.kubelet.devices(resource)]


def test_the_node_label_chooses_the_config_and_a_switch_needs_no_restart(
    harness: PluginHarness, api: KubeApiStandIn
) -> None:
    harness.configure(FakeNvmlConfig.uniform(2))
    configs = ConfigMapDir(harness.root / "configs")
    configs.write({"plain": "version: v1\n", "sliced": sliced(4), "shared": sliced(3, rename=True)})
    api.add_node(NODE, labels={LABEL: "sliced"})
    process = start(harness, api, configs)
    assert ids(harness) == [f"{uuid(g)}::{n}" for g in range(2) for n in range(4)]
    pid = process.proc.pid

    api.patch("Node", NODE, {"metadata": {"labels": {LABEL: "shared"}}})
    harness.kubelet.wait_registered(SHARED, timeout=5)
    assert ids(harness, SHARED) == [f"{uuid(g)}::{n}" for g in range(2) for n in range(3)]
    # The old resource's stream ended: the kubelet counts its devices out.
    harness.kubelet.wait_devices(GPU, lambda ds: all(d.health == "Unhealthy" for d in ds), timeout=5)

    api.patch("Node", NODE, {"metadata": {"labels": {LABEL: "plain"}}})
    harness.kubelet.wait_registered(GPU, timeout=5, after=1)
    assert ids(harness) == [uuid(0), uuid(1)]
    assert process.proc.poll() is None and process.proc.pid == pid
    log = process.log()
    assert "config_switching config=shared label=shared previous=sliced" in log
    assert "config_switching config=plain label=plain previous=shared" in log


def test_a_configmap_change_of_the_config_in_force_is_applied(harness: PluginHarness, api: KubeApiStandIn) -> None:
    harness.configure(FakeNvmlConfig.uniform(2))
    configs = ConfigMapDir(harness.root / "configs")
    configs.write({"sliced": sliced(2)})
    api.add_node(NODE, labels={LABEL: "sliced"})
    start(harness, api, configs)
    assert len(ids(harness)) == 4
    configs.write({"sliced": sliced(5)})
    harness.kubelet.wait_registered(GPU, timeout=5, after=1)
    assert len(ids(harness)) == 10


def test_a_broken_config_keeps_the_old_one_and_says_so(harness: PluginHarness, api: KubeApiStandIn) -> None:
    harness.configure(FakeNvmlConfig.uniform(2))
    configs = ConfigMapDir(harness.root / "configs")
    broken = "version: v1\nsharing:\n  timeSlicing:\n    resources:\n    - name: nvidia.com/gpu\n      replicas: 1\n"
    configs.write({"sliced": sliced(4), "broken": broken})
    api.add_node(NODE, labels={LABEL: "sliced"})
    process = start(harness, api, configs)
    registrations = harness.kubelet.registration_count()

    api.patch("Node", NODE, {"metadata": {"labels": {LABEL: "broken"}}})
    process.wait_log("config_rejected config=broken reason=invalid", timeout=5)
    api.patch("Node", NODE, {"metadata": {"labels": {LABEL: "missing"}}})
    log = process.wait_log("config_rejected config=missing reason=missing", timeout=5)
    assert "replicas: 1 replicas: the number must be >= 2" in log and "in_force=sliced" in log
    assert "names a config the ConfigMap does not have (it has: broken, sliced)" in log
    # Nothing re-registered: the kubelet still has the eight replicas, all Healthy.
    assert harness.kubelet.registration_count() == registrations
    assert harness.kubelet.healthy_count(GPU) == 8

    # Fixing the broken config in the ConfigMap while the label names it switches to it.
    api.patch("Node", NODE, {"metadata": {"labels": {LABEL: "broken"}}})
    configs.write({"sliced": sliced(4), "broken": broken.replace("replicas: 1", "replicas: 6")})
    harness.kubelet.wait_devices(GPU, lambda ds: len(ds) == 12, timeout=5)
    assert process.proc.poll() is None


def test_without_a_label_the_default_then_the_one_named_default(harness: PluginHarness, api: KubeApiStandIn) -> None:
    harness.configure(FakeNvmlConfig.uniform(1))
    configs = ConfigMapDir(harness.root / "configs")
    configs.write({"default": sliced(2), "other": sliced(3)})
    api.add_node(NODE)
    first = start(harness, api, configs)
    assert len(ids(harness)) == 2
    first.terminate()
    start(harness, api, configs, "--default-config", "other")
    harness.kubelet.wait_registered(GPU, timeout=5, after=1)
    assert len(ids(harness)) == 3


def test_a_label_naming_a_missing_config_at_start_is_refused(harness: PluginHarness, api: KubeApiStandIn) -> None:
    configs = ConfigMapDir(harness.root / "configs")
    configs.write({"sliced": sliced(2)})
    api.add_node(NODE, labels={LABEL: "nope"})
    process = harness.start(
        "--config-dir", str(configs.root), "--node-name", NODE, env={"KUBECONFIG": str(api.kubeconfig_path)}
    )
    assert process.proc.wait(timeout=20) == 2
    assert "config_rejected config=nope reason=missing" in process.log()
    assert not harness.kubelet.registrations
