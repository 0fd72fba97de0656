"""`gpunode doctor` on what the bundled plugin's telemetry and labeller say: a GPU whose row
remapping failed, a node labelled for another driver than its plugin's NVML reports, a
plugin that may not label its node. Log lines are written with the plugin's own formatter,
as the plugin writes them."""

from __future__ import annotations

from doctor_support import case, gpu_node, gpunode_daemonset, healthy_view, ids, judge, plugin_pod

from gpunode.bootstrap.core.doctor.engine import format_text
from gpunode.bootstrap.core.doctor.evidence import PodEvidence
from gpunode.plugin.gpu_conditions import ROW_REMAP_FIX
from gpunode.plugin.log import format_event
from gpunode.plugin.node_labeller import RBAC_FIX

REGISTERED = "registered resource=nvidia.com/gpu socket=gpunode-nvidia.com-gpu.sock attempt=1\n"
OURS = ("GPU-ROW-REMAP-FAILURE", "NODE-LABELS-DRIVER-MISMATCH", "NODE-LABELS-REFUSED")


def view(logs: str = REGISTERED, labels: dict[str, str] | None = None) -> object:
    daemonset = gpunode_daemonset()
    return healthy_view(
        plugin_pods=(PodEvidence(plugin_pod(daemonset), logs=logs),),
        node=gpu_node(labels=labels or {}),
    )


def test_a_labelled_node_in_order_has_none_of_these_verdicts() -> None:
    labels = {"gpunode.io/driver-version": "535.261.03", "gpunode.io/nvml.driver-version": "535.261.03"}
    diagnosis = judge(case(view=view(labels=labels)))
    assert not [i for i in ids(diagnosis) if i in OURS], format_text(diagnosis)


def test_a_gpu_whose_row_remapping_failed() -> None:
    line = format_event(
        "gpu_row_remap_failure",
        gpu="GPU-fa4e0003-0000-4000-8000-000000000003",
        index=3,
        name="NVIDIA A100-SXM4-80GB",
        uncorrectable_rows=4,
        correctable_rows=0,
        pending=0,
        fix=ROW_REMAP_FIX,
    )
    diagnosis = judge(case(view=view(logs=REGISTERED + line + "\n" + line + "\n")))
    found = [v for v in diagnosis.verdicts if v.id == "GPU-ROW-REMAP-FAILURE"]
    assert len(found) == 1, format_text(diagnosis)  # the same GPU once
    verdict = found[0]
    assert "GPU 3 (NVIDIA A100-SXM4-80GB" in verdict.cause and "4 rows" in verdict.cause
    assert verdict.severity == "critical" and "RMA" in verdict.fix and diagnosis.exit_code == 1


def test_labels_of_another_driver_than_the_plugins_nvml() -> None:
    labels = {"gpunode.io/driver-version": "535.261.03", "gpunode.io/nvml.driver-version": "550.127.05"}
    diagnosis = judge(case(view=view(labels=labels)))
    verdict = next(v for v in diagnosis.verdicts if v.id == "NODE-LABELS-DRIVER-MISMATCH")
    assert "set up for driver 535.261.03" in verdict.cause and "reports driver 550.127.05" in verdict.cause
    assert "gpunode bootstrap" in verdict.fix


def test_a_plugin_refused_the_right_to_label_its_node() -> None:
    line = format_event(
        "node_labels",
        state="forbidden",
        status=403,
        error='403 Forbidden: nodes "gpu-1" is forbidden: User "system:serviceaccount:kube-system:default" '
        'cannot patch resource "nodes"',
        fix=RBAC_FIX,
    )
    diagnosis = judge(case(view=view(logs=REGISTERED + line + "\n")))
    verdict = next(v for v in diagnosis.verdicts if v.id == "NODE-LABELS-REFUSED")
    assert "cannot patch resource" in verdict.cause and "nodes get and patch" in verdict.fix
    assert verdict.severity == "warning"
