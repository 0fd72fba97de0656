"""Scraping and showing the bundled plugin's telemetry: the Prometheus Operator PodMonitor
(`gpunode render --prometheus-operator`) and a Grafana dashboard (`gpunode render dashboard`).
Pure: settings in, objects out.

The dashboard's queries use dcgm-exporter's metric and label names only where the panel is
about the GPUs (so it also shows nodes that run dcgm-exporter), and gpunode's own series
for what only the plugin knows (devices advertised, GPUs NVML cannot read).
"""

from __future__ import annotations

from typing import Any

from gpunode.bootstrap.core.kube.plugin_deployment import MANAGED_BY_LABELS, PluginDeployment
from gpunode.bootstrap.errors import UserError

POD_MONITOR_NAME = "gpunode-device-plugin"
DASHBOARD_UID = "gpunode-gpus"

# Grafana variables: the Prometheus data source, then the nodes and GPUs to show.
_FILTER = 'Hostname=~"$node", gpu=~"$gpu"'


def pod_monitor(dep: PluginDeployment, interval: str = "15s") -> dict[str, Any]:
    """A PodMonitor for every bundled plugin pod in the namespace (every driver version's
    DaemonSet): the `metrics` port the DaemonSet declares. Its job is <namespace>/<name>,
    which `render alerts --plugin-job-regex`'s default matches."""
    if dep.effective_metrics_addr is None:
        raise UserError(
            "--prometheus-operator needs the bundled plugin's metrics, and they are off.",
            "Drop --metrics-addr off (or --plugin nvidia), or leave out --prometheus-operator.",
        )
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {"name": POD_MONITOR_NAME, "namespace": dep.namespace, "labels": dict(MANAGED_BY_LABELS)},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": "gpunode-device-plugin"}},
            "namespaceSelector": {"matchNames": [dep.namespace]},
            "podMetricsEndpoints": [{"port": "metrics", "path": "/metrics", "interval": interval}],
        },
    }


def _panel(panel_id: int, title: str, expr: str, legend: str, unit: str, x: int, y: int) -> dict[str, Any]:
    return {
        "id": panel_id,
        "type": "timeseries",
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "right"}},
        "targets": [{"refId": "A", "expr": expr, "legendFormat": legend}],
    }


# (title, PromQL, legend, Grafana unit)
PANELS: tuple[tuple[str, str, str, str], ...] = (
    ("GPU utilization", f"DCGM_FI_DEV_GPU_UTIL{{{_FILTER}}}", "{{Hostname}} GPU {{gpu}} {{pod}}", "percent"),
    (
        "Framebuffer used",
        f"DCGM_FI_DEV_FB_USED{{{_FILTER}}} / (DCGM_FI_DEV_FB_USED{{{_FILTER}}} + DCGM_FI_DEV_FB_FREE{{{_FILTER}}})",
        "{{Hostname}} GPU {{gpu}} {{GPU_I_PROFILE}}",
        "percentunit",
    ),
    ("GPU temperature", f"DCGM_FI_DEV_GPU_TEMP{{{_FILTER}}}", "{{Hostname}} GPU {{gpu}}", "celsius"),
    ("Power draw", f"DCGM_FI_DEV_POWER_USAGE{{{_FILTER}}}", "{{Hostname}} GPU {{gpu}}", "watt"),
    ("SM clock", f"DCGM_FI_DEV_SM_CLOCK{{{_FILTER}}} * 1000000", "{{Hostname}} GPU {{gpu}}", "hertz"),
    ("Memory copy utilization", f"DCGM_FI_DEV_MEM_COPY_UTIL{{{_FILTER}}}", "{{Hostname}} GPU {{gpu}}", "percent"),
    (
        "XIDs in the last 5 minutes",
        f"DCGM_EXP_XID_ERRORS_COUNT{{{_FILTER}}}",
        "{{Hostname}} GPU {{gpu}} XID {{xid}}",
        "short",
    ),
    (
        "ECC errors and remapped rows",
        f"DCGM_FI_DEV_ECC_DBE_VOL_TOTAL{{{_FILTER}}} or DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS{{{_FILTER}}}"
        f" or DCGM_FI_DEV_ROW_REMAP_FAILURE{{{_FILTER}}}",
        "{{Hostname}} GPU {{gpu}} {{__name__}}",
        "short",
    ),
    ("GPUs NVML answers", f"gpunode_gpu_up{{{_FILTER}}}", "{{Hostname}} GPU {{gpu}}", "short"),
    (
        "Devices advertised to the kubelet",
        "sum by (instance, resource, health) (gpunode_plugin_devices)",
        "{{instance}} {{resource}} {{health}}",
        "short",
    ),
)


def grafana_dashboard() -> dict[str, Any]:
    """The dashboard model Grafana imports (Dashboards > New > Import, or a provisioning file)."""
    panels = [
        _panel(i + 1, title, expr, legend, unit, x=(i % 2) * 12, y=(i // 2) * 8)
        for i, (title, expr, legend, unit) in enumerate(PANELS)
    ]

    def variable(name: str, label: str, query: str) -> dict[str, Any]:
        return {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "query": {"query": query, "refId": name},
            "definition": query,
            "refresh": 2,
            "includeAll": True,
            "multi": True,
            "allValue": ".*",
            "current": {"text": "All", "value": "$__all"},
            "sort": 1,
        }

    return {
        "uid": DASHBOARD_UID,
        "title": "GPUs (gpunode)",
        "tags": ["gpunode", "gpu", "dcgm"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus"},
                variable("node", "Node", "label_values(DCGM_FI_DEV_GPU_TEMP, Hostname)"),
                variable("gpu", "GPU", 'label_values(DCGM_FI_DEV_GPU_TEMP{Hostname=~"$node"}, gpu)'),
            ]
        },
        "panels": panels,
    }
