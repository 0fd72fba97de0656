"""GPU feature discovery's labels: GFD's names and value formats (pure), and the running plugin
keeping them current on its Node through the Kubernetes API stand-in (set on start, updated
when the driver changes, removed when no longer true, others never touched, RBAC refusal
handled) or through NFD's feature file."""

from __future__ import annotations

from pathlib import Path

import pytest
from plugin_harness import GPU, PluginHarness, fake_nvml_lib, harness, short_dir  # noqa: F401 (fixtures)
from polling import eventually
from standins.fake_nvml import FakeGpu, FakeMig, FakeNvmlConfig
from standins.kube_api import KubeApiStandIn, kubectl_binary

from gpunode.plugin.config import PluginConfig
from gpunode.plugin.feature_labels import LABELS_ANNOTATION, OWNED, feature_labels, label_value, node_patch
from gpunode.plugin.nvml import GpuInfo, Inventory, MigInfo, Topology
from gpunode.plugin.sharing import ReplicatedResource, Sharing


def gpu(
    index: int, name: str = "NVIDIA A100-SXM4-80GB", mig: bool | None = False, migs: tuple[MigInfo, ...] = ()
) -> GpuInfo:
    return GpuInfo(index, f"GPU-{index}", name, f"0000:{index:02x}", index, 81920 << 20, 0, mig, migs, (8, 0))


def mig(slot: int, profile: str = "1g.10gb", memory: int = 9856) -> MigInfo:
    return MigInfo(slot, f"MIG-{slot}", slot + 1, 0, profile, memory, 14, 1, 1, 1, 0, 0, 0, 0)


def inventory(*gpus: GpuInfo, driver: str = "535.261.03") -> Inventory:
    return Inventory(driver, "12." + driver, gpus, Topology(), cuda_version=12020)


def test_full_gpus_in_gfd_formats() -> None:
    labels = feature_labels(inventory(gpu(0), gpu(1)), PluginConfig(), "DGX A100")
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-80GB"
    assert labels["nvidia.com/gpu.count"] == "2"
    assert labels["nvidia.com/gpu.memory"] == "81920"
    assert (labels["nvidia.com/gpu.family"], labels["nvidia.com/gpu.compute.major"]) == ("ampere", "8")
    assert labels["nvidia.com/gpu.machine"] == "DGX-A100"
    assert labels["nvidia.com/gpu.replicas"] == "1" and labels["nvidia.com/gpu.sharing-strategy"] == "none"
    assert labels["nvidia.com/cuda.driver.major"] == "535" and labels["nvidia.com/cuda.driver.rev"] == "03"
    assert labels["nvidia.com/cuda.driver-version.full"] == "535.261.03"
    assert labels["nvidia.com/cuda.runtime-version.full"] == "12.2"
    assert labels["nvidia.com/mig.capable"] == "true" and "nvidia.com/mig.strategy" not in labels
    assert labels["nvidia.com/gpu.present"] == "true" and labels["nvidia.com/mps.capable"] == "false"
    assert labels["gpunode.io/nvml.driver-version"] == "535.261.03"
    # A lost GPU is not counted; no GPU left: no labels at all.
    assert (
        feature_labels(inventory(gpu(0), gpu(1)), PluginConfig(), "", frozenset({"GPU-1"}))["nvidia.com/gpu.count"]
        == "1"
    )
    assert feature_labels(inventory(gpu(0)), PluginConfig(), "", frozenset({"GPU-0"})) == {}


def test_time_slicing_marks_the_product_shared() -> None:
    sharing = Sharing("time-slicing", resources=(ReplicatedResource(GPU, 4),))
    labels = feature_labels(inventory(gpu(0)), PluginConfig(sharing=sharing), "")
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-80GB-SHARED"
    assert (labels["nvidia.com/gpu.replicas"], labels["nvidia.com/gpu.sharing-strategy"]) == ("4", "time-slicing")
    renamed = Sharing("time-slicing", resources=(ReplicatedResource(GPU, 4, rename="nvidia.com/gpu.shared"),))
    assert feature_labels(inventory(gpu(0)), PluginConfig(sharing=renamed), "")["nvidia.com/gpu.product"] == (
        "NVIDIA-A100-SXM4-80GB"
    )


def test_mig_single_mixed_and_invalid() -> None:
    single = feature_labels(inventory(gpu(0, mig=True, migs=(mig(0), mig(1)))), PluginConfig(mig_strategy="single"), "")
    assert single["nvidia.com/mig.strategy"] == "single"
    assert single["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-80GB-MIG-1g.10gb"
    assert (single["nvidia.com/gpu.count"], single["nvidia.com/gpu.memory"]) == ("2", "9856")
    assert single["nvidia.com/gpu.multiprocessors"] == "14" and single["nvidia.com/gpu.slices.gi"] == "1"
    invalid = feature_labels(
        inventory(gpu(0, mig=True, migs=(mig(0), mig(1, "2g.20gb", 19968)))), PluginConfig(mig_strategy="single"), ""
    )
    assert invalid["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-80GB-MIG-INVALID"
    assert invalid["nvidia.com/gpu.count"] == "0"
    mixed = feature_labels(
        inventory(gpu(0, mig=True, migs=(mig(0), mig(1, "1g.10gb+me"))), gpu(1)), PluginConfig(mig_strategy="mixed"), ""
    )
    assert mixed["nvidia.com/mig-1g.10gb.count"] == "1"
    assert mixed["nvidia.com/mig-1g.10gb.me.product"] == "NVIDIA-A100-SXM4-80GB-MIG-1g.10gb-me"
    assert mixed["nvidia.com/gpu.count"] == "1"  # the full GPU
    assert all(OWNED.match(k) for k in mixed)


def test_the_patch_sets_removes_its_own_and_touches_nothing_else() -> None:
    current = {
        "kubernetes.io/hostname": "gpu-1",
        "nvidia.com/gpu.deploy.device-plugin": "true",  # the GPU Operator's: never ours
        "nvidia.com/gpu.count": "2",
        "nvidia.com/mig.strategy": "mixed",
        "nvidia.com/gpu.product": "set-by-someone-else",
    }
    before = {LABELS_ANNOTATION: "nvidia.com/gpu.count,nvidia.com/mig.strategy,nvidia.com/gpu.deploy.device-plugin"}
    patch = node_patch(current, before, {"nvidia.com/gpu.count": "1", "nvidia.com/gpu.product": "NVIDIA-A100"})
    assert patch == {
        "metadata": {
            "annotations": {LABELS_ANNOTATION: "nvidia.com/gpu.count,nvidia.com/gpu.product"},
            "labels": {
                "nvidia.com/gpu.count": "1",
                "nvidia.com/gpu.product": "NVIDIA-A100",
                "nvidia.com/mig.strategy": None,
            },
        }
    }
    settled = {**current, "nvidia.com/gpu.count": "1", "nvidia.com/gpu.product": "NVIDIA-A100"}
    settled.pop("nvidia.com/mig.strategy")
    annotations = {LABELS_ANNOTATION: "nvidia.com/gpu.count,nvidia.com/gpu.product"}
    assert (
        node_patch(settled, annotations, {"nvidia.com/gpu.count": "1", "nvidia.com/gpu.product": "NVIDIA-A100"}) is None
    )
    with pytest.raises(ValueError, match="not one this plugin owns"):
        node_patch(current, {}, {"nvidia.com/gpu.deploy.device-plugin": "false"})
    assert label_value(" NVIDIA RTX A6000 (x) ") == "NVIDIA-RTX-A6000--x"


# ---- the running plugin against the Kubernetes API stand-in ----------------------------


@pytest.fixture
def api(short_dir: Path, cache_dir: Path) -> KubeApiStandIn:
    with KubeApiStandIn(workdir=short_dir / "api", kubectl=kubectl_binary(cache_dir)) as server:
        server.add_node("gpu-1", labels={"team": "ml", "nvidia.com/gpu.deploy.device-plugin": "true"})
        yield server


def api_env(api: KubeApiStandIn, root: Path) -> dict[str, str]:
    """The plugin's way to the API (a kubeconfig here; a pod's service account in a cluster,
    found the same way by kube_client) and its node's name."""
    return {
        "KUBECONFIG": str(api.kubeconfig_path),
        "GPUNODE_NODE_NAME": "gpu-1",
        "GPUNODE_NODE_LABELS_INTERVAL": "0.3",
        "GPUNODE_NFD_FEATURES_DIR": str(root / "no-nfd-here"),
        "GPUNODE_MACHINE_TYPE_FILE": str(root / "product_name"),
    }


def node_labels(api: KubeApiStandIn) -> dict[str, str]:
    node = api.get("Node", "gpu-1")
    assert node is not None
    return dict(node["metadata"].get("labels") or {})


def test_labels_set_updated_removed_and_others_untouched(harness: PluginHarness, api: KubeApiStandIn) -> None:
    env = api_env(api, harness.root)
    (harness.root / "product_name").write_text("PowerEdge XE8545\n")
    migs = (FakeMig(0, gi=1, memory_mib=9856), FakeMig(0, gi=2, memory_mib=9856))
    config = FakeNvmlConfig(gpus=(FakeGpu(0, mig="1", memory_mib=81920), FakeGpu(1), FakeGpu(2)), migs=migs)
    harness.configure(config)
    plugin = harness.serve("--mig-strategy", "mixed", env=env)
    labels = eventually(lambda: (lb := node_labels(api)).get("nvidia.com/gpu.count") and lb, what="labels on start")
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-40GB" and labels["nvidia.com/gpu.count"] == "2"
    assert labels["nvidia.com/mig.strategy"] == "mixed" and labels["nvidia.com/mig-1g.10gb.count"] == "2"
    assert labels["nvidia.com/gpu.machine"] == "PowerEdge-XE8545"
    assert labels["nvidia.com/cuda.driver.major"] == "535" and labels["gpunode.io/nvml.driver-version"] == "535.261.03"
    assert labels["team"] == "ml" and labels["nvidia.com/gpu.deploy.device-plugin"] == "true"
    # What a user sees with the real kubectl: the node selected by GFD's product label.
    shown = api.kubectl("get", "nodes", "-l", "nvidia.com/gpu.product=NVIDIA-A100-SXM4-40GB", "-o", "name")
    assert shown.returncode == 0 and shown.stdout.split() == ["node/gpu-1"], shown.stderr

    # A GPU falls off the bus: it is no longer counted.
    harness.nvml.lose_gpu(2)
    eventually(lambda: node_labels(api).get("nvidia.com/gpu.count") == "1", what="count after a lost GPU")
    plugin.terminate()

    # The driver is upgraded and MIG turned off: the plugin restarts on the new driver with
    # strategy none; the driver labels follow, the MIG labels it set go, nothing else does.
    api.patch("Node", "gpu-1", {"metadata": {"labels": {"owner": "ops"}}})
    harness.configure(FakeNvmlConfig(gpus=(FakeGpu(0), FakeGpu(1)), driver_version="550.127.05"))
    harness.serve(env=env)
    labels = eventually(
        lambda: (lb := node_labels(api)).get("gpunode.io/nvml.driver-version") == "550.127.05" and lb,
        what="labels after the driver change",
    )
    assert (
        labels["nvidia.com/cuda.driver.major"] == "550"
        and labels["nvidia.com/cuda.driver-version.full"] == "550.127.05"
    )
    assert labels["nvidia.com/gpu.count"] == "2"
    assert not [k for k in labels if k.startswith(("nvidia.com/mig-", "nvidia.com/mig.strategy"))]
    assert (labels["team"], labels["owner"], labels["nvidia.com/gpu.deploy.device-plugin"]) == ("ml", "ops", "true")
    # A label removed by hand comes back at the next pass.
    api.patch("Node", "gpu-1", {"metadata": {"labels": {"nvidia.com/gpu.product": None}}})
    eventually(lambda: node_labels(api).get("nvidia.com/gpu.product") == "NVIDIA-A100-SXM4-40GB", what="relabel")
    writes = [r for r in api.requests if r.method == "PATCH"]
    assert writes and all(r.path.startswith("/api/v1/nodes/gpu-1") for r in writes)


def test_rbac_refusal_is_named_and_devices_still_served(harness: PluginHarness, api: KubeApiStandIn) -> None:
    env = api_env(api, harness.root)
    harness.configure(FakeNvmlConfig.uniform(1))
    api.set_fault("forbidden", "/api/v1/nodes")
    plugin = harness.serve(env=env)  # registered with the kubelet although the API refuses
    log = plugin.wait_log("node_labels state=forbidden")
    assert "verbs: [get, patch]" in log
    assert "nvidia.com/gpu.count" not in node_labels(api)
    api.set_fault(None)
    eventually(lambda: node_labels(api).get("nvidia.com/gpu.count") == "1", what="labels once RBAC allows")
    plugin.wait_log("node_labels state=recovered")


def test_nfd_feature_file_when_nfd_runs(harness: PluginHarness) -> None:
    features = harness.root / "features.d"
    features.mkdir()
    harness.configure(FakeNvmlConfig.uniform(2))
    harness.serve(env={"GPUNODE_NFD_FEATURES_DIR": str(features), "GPUNODE_NODE_LABELS_INTERVAL": "0.3"})
    text = eventually(lambda: (features / "gpunode").is_file() and (features / "gpunode").read_text(), what="NFD file")
    lines = dict(line.split("=", 1) for line in text.splitlines())
    assert lines["nvidia.com/gpu.count"] == "2" and lines["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-40GB"
    harness.nvml.lose_gpu(1)
    eventually(lambda: "nvidia.com/gpu.count=1\n" in (features / "gpunode").read_text(), what="NFD file updated")


def test_sharing_labels_follow_the_per_node_config(harness: PluginHarness, api: KubeApiStandIn) -> None:
    from test_plugin_node_config import LABEL, ConfigMapDir, sliced

    configs = ConfigMapDir(harness.root / "configs")
    configs.write({"plain": "version: v1\n", "sliced": sliced(4)})
    api.add_node("gpu-2", labels={LABEL: "plain"})
    harness.configure(FakeNvmlConfig.uniform(2))
    env = {**api_env(api, harness.root), "GPUNODE_NODE_NAME": "gpu-2", "GPUNODE_NODE_LABELS_INTERVAL": "60"}
    harness.serve("--config-dir", str(configs.root), env=env)

    def labels() -> dict[str, str]:
        node = api.get("Node", "gpu-2")
        assert node is not None
        return dict(node["metadata"].get("labels") or {})

    eventually(lambda: labels().get("nvidia.com/gpu.replicas") == "1", what="labels of the plain config")
    assert labels()["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-40GB"
    # The config switch wakes the labeller at once (its interval here is a minute).
    api.patch("Node", "gpu-2", {"metadata": {"labels": {LABEL: "sliced"}}})
    eventually(lambda: labels().get("nvidia.com/gpu.replicas") == "4", timeout=10, what="labels of the sliced config")
    assert labels()["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-40GB-SHARED"
    assert labels()["nvidia.com/gpu.sharing-strategy"] == "time-slicing"
