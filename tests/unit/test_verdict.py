"""The result rules of `gpunode verify` (core.verify.result): what Allocatable means, and why."""

from __future__ import annotations

from typing import Any

import pytest

from gpunode.bootstrap.core.kube.cluster_plan import GPU_COUNT_ANNOTATION, GPUS_ANNOTATION, PLUGIN_DAEMONSET_ANNOTATION
from gpunode.bootstrap.core.kube.plugin_deployment import DEVICE_PLUGIN_LABEL
from gpunode.bootstrap.core.plugin_log import parse_event_line, read_plugin_log
from gpunode.bootstrap.core.verify.result import (
    NodeObservation,
    PluginEvidence,
    PodState,
    explain,
    judge_workload,
    quick_result,
)

DS = "kube-system/gpunode-device-plugin-535-261-03-4bd1598bd2"
UUID0, UUID1 = "GPU-fa4e0000-0000-4000-8000-000000000000", "GPU-fa4e0001-0000-4000-8000-000000000001"
PLUGIN_LOG = f"""\
plugin_starting driver=535.261.03 gpus=2 resources=nvidia.com/gpu:2
device id={UUID0} resource=nvidia.com/gpu uuid={UUID0} gpu=0 pci=00000000:3B:00.0 name="NVIDIA A100 80GB PCIe"
device id={UUID1} resource=nvidia.com/gpu uuid={UUID1} gpu=1 pci=00000000:5B:00.0 name="NVIDIA A100 80GB PCIe"
registered resource=nvidia.com/gpu socket=gpunode-nvidia.com-gpu.sock attempt=1
"""


def observed(
    allocatable: str | None = "2",
    capacity: str | None = "2",
    recorded: int | None = 2,
    host: bool = False,
    daemonset: str | None = DS,
) -> NodeObservation:
    annotations: dict[str, str] = {}
    if recorded is not None:
        annotations[GPU_COUNT_ANNOTATION] = str(recorded)
        annotations[GPUS_ANNOTATION] = "0000:3b:00.0,0000:5b:00.0"[: 12 * recorded + recorded - 1]
    if daemonset:
        annotations[PLUGIN_DAEMONSET_ANNOTATION] = daemonset
    labels = {DEVICE_PLUGIN_LABEL: "host" if host else (daemonset or "").split("/")[-1]}
    return NodeObservation("gpu01", True, allocatable, capacity, labels, annotations)


def running(log: str = PLUGIN_LOG, **kw: Any) -> PodState:
    values: dict[str, Any] = {
        "namespace": "kube-system",
        "name": "gpunode-device-plugin-x-abcde",
        "phase": "Running",
        "ready": True,
        "log": log,
    }
    values.update(kw)
    return PodState(**values)


# --------------------------------------------------------------------------------------
# The four verdicts (and two more)


@pytest.mark.parametrize(
    "allocatable,capacity,kind",
    [
        ("2", "2", "ok"),
        (None, None, "absent"),
        ("0", "2", "zero"),
        ("1", "2", "fewer"),
        ("3", "3", "more"),
        ("two", "2", "fewer"),
    ],
)
def test_allocatable_against_the_recorded_count(allocatable: str | None, capacity: str | None, kind: str) -> None:
    verdict = quick_result(observed(allocatable, capacity), None)
    assert verdict.kind == kind and verdict.ok is (kind == "ok")
    assert verdict.expected == 2 and verdict.expected_from == "recorded by gpunode bootstrap"


def test_the_headlines_say_which_case_it_is() -> None:
    assert quick_result(observed(), None).headline == "Allocatable nvidia.com/gpu = 2: OK"
    assert quick_result(observed(None, None), None).headline.startswith(
        "Allocatable nvidia.com/gpu absent (expected 2): no device plugin has registered"
    )
    assert (
        "= 0 (expected 2): the device plugin is gone or every GPU is unhealthy (F9)"
        in quick_result(observed("0"), None).headline
    )
    assert (
        quick_result(observed("1"), None).headline
        == "Allocatable nvidia.com/gpu = 1 (expected 2): fewer GPUs than the node has"
    )


def test_where_the_expected_count_comes_from() -> None:
    assert quick_result(observed(), 4).expected_from == "--expect"
    not_recorded = quick_result(observed("1", "2", recorded=None), None)
    assert (not_recorded.kind, not_recorded.expected, not_recorded.expected_from) == ("fewer", 2, "the node's capacity")
    nothing = quick_result(observed(None, None, recorded=None), None)
    assert (nothing.kind, nothing.expected) == ("absent", None)
    assert quick_result(observed("0", "0", recorded=None), None).kind == "zero"
    assert quick_result(observed(None, None, recorded=None), 0).ok  # no GPU expected, none there


def test_a_missing_node_could_not_be_checked() -> None:
    verdict = quick_result(NodeObservation("gpu09", False), None)
    assert verdict.kind == "no-node" and not verdict.checked and not verdict.ok


# --------------------------------------------------------------------------------------
# Why: the evidence about the plugin


def test_zero_with_the_daemonset_gone_is_f8() -> None:
    verdict = explain(quick_result(observed("0"), None), observed("0"), PluginEvidence("daemonset", DS, False))
    assert "does not exist any more (F8)" in (verdict.cause or "") and "gpunode bootstrap" in (verdict.fix or "")


def test_absent_with_an_untolerated_taint_is_f15() -> None:
    evidence = PluginEvidence("daemonset", DS, True, untolerated=("dedicated=ml:NoSchedule",))
    verdict = explain(quick_result(observed(None, None), None), observed(None, None), evidence)
    assert "dedicated=ml:NoSchedule" in (verdict.cause or "") and "(F15)" in (verdict.cause or "")
    assert verdict.fix == "run gpunode bootstrap with --toleration dedicated=ml:NoSchedule, or remove the taint"


def test_a_crashing_plugin_shows_its_own_failure_line() -> None:
    log = (
        "plugin_starting driver=535.309.01\nnvml_init_failed reason=driver_library_mismatch "
        'error="Driver/library version mismatch" fix="reboot"\n'
    )
    pod = running(
        log,
        ready=False,
        waiting_reason="CrashLoopBackOff",
        restarts=3,
        last_exit_code=1,
        events=("BackOff: Back-off restarting failed container",),
    )
    verdict = explain(quick_result(observed("0"), None), observed("0"), PluginEvidence("daemonset", DS, True, pod=pod))
    assert "nvml_init_failed reason=driver_library_mismatch" in (verdict.cause or "")
    assert "(F14)" in (verdict.cause or "") and "reboot" in (verdict.fix or "")
    missing = running(
        'nvml_init_failed reason=library_not_found error=x fix="mount the library"\n',
        ready=False,
        waiting_reason="CrashLoopBackOff",
    )
    verdict = explain(
        quick_result(observed(None, None), None),
        observed(None, None),
        PluginEvidence("daemonset", DS, True, pod=missing),
    )
    assert "(F1)" in (verdict.cause or "") and verdict.fix == "mount the library"


def test_a_library_that_is_not_there_is_f2() -> None:
    pod = running(
        "",
        phase="Pending",
        ready=False,
        waiting_reason="ContainerCreating",
        events=(
            'FailedMount: MountVolume.SetUp failed for volume "nvml-library" : hostPath type check '
            "failed: /usr/lib/x/libnvidia-ml.so.535.261.03 is not a file",
        ),
    )
    verdict = explain(
        quick_result(observed(None, None), None), observed(None, None), PluginEvidence("daemonset", DS, True, pod=pod)
    )
    assert "FailedMount" in (verdict.cause or "") and "(F2)" in (verdict.cause or "")


def test_fewer_names_missing_and_unhealthy_gpus_from_the_plugin_log() -> None:
    one_seen = "\n".join(line for line in PLUGIN_LOG.splitlines() if UUID1 not in line)
    verdict = explain(
        quick_result(observed("1"), None), observed("1"), PluginEvidence("daemonset", DS, True, pod=running(one_seen))
    )
    assert verdict.missing == ("0000:5b:00.0",) and verdict.unhealthy == ()
    xid = PLUGIN_LOG + f"device_unhealthy device={UUID1} resource=nvidia.com/gpu uuid={UUID1} xid=79 fatal=true\n"
    verdict = explain(
        quick_result(observed("1"), None), observed("1"), PluginEvidence("daemonset", DS, True, pod=running(xid))
    )
    assert verdict.missing == () and verdict.unhealthy == (f"{UUID1} (0000:5b:00.0): XID 79 (fatal)",)
    assert "1 GPU(s) reported Unhealthy" in (verdict.cause or "")


def test_fewer_without_a_log_reads_capacity_against_allocatable() -> None:
    host = PluginEvidence("host")
    unhealthy = explain(quick_result(observed("1", "2"), None), observed("1", "2"), host)
    assert (unhealthy.cause or "").startswith("1 of 2 GPUs are reported Unhealthy")
    unseen = explain(quick_result(observed("1", "1"), None), observed("1", "1"), host)
    assert (unseen.cause or "").startswith("the plugin sees 1 of 2 GPUs")
    assert "systemctl status gpunode-device-plugin.service" in (unseen.fix or "")


def test_a_node_gpunode_did_not_bootstrap_is_said_to_be_unknown() -> None:
    node = observed(None, None, recorded=None, daemonset=None)
    verdict = explain(quick_result(node, 1), node, PluginEvidence("unknown"))
    assert "did not bootstrap this node" in (verdict.cause or "")
    assert "spec.nodeName=gpu01" in (verdict.fix or "")


def test_ok_is_never_explained_away() -> None:
    ok = quick_result(observed(), None)
    assert explain(ok, observed(), PluginEvidence("daemonset", DS, False)) == ok


# --------------------------------------------------------------------------------------
# The plugin's log


def test_the_plugin_log_since_its_last_start_counts() -> None:
    restarted = PLUGIN_LOG + f"device_unhealthy device={UUID0} xid=48 fatal=true\n" + PLUGIN_LOG
    log = read_plugin_log(restarted)
    assert [d.pci for d in log.devices] == ["0000:3b:00.0", "0000:5b:00.0"]
    assert log.unhealthy_devices == {} and log.registered and log.driver == "535.261.03"
    recovered = read_plugin_log(
        PLUGIN_LOG + f"device_unhealthy device={UUID0} xid=31\ndevice_recovered device={UUID0}\n"
    )
    assert recovered.unhealthy_devices == {}
    lost = read_plugin_log(PLUGIN_LOG + f"gpu_lost gpu={UUID1} devices={UUID1}\n")
    assert lost.unhealthy_devices == {UUID1: "fell off the bus (GPU lost)"}


def test_event_lines_unquote_their_values() -> None:
    assert parse_event_line('nvml_init_failed reason=x error="a \\"quoted\\" word\\nnext"') == (
        "nvml_init_failed",
        {"reason": "x", "error": 'a "quoted" word\nnext'},
    )
    assert parse_event_line("Traceback (most recent call last):") is None
    assert parse_event_line("") is None


# --------------------------------------------------------------------------------------
# The workload


def test_the_workload_must_name_a_gpu_the_plugin_advertises() -> None:
    output = f"GPU 0: NVIDIA A100 80GB PCIe (UUID: {UUID1})\n"
    assert judge_workload("default/p", output, (UUID0, UUID1)).ok
    assert judge_workload("default/p", output).ok
    foreign = judge_workload("default/p", output, (UUID0,))
    assert not foreign.ok and "does not advertise" in foreign.detail
    failed = judge_workload("default/p", "Failed to initialize NVML: Driver Not Loaded\n")
    assert not failed.ok and "Failed to initialize NVML" in failed.detail
    assert not judge_workload("default/p", "").ok
