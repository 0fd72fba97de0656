"""NVIDIA's config file v1 as data: what it sets, what it shares, what it refuses (and
where), and the feature-discovery labels it implies. No process, no NVML."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpunode.plugin.config import ConfigError, PluginConfig
from gpunode.plugin.devices import plan_resources
from gpunode.plugin.nvidia_config import ConfigFileError, apply_file, load_config_file, parse_config_text
from gpunode.plugin.nvml import GpuInfo, Inventory, MigInfo, Topology
from gpunode.plugin.sharing import NO_SHARING, ReplicatedResource, Sharing, sharing_labels


def gpu(index: int, name: str = "NVIDIA A100-SXM4-40GB", migs: tuple[MigInfo, ...] = ()) -> GpuInfo:
    return GpuInfo(
        index=index,
        uuid=f"GPU-{index}",
        name=name,
        pci_bus_id=f"0000:0{index}:00.0",
        minor=index,
        numa_node=None,
        memory_bytes=40960 << 20,
        mig_enabled=bool(migs),
        migs=migs,
    )


def inventory(*gpus: GpuInfo) -> Inventory:
    return Inventory(driver_version="535.261.03", nvml_version="12.535.261.03", gpus=gpus, topology=Topology())


def configured(text: str, **base: object) -> PluginConfig:
    return apply_file(PluginConfig(**base), parse_config_text(text, "c.yaml"), frozenset())  # type: ignore[arg-type]


def test_flags_map_to_the_plugins_settings() -> None:
    file = parse_config_text(
        """
version: v1
flags:
  migStrategy: mixed
  failOnInitError: false
  nvidiaDriverRoot: /run/nvidia/driver
  gdsEnabled: true
  plugin:
    passDeviceSpecs: true
    deviceListStrategy: [cdi-cri]
    deviceIDStrategy: index
    sharedDevicesAllocationPolicy: packed
  gfd:
    oneshot: true
""",
        "c.yaml",
    )
    config = apply_file(PluginConfig(), file, frozenset({"fail_on_init_error"}))
    assert (config.mig_strategy, config.fail_on_init_error, config.device_list_strategy) == ("mixed", True, "cdi")
    assert (config.device_id_strategy, config.pass_device_specs, config.allocation_policy) == ("index", True, "packed")
    # NVIDIA: the device root defaults to the driver root.
    assert config.driver_root == config.dev_root == Path("/run/nvidia/driver")
    assert config.gds_enabled and not config.gdrcopy_enabled
    assert file.notes == ("flags.gfd.oneshot is read by gpu-feature-discovery, not by the device plugin",)


def test_sharing_rules_are_nvidias() -> None:
    sharing = parse_config_text(
        "sharing:\n  timeSlicing:\n    renameByDefault: true\n    resources:\n"
        "    - name: gpu\n      replicas: 4\n    - name: nvidia.com/mig-1g.5gb\n      rename: small\n      replicas: 2\n",
        "c.yaml",
    ).sharing
    assert sharing == Sharing(
        strategy="time-slicing",
        fail_requests_greater_than_one=False,
        resources=(
            ReplicatedResource("nvidia.com/gpu", 4, rename="nvidia.com/gpu.shared"),
            ReplicatedResource("nvidia.com/mig-1g.5gb", 2, rename="nvidia.com/small"),
        ),
    )
    # MPS refuses requests for more than one replica unless told otherwise.
    mps = "sharing:\n  mps:\n    resources:\n    - name: gpu\n      replicas: 2\n"
    assert parse_config_text(mps, "c.yaml").sharing.fail_requests_greater_than_one
    relaxed = mps.replace("    resources:", "    failRequestsGreaterThanOne: false\n    resources:")
    assert not parse_config_text(relaxed, "c.yaml").sharing.fail_requests_greater_than_one


def test_feature_discovery_labels_of_a_config() -> None:
    assert sharing_labels(NO_SHARING) == {"nvidia.com/gpu.replicas": "1", "nvidia.com/gpu.sharing-strategy": "none"}
    shared = parse_config_text("sharing:\n  mps:\n    resources:\n    - name: gpu\n      replicas: 3\n", "c").sharing
    assert sharing_labels(shared) == {"nvidia.com/gpu.replicas": "3", "nvidia.com/gpu.sharing-strategy": "mps"}
    # A MIG resource shared, the full GPUs not: GFD labels each resource by its own name.
    mig = parse_config_text(
        "sharing:\n  timeSlicing:\n    resources:\n    - name: mig-1g.5gb\n      replicas: 2\n", "c"
    ).sharing
    assert sharing_labels(mig)["nvidia.com/gpu.sharing-strategy"] == "none"
    assert sharing_labels(mig, "nvidia.com/mig-1g.5gb") == {
        "nvidia.com/mig-1g.5gb.replicas": "2",
        "nvidia.com/mig-1g.5gb.sharing-strategy": "time-slicing",
    }


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        ("version: v1\nflag:\n  migStrategy: none\n", 2, "flag"),
        ("version: v1\nflags:\n  migStrategy: half\n", 3, "flags.migStrategy"),
        ("version: v1\nflags:\n  failOnInitError: maybe\n", 3, "flags.failOnInitError"),
        ("flags:\n  deviceDiscoveryStrategy: tegra\n", 2, "flags.deviceDiscoveryStrategy"),
        ("flags:\n  plugin:\n    nvidiaCTKPath: /opt/ctk\n", 3, "flags.plugin.nvidiaCTKPath"),
        ("flags:\n  plugin:\n    deviceListStrategy: [envvar, cdi-cri]\n", 3, "flags.plugin.deviceListStrategy"),
        ("resources:\n  gpus:\n  - pattern: '*'\n", 3, "resources.gpus[0]"),
        ("resources:\n  gpus:\n  - pattern: '*'\n    name: Bad_Name\n", 4, "resources.gpus[0].name"),
        ("sharing:\n  timeSlicing:\n    resources: []\n", 3, "sharing.timeSlicing.resources"),
        ("sharing:\n  timeSlicing:\n    resources:\n    - name: gpu\n", 4, "sharing.timeSlicing.resources[0]"),
        (
            "sharing:\n  timeSlicing:\n    resources:\n    - name: gpu\n      replicas: 2\n      devices: 0\n",
            6,
            "sharing.timeSlicing.resources[0].devices",
        ),
        (
            "sharing:\n  timeSlicing:\n    resources:\n    - {name: gpu, replicas: 2}\n"
            "  mps:\n    resources:\n    - {name: gpu, replicas: 2}\n",
            6,
            "sharing",
        ),
        ("imex:\n  channelIDs: [0]\n", 2, "imex.channelIDs"),
        ("version: v1\nversion: v1\n", 2, "version"),
    ],
)
def test_refusals_name_the_key_and_its_line(text: str, line: int, key: str) -> None:
    with pytest.raises(ConfigFileError) as refused:
        parse_config_text(text, "c.yaml")
    assert (refused.value.line, refused.value.key) == (line, key)
    assert str(refused.value).startswith(f"c.yaml line {line}: {key}: ") and "Fix: " in str(refused.value)


def test_an_unreadable_or_broken_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="cannot be read"):
        load_config_file(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_bytes(b"version: v1\nsharing: {timeSlicing: [\n")
    with pytest.raises(ConfigFileError, match="not valid YAML"):
        load_config_file(broken)
    assert broken.read_bytes() == b"version: v1\nsharing: {timeSlicing: [\n"


def test_resource_patterns_name_gpus_and_mig_devices() -> None:
    migs = (MigInfo(slot=0, uuid="MIG-a", gpu_instance=1, compute_instance=0, profile="1g.5gb", memory_mib=4864),)
    config = configured(
        """
flags: {migStrategy: mixed}
resources:
  gpus:
  - {pattern: "*T4*", name: t4}
  mig:
  - {pattern: "1g.*", name: small}
""",
    )
    resources = plan_resources(inventory(gpu(0, "Tesla T4"), gpu(1), gpu(2, migs=migs)), config)
    assert {r.name: [d.id for d in r.devices] for r in resources} == {
        "nvidia.com/gpu": ["GPU-1"],
        "nvidia.com/small": ["MIG-a"],
        "nvidia.com/t4": ["GPU-0"],
    }


def test_mig_devices_can_be_time_sliced_but_not_shared_with_mps(tmp_path: Path) -> None:
    migs = (MigInfo(slot=0, uuid="MIG-a", gpu_instance=1, compute_instance=0, profile="1g.5gb", memory_mib=4864),)
    sliced = configured(
        "flags: {migStrategy: mixed}\nsharing:\n  timeSlicing:\n    resources:\n    - {name: mig-1g.5gb, replicas: 3}\n"
    )
    resources = plan_resources(inventory(gpu(0), gpu(1, migs=migs)), sliced)
    assert {r.name: [d.id for d in r.devices] for r in resources} == {
        "nvidia.com/gpu": ["GPU-0"],
        "nvidia.com/mig-1g.5gb": ["MIG-a::0", "MIG-a::1", "MIG-a::2"],
    }
    mps = configured(
        "flags: {migStrategy: single, mpsRoot: /run/nvidia/mps}\n"
        "sharing:\n  mps:\n    resources:\n    - {name: gpu, replicas: 2}\n"
    )
    with pytest.raises(ConfigError, match="MPS cannot share MIG devices"):
        plan_resources(inventory(gpu(0, migs=migs)), mps)
    with pytest.raises(ConfigError, match="migStrategy mixed"):
        configured(
            "flags: {migStrategy: mixed, mpsRoot: /m}\nsharing:\n  mps:\n    resources:\n    - {name: gpu, replicas: 2}\n"
        )


def test_device_selection_by_count_and_its_limit() -> None:
    config = configured("sharing:\n  timeSlicing:\n    resources:\n    - {name: gpu, replicas: 2, devices: 1}\n")
    resources = plan_resources(inventory(gpu(0), gpu(1)), config)
    assert [d.id for r in resources for d in r.devices] == ["GPU-0::0", "GPU-0::1", "GPU-1"]
    too_many = configured("sharing:\n  timeSlicing:\n    resources:\n    - {name: gpu, replicas: 2, devices: 3}\n")
    with pytest.raises(ConfigError, match="asks for 3 devices"):
        plan_resources(inventory(gpu(0), gpu(1)), too_many)
