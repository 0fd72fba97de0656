"""The XID policy follows NVIDIA's XID catalogue: what needs a GPU reset or a reboot is fatal,
what needs only the application's restart (94, a contained ECC error) is not, application
faults are ignored; docs/plugin.md says the same as the code."""

from __future__ import annotations

import re

from plugin_generate_api import REPO_ROOT
from plugin_harness import GPU, PluginHarness, fake_nvml_lib, harness, short_dir  # noqa: F401 (fixtures)
from standins.fake_nvml import FakeGpu, FakeNvmlConfig
from standins.kubelet import HEALTHY, UNHEALTHY

from gpunode.plugin.config import DEFAULT_FATAL_XIDS, DEFAULT_IGNORED_XIDS
from gpunode.plugin.xids import XIDS

DOC = REPO_ROOT / "docs" / "plugin.md"


def uuid(index: int) -> str:
    return FakeGpu(index=index).resolved_uuid()


def test_fatal_list_is_exactly_the_xids_that_need_a_reset_or_a_reboot() -> None:
    needs_reset_or_reboot = {x.number for x in XIDS if x.action in ("reset-gpu", "reboot")}
    assert needs_reset_or_reboot == DEFAULT_FATAL_XIDS
    assert 94 not in DEFAULT_FATAL_XIDS and 94 not in DEFAULT_IGNORED_XIDS
    assert {79, 48, 95, 119, 120, 140} <= DEFAULT_FATAL_XIDS
    # NVIDIA's device plugin skips these application faults; so do we.
    assert DEFAULT_IGNORED_XIDS == {13, 31, 43, 45, 68, 109}
    assert len({x.number for x in XIDS}) == len(XIDS)


def test_docs_table_says_what_the_code_does() -> None:
    rows = re.findall(r"^\| (\d+) \| ([^|]+) \| `([a-z-]+)` \| `([a-z]+)` \|$", DOC.read_text(), re.M)
    documented = {int(n): (action, treatment) for n, _, action, treatment in rows}
    assert documented == {x.number: (x.action, x.treatment) for x in XIDS}


def test_xid_94_makes_the_device_unhealthy_for_the_quiet_period_only(harness: PluginHarness) -> None:
    harness.configure(FakeNvmlConfig.uniform(2))
    plugin = harness.serve("--health-recovery-seconds", "0.5")
    harness.nvml.inject_xid(0, 94)
    harness.kubelet.wait_devices(GPU, lambda ds: any(d.health == UNHEALTHY for d in ds))
    plugin.wait_log("xid=94")
    assert "action=unhealthy" in plugin.log() and "action=fatal" not in plugin.log()
    devices = harness.kubelet.wait_devices(GPU, lambda ds: all(d.health == HEALTHY for d in ds), timeout=5)
    assert {d.id for d in devices} == {uuid(0), uuid(1)}
    assert "device_recovered device=" + uuid(0) in plugin.log()


def test_xid_95_uncontained_stays_unhealthy(harness: PluginHarness) -> None:
    harness.configure(FakeNvmlConfig.uniform(2))
    plugin = harness.serve("--health-recovery-seconds", "0.3")
    harness.nvml.inject_xid(1, 95)
    harness.kubelet.wait_devices(GPU, lambda ds: any(d.health == UNHEALTHY for d in ds))
    plugin.wait_log("action=fatal")
    import time

    time.sleep(1.0)
    assert {d.id: d.health for d in harness.kubelet.devices(GPU)} == {uuid(0): HEALTHY, uuid(1): UNHEALTHY}
