"""Doctor rules from the bundled plugin's GPU telemetry and feature labels:

- GPU-ROW-REMAP-FAILURE        the plugin logged `gpu_row_remap_failure` for a GPU
- NODE-LABELS-DRIVER-MISMATCH  gpunode.io/driver-version (bootstrap's) differs from
                               gpunode.io/nvml.driver-version (what the plugin's NVML reports)
- NODE-LABELS-REFUSED          the plugin logged `node_labels state=forbidden`

Read from the node's labels and the plugin's log lines (gpunode's log format). Pure.
"""

from __future__ import annotations

import shlex

from gpunode.bootstrap.core.doctor.engine import Findings
from gpunode.bootstrap.core.doctor.evidence import JSON, ClusterView
from gpunode.bootstrap.core.kube.view import labels_of, name_of, ref

BOOTSTRAP_DRIVER_LABEL = "gpunode.io/driver-version"
NVML_DRIVER_LABEL = "gpunode.io/nvml.driver-version"


def _fields(line: str, name: str) -> dict[str, str] | None:
    """gpunode's plugin log line `name key=value ...` as its fields, or None."""
    if not line.startswith(name + " "):
        return None
    try:
        parts = shlex.split(line[len(name) :])
    except ValueError:
        return None
    return dict(part.split("=", 1) for part in parts if "=" in part)


def telemetry_rules(view: ClusterView, node: JSON, findings: Findings) -> None:
    labels = labels_of(node)
    set_up, running = labels.get(BOOTSTRAP_DRIVER_LABEL), labels.get(NVML_DRIVER_LABEL)
    if set_up and running and set_up != running:
        findings.add(
            "NODE-LABELS-DRIVER-MISMATCH",
            cause=f"Node {name_of(node)} was set up for driver {set_up}, and its device plugin's NVML reports "
            f"driver {running}: the driver changed after gpunode bootstrap last ran.",
            evidence=[f"node label {BOOTSTRAP_DRIVER_LABEL}={set_up}", f"node label {NVML_DRIVER_LABEL}={running}"],
        )
    refused_seen: set[str] = set()
    remap_seen: set[str] = set()
    for pod in view.plugin_pods:
        pod_ref = f"device plugin pod {ref(pod.pod)}"
        for line in (raw.strip() for raw in pod.all_logs.splitlines()):
            remap = _fields(line, "gpu_row_remap_failure")
            if remap is not None and remap.get("gpu", "") not in remap_seen:
                remap_seen.add(remap.get("gpu", ""))
                findings.add(
                    "GPU-ROW-REMAP-FAILURE",
                    cause=f"GPU {remap.get('index', '?')} ({remap.get('name', 'unknown model')}, {remap.get('gpu')}) "
                    f"on node {name_of(node)} could not remap a failing memory row: it has "
                    f"{remap.get('uncorrectable_rows', '?')} rows remapped for uncorrectable errors and no spare left.",
                    evidence=[f"{pod_ref}: {line}"],
                )
            labels_state = _fields(line, "node_labels")
            if labels_state is not None and labels_state.get("state") == "forbidden" and pod_ref not in refused_seen:
                refused_seen.add(pod_ref)
                findings.add(
                    "NODE-LABELS-REFUSED",
                    cause=f"The device plugin may not label node {name_of(node)} "
                    f"({labels_state.get('error', 'refused')}): its GPU feature labels are missing or stale.",
                    evidence=[f"{pod_ref}: {line}"],
                )
