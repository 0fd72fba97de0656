"""GPU telemetry on the running plugin's /metrics: dcgm-exporter's names and labels, values from
the fake NVML that the tests change, pods from a PodResources stand-in on a real unix socket."""

from __future__ import annotations

import re
import socket
import subprocess
import time
import urllib.request

import grpc
import pytest
from plugin_harness import GPU, PluginHarness, fake_nvml_lib, harness, short_dir  # noqa: F401 (fixtures)
from prometheus_client.parser import text_string_to_metric_families
from standins.fake_nvml import FakeGpu, FakeMig, FakeNvmlConfig
from standins.pod_resources import PodResourcesStandIn

from gpunode.plugin.telemetry import FIELDS

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]
DCGM_LABELS = ("gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname", "DCGM_FI_DRIVER_VERSION")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def series(text: str) -> Series:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def find(samples: Series, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for (sample, pairs), value in samples.items():
        have = dict(pairs)
        if sample == name and all(have.get(k) == v for k, v in labels.items()):
            out.append((have, value))
    return out


def one(samples: Series, name: str, **labels: str) -> float:
    found = find(samples, name, **labels)
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0][1]


def test_dcgm_names_labels_values_and_pods(harness: PluginHarness) -> None:
    port = free_port()
    gpus = (FakeGpu(0, name="NVIDIA A100-SXM4-80GB", memory_mib=81920), FakeGpu(1, minor=5))
    harness.configure(FakeNvmlConfig(gpus=gpus, driver_version="550.127.05"))
    pods = PodResourcesStandIn(harness.root / "pod-resources" / "kubelet.sock")
    pods.start()
    try:
        pods.assign("ml", "trainer-0", "main", GPU, [gpus[0].resolved_uuid()])
        pods.assign("ml", "trainer-0", "sidecar", None, [])
        pods.assign("other", "uses-something-else", "c", "example.com/fpga", ["fpga-0"])
        harness.nvml.set_telemetry(0, temp=91, mem_temp=77, util_gpu=64, util_mem=12, fb_used_mib=1024)
        harness.nvml.set_telemetry(0, power_mw=123456, energy_mj=987654321, pcie_replay=3, ecc_dbe_vol=2)
        harness.nvml.set_telemetry(0, remap_unc=4, remap_failure=1, throttle=0x40, sm_clock=1980)
        plugin = harness.serve("--metrics-addr", f"127.0.0.1:{port}", env={"GPUNODE_NODE_NAME": "gpu-node-7"})
        plugin.wait_log("telemetry gpus=2")
        samples = series(scrape(port))
    finally:
        pods.stop()

    # Every dcgm-exporter field the fake answers is there, for both GPUs, with dcgm-exporter's labels.
    for name in FIELDS:
        found = find(samples, name)
        assert len(found) == 2, name
        for labels, _ in found:
            assert set(DCGM_LABELS) <= set(labels), (name, labels)
    gpu0 = {
        "gpu": "0",
        "UUID": gpus[0].resolved_uuid(),
        "pci_bus_id": gpus[0].resolved_bus_id(),
        "device": "nvidia0",
        "modelName": "NVIDIA A100-SXM4-80GB",
        "Hostname": "gpu-node-7",
        "DCGM_FI_DRIVER_VERSION": "550.127.05",
        "namespace": "ml",
        "pod": "trainer-0",
        "container": "main",
    }
    assert one(samples, "DCGM_FI_DEV_GPU_TEMP", **gpu0) == 91
    assert one(samples, "DCGM_FI_DEV_MEMORY_TEMP", gpu="0") == 77
    assert one(samples, "DCGM_FI_DEV_GPU_UTIL", gpu="0") == 64
    assert one(samples, "DCGM_FI_DEV_MEM_COPY_UTIL", gpu="0") == 12
    assert one(samples, "DCGM_FI_DEV_FB_USED", gpu="0") == 1024
    assert one(samples, "DCGM_FI_DEV_FB_FREE", gpu="0") == 81920 - 1024
    assert one(samples, "DCGM_FI_DEV_POWER_USAGE", gpu="0") == pytest.approx(123.456)
    assert one(samples, "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", gpu="0") == 987654321
    assert one(samples, "DCGM_FI_DEV_PCIE_REPLAY_COUNTER", gpu="0") == 3
    assert one(samples, "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", gpu="0") == 2
    assert one(samples, "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", gpu="0") == 4
    assert one(samples, "DCGM_FI_DEV_ROW_REMAP_FAILURE", gpu="0") == 1
    assert one(samples, "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", gpu="0") == 0x40
    assert one(samples, "DCGM_FI_DEV_SM_CLOCK", gpu="0") == 1980
    assert one(samples, "DCGM_FI_DEV_XID_ERRORS", gpu="0") == 0
    # GPU 1 is held by no pod: no pod labels (as dcgm-exporter); its device node is its minor's.
    (labels1, temp1), *_ = find(samples, "DCGM_FI_DEV_GPU_TEMP", gpu="1")
    assert temp1 == 35 and labels1["device"] == "nvidia5" and "pod" not in labels1
    assert one(samples, "gpunode_podresources_up") == 1
    assert one(samples, "gpunode_gpu_up", gpu="0") == one(samples, "gpunode_gpu_up", gpu="1") == 1
    # The plugin's own counters are still served beside the telemetry.
    assert one(samples, "gpunode_plugin_nvml_up") == 1
    assert one(samples, "gpunode_plugin_registrations_total", resource=GPU) == 1


def test_xid_lost_gpu_unreadable_gpu_and_kubelet_refusal(harness: PluginHarness) -> None:
    port = free_port()
    harness.configure(FakeNvmlConfig.uniform(3))
    pods = PodResourcesStandIn(harness.root / "pod-resources" / "kubelet.sock")
    pods.start()
    try:
        plugin = harness.serve("--metrics-addr", f"127.0.0.1:{port}")
        harness.nvml.inject_xid(1, 79)
        plugin.wait_log("xid gpu=")
        harness.nvml.set_telemetry(2, fail="UNKNOWN")
        pods.fail_with(grpc.StatusCode.UNAVAILABLE)
        samples = series(scrape(port))
        assert one(samples, "DCGM_FI_DEV_XID_ERRORS", gpu="1") == 79
        assert one(samples, "DCGM_EXP_XID_ERRORS_COUNT", gpu="1", xid="79") == 1
        assert one(samples, "DCGM_FI_DEV_XID_ERRORS", gpu="0") == 0
        # A GPU whose every query fails is reported, not skipped: up 0 and its errors counted.
        assert one(samples, "gpunode_gpu_up", gpu="2") == 0
        assert (
            one(samples, "gpunode_gpu_read_errors_total", gpu="2", field="DCGM_FI_DEV_GPU_TEMP", error="UNKNOWN") == 1
        )
        assert not find(samples, "DCGM_FI_DEV_GPU_TEMP", gpu="2")
        assert one(samples, "gpunode_podresources_up") == 0
        plugin.wait_log("pod_resources state=unavailable")

        harness.nvml.lose_gpu(0)
        plugin.wait_log("gpu_lost gpu=")
        samples = series(scrape(port))
        assert one(samples, "gpunode_gpu_up", gpu="0") == 0
        assert one(samples, "gpunode_gpu_read_errors_total", gpu="0", error="GPU_IS_LOST") == 1
        assert one(samples, "gpunode_gpu_up", gpu="1") == 1
    finally:
        pods.stop()


def test_mig_devices_carry_dcgm_mig_labels_and_their_own_pods(harness: PluginHarness) -> None:
    port = free_port()
    config = FakeNvmlConfig(
        gpus=(FakeGpu(0, mig="1"),),
        migs=(FakeMig(0, gi=3, memory_mib=4864), FakeMig(0, gi=5, memory_mib=4864)),
    )
    harness.configure(config)
    pods = PodResourcesStandIn(harness.root / "pod-resources" / "kubelet.sock")
    pods.start()
    try:
        pods.assign("ml", "small", "main", GPU, [config.migs[1].resolved_uuid()])
        harness.serve("--metrics-addr", f"127.0.0.1:{port}", "--mig-strategy", "single")
        samples = series(scrape(port))
    finally:
        pods.stop()
    migs = find(samples, "DCGM_FI_DEV_FB_FREE", GPU_I_PROFILE="1g.5gb")
    assert sorted(labels["GPU_I_ID"] for labels, _ in migs) == ["3", "5"]
    owned = [labels for labels, _ in migs if "pod" in labels]
    assert [(o["GPU_I_ID"], o["namespace"], o["pod"]) for o in owned] == [("5", "ml", "small")]


# promtool's lint findings that dcgm-exporter's own names carry (its exposition has them too):
# the camelCase label modelName (on every series with dcgm-exporter's label set, gpunode_gpu_up
# included, so they join), and a metric named ..._COUNTER. Anything else is ours.
DCGM_NAMING_FINDINGS = re.compile(
    r"^(\w+ label names should be written in 'snake_case' not 'camelCase'"
    r"|DCGM_FI_DEV_PCIE_REPLAY_COUNTER metric name should not include type 'counter')$"
)


def test_promtool_check_metrics_on_the_exposition(harness: PluginHarness) -> None:
    port = free_port()
    harness.configure(FakeNvmlConfig.uniform(2))
    harness.nvml.inject_xid(0, 79)
    harness.serve("--metrics-addr", f"127.0.0.1:{port}")
    text = scrape(port)
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    findings = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    # Exit 0: clean; 3: lint findings only (1 would be a parse error).
    assert result.returncode in (0, 3), findings
    ours = [line for line in findings if not DCGM_NAMING_FINDINGS.match(line)]
    assert ours == [], ours
    camel = {name for (_, labels) in series(text) for name, _ in labels if re.search(r"[a-z][A-Z]", name)}
    assert camel == {"modelName"}


def test_shared_replicas_and_index_ids_are_attributed_to_their_gpu() -> None:
    from gpunode.plugin.pod_attribution import owners_from
    from gpunode.plugin.podresources import api_pb2

    def pod(ns: str, name: str, ids: list[str]) -> api_pb2.PodResources:
        devices = [api_pb2.ContainerDevices(resource_name=GPU, device_ids=ids)]
        return api_pb2.PodResources(
            namespace=ns, name=name, containers=[api_pb2.ContainerResources(name="c", devices=devices)]
        )

    uuids = {"GPU-a": "GPU-a", "GPU-a::0": "GPU-a", "GPU-a::1": "GPU-a", "1": "GPU-b"}
    response = api_pb2.ListPodResourcesResponse(
        pod_resources=[pod("a", "one", ["GPU-a::0"]), pod("a", "two", ["GPU-a::1", "1"]), pod("x", "y", ["fpga"])]
    )
    assert owners_from(response, uuids) == {
        "GPU-a": [("a", "one", "c"), ("a", "two", "c")],
        "GPU-b": [("a", "two", "c")],
    }


def test_a_row_remap_failure_is_logged_once_for_doctor(harness: PluginHarness) -> None:
    harness.configure(FakeNvmlConfig.uniform(2))
    plugin = harness.serve(env={"GPUNODE_NODE_LABELS_INTERVAL": "0.2", "GPUNODE_NODE_LABELS": "off"})
    harness.nvml.set_telemetry(1, remap_failure=1, remap_unc=5)
    log = plugin.wait_log(f"gpu_row_remap_failure gpu={FakeGpu(1).resolved_uuid()}")
    assert "uncorrectable_rows=5" in log
    time.sleep(0.6)  # several more checks: still one line
    assert plugin.log().count("gpu_row_remap_failure") == 1


def test_render_escapes_label_values_as_the_text_format_wants() -> None:
    from gpunode.plugin.telemetry import GpuTelemetry

    telemetry = GpuTelemetry.__new__(GpuTelemetry)  # no NVML: only the formatting is under test
    telemetry._label_text = {}
    tricky = {"modelName": 'A "quoted" \\ name\nnext', "pod": "p"}
    text = f"# TYPE x gauge\nx{telemetry._labels(tricky)} 1.0\n"
    [family] = list(text_string_to_metric_families(text))
    assert family.samples[0].labels == tricky
    assert telemetry._labels(tricky) is telemetry._labels(dict(tricky))  # escaped once, remembered
