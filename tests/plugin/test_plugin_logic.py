"""Pure parts of the plugin: preferred allocation, health policy, settings, metrics text."""

from __future__ import annotations

import pytest

from gpunode.plugin.allocation import preferred_allocation
from gpunode.plugin.config import ConfigError, parse_metrics_addr, parse_xid_list, validate_resource_name
from gpunode.plugin.devices import PluginDevice, Resource
from gpunode.plugin.health import HEALTHY, UNHEALTHY, HealthTracker
from gpunode.plugin.metrics import Metrics
from gpunode.plugin.nvml import GpuInfo, NvmlEvent, Topology, mig_memory_gb, mig_profile


def gpu(index: int, numa: int | None = None) -> GpuInfo:
    return GpuInfo(
        index=index,
        uuid=f"GPU-{index}",
        name="g",
        pci_bus_id=f"0:{index}",
        minor=index,
        memory_bytes=40 << 30,
        numa_node=numa,
        mig_enabled=False,
    )


def devices(count: int, numa_split: int | None = None) -> dict[str, PluginDevice]:
    return {
        f"GPU-{i}": PluginDevice(
            id=f"GPU-{i}", uuid=f"GPU-{i}", gpu=gpu(i, None if numa_split is None else i // numa_split)
        )
        for i in range(count)
    }


def test_preferred_allocation_prefers_nvlink_then_pcie_then_numa() -> None:
    devs = devices(6, numa_split=3)
    order = {d: i for i, d in enumerate(devs)}
    topo = Topology(
        levels={(0, 1): 50, (0, 2): 30, (1, 2): 30, (3, 4): 40, (3, 5): 40, (4, 5): 10}, nvlinks={(4, 5): 2}
    )
    ids = list(devs)
    assert preferred_allocation(ids, [], 2, devs, order, topo) == ["GPU-4", "GPU-5"]
    assert preferred_allocation(ids, ["GPU-0"], 2, devs, order, topo) == ["GPU-0", "GPU-2"]
    assert preferred_allocation(ids, ["GPU-3"], 2, devs, order, topo) == ["GPU-3", "GPU-4"]
    # Unknown IDs and impossible sizes never fail: the answer is only a hint.
    assert preferred_allocation(["GPU-0", "x"], [], 5, devs, order, topo) == ["GPU-0", "x"]
    assert preferred_allocation(ids, ["GPU-1", "GPU-2"], 1, devs, order, topo) == ["GPU-1"]


def test_preferred_allocation_greedy_for_large_nodes_is_deterministic() -> None:
    devs = devices(24, numa_split=12)
    order = {d: i for i, d in enumerate(devs)}
    topo = Topology(nvlinks={(a, a + 1): 4 for a in range(0, 24, 2)})
    first = preferred_allocation(list(devs), [], 8, devs, order, topo)
    assert first == preferred_allocation(list(reversed(devs)), [], 8, devs, order, topo)
    assert len(first) == 8 and len({devs[i].numa_node for i in first}) == 1


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def tracker(recovery: float, clock: Clock, metrics: Metrics | None = None) -> HealthTracker:
    devs = list(devices(2).values())
    return HealthTracker(
        [Resource("nvidia.com/gpu", tuple(devs))], frozenset({13}), frozenset({79}), recovery, metrics, clock
    )


def test_health_policy_ignore_recover_fatal() -> None:
    clock, metrics = Clock(), Metrics()
    t = tracker(30, clock, metrics)
    t.record_xid(NvmlEvent("GPU-0", 13))
    assert (t.health("GPU-0"), t.version) == (HEALTHY, 0)
    t.record_xid(NvmlEvent("GPU-0", 8))
    t.record_xid(NvmlEvent("GPU-1", 79))
    assert (t.health("GPU-0"), t.health("GPU-1"), t.version) == (UNHEALTHY, UNHEALTHY, 2)
    clock.now += 20
    t.record_xid(NvmlEvent("GPU-0", 8))  # a new XID restarts the quiet period
    clock.now += 20
    t.recover_due()
    assert t.health("GPU-0") == UNHEALTHY
    assert t.next_recovery() == 150.0
    clock.now += 10
    t.recover_due()
    assert (t.health("GPU-0"), t.health("GPU-1")) == (HEALTHY, UNHEALTHY)
    clock.now += 1e6
    t.recover_due()
    assert t.health("GPU-1") == UNHEALTHY
    samples = parsed_samples(metrics.render())
    assert samples[("gpunode_plugin_devices", (("health", "Healthy"), ("resource", "nvidia.com/gpu")))] == 1
    assert samples[("gpunode_plugin_xid_events_total", (("device", "GPU-0"), ("xid", "8")))] == 2
    assert samples[("gpunode_plugin_xid_events_total", (("device", "GPU-0"), ("xid", "13")))] == 1
    assert metrics.xids.last("GPU-0") == 8 and metrics.xids.counts("GPU-1") == {79: 1}


def parsed_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_zero_recovery_means_unhealthy_until_restart() -> None:
    clock = Clock()
    t = tracker(0, clock)
    t.record_xid(NvmlEvent("GPU-0", 8))
    clock.now += 1e9
    t.recover_due()
    assert t.health("GPU-0") == UNHEALTHY and t.next_recovery() is None


def test_mig_profile_names_match_nvidias() -> None:
    a100_40 = 40 * 1024**3
    assert mig_profile(1, 1, mig_memory_gb(a100_40, 4864), False) == "1g.5gb"
    assert mig_profile(2, 2, mig_memory_gb(a100_40, 9856), False) == "2g.10gb"
    assert mig_profile(7, 7, mig_memory_gb(a100_40, 40192), False) == "7g.40gb"
    assert mig_profile(3, 1, mig_memory_gb(a100_40, 19968), False) == "1c.3g.20gb"
    assert mig_profile(1, 1, mig_memory_gb(80 * 1024**3, 9856), True) == "1g.10gb+me"


def test_settings_validation() -> None:
    assert validate_resource_name("example.com/gpu-a_b.c") == "example.com/gpu-a_b.c"
    for bad in ("gpu", "kubernetes.io/gpu", "Nvidia.com/gpu", "nvidia.com/", "nvidia.com/-x"):
        with pytest.raises(ConfigError):
            validate_resource_name(bad)
    assert parse_xid_list(" 13, 31,,43 ") == frozenset({13, 31, 43})
    assert parse_xid_list("") == frozenset()
    assert parse_metrics_addr(":9400") == ("0.0.0.0", 9400)
    assert parse_metrics_addr("[::1]:9400") == ("::1", 9400)
    assert parse_metrics_addr("") is None
    with pytest.raises(ConfigError):
        parse_metrics_addr("localhost:99999")
