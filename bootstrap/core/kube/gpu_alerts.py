"""Alert rules on the GPUs themselves, read from the bundled plugin's /metrics: dcgm-exporter's
metric names (so the same rules also work on a node that runs dcgm-exporter) and gpunode's
own gpunode_gpu_up. Pure: options in, rule dicts out; `alerts.alert_rules` appends them.

Each rule keeps dcgm-exporter's labels (Hostname, gpu, UUID, modelName, and namespace, pod,
container when a pod holds the GPU) so an alert names the GPU and who was using it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gpunode.bootstrap.core.kube.promql_regex import check_re2
from gpunode.bootstrap.errors import UserError

# XIDs that are an application's fault, not the GPU's (NVIDIA's XID catalogue; the plugin's
# --health-ignore-xids default is the same set): never an alert.
APPLICATION_XIDS = (13, 31, 43, 45, 68, 109)
DEFAULT_TEMPERATURE_THRESHOLD = 85  # C: below most data-centre GPUs' slowdown temperature
DEFAULT_PLUGIN_JOB_REGEX = ".*gpunode.*"


@dataclass(frozen=True)
class GpuAlertOptions:
    temperature_threshold: int = DEFAULT_TEMPERATURE_THRESHOLD
    temperature_for: str = "5m"
    lost_for: str = "1m"
    ecc_window: str = "10m"
    plugin_job_regex: str = DEFAULT_PLUGIN_JOB_REGEX
    plugin_down_for: str = "5m"


def check_gpu_options(options: GpuAlertOptions) -> None:
    if not 30 <= options.temperature_threshold <= 120:
        raise UserError(
            f"--temperature-threshold {options.temperature_threshold} is not a GPU temperature in C.",
            fix="give a value between 30 and 120, e.g. 85",
        )
    check_re2("--plugin-job-regex", options.plugin_job_regex, ".*gpunode.*")


_WHO = "{{ $labels.Hostname }} GPU {{ $labels.gpu }} ({{ $labels.modelName }}, {{ $labels.UUID }})"
_POD = "{{ if $labels.pod }} used by {{ $labels.namespace }}/{{ $labels.pod }}{{ end }}"


def gpu_alert_rules(options: GpuAlertOptions) -> list[dict[str, Any]]:
    check_gpu_options(options)
    ignored = "|".join(str(x) for x in APPLICATION_XIDS)
    job = options.plugin_job_regex.replace("\\", "\\\\").replace('"', '\\"')
    return [
        {
            "alert": "GpuXidError",
            "expr": f'DCGM_EXP_XID_ERRORS_COUNT{{xid!~"{ignored}"}} > 0',
            "labels": {"severity": "critical"},
            "annotations": {
                "summary": "XID {{ $labels.xid }} on " + _WHO,
                "description": "NVML reported XID {{ $labels.xid }} on " + _WHO + _POD + " in the last five "
                "minutes. XIDs 48, 79, 94 and the like need a GPU reset or a reboot (79: fallen off the bus); "
                "see NVIDIA's XID catalogue and `dmesg | grep -i xid` on the node. Application XIDs (" + ignored + ") "
                "are not alerted.",
            },
        },
        {
            "alert": "GpuTemperatureHigh",
            "expr": f"DCGM_FI_DEV_GPU_TEMP > {options.temperature_threshold}",
            "for": options.temperature_for,
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": _WHO + " at {{ $value }} C",
                "description": _WHO + _POD + " has been above "
                f"{options.temperature_threshold} C for {options.temperature_for}: it will slow its clocks "
                "(DCGM_FI_DEV_CLOCK_THROTTLE_REASONS) and may shut down. Check the node's cooling and fans.",
            },
        },
        {
            "alert": "GpuUncorrectableEccErrors",
            "expr": f"increase(DCGM_FI_DEV_ECC_DBE_VOL_TOTAL[{options.ecc_window}]) > 0",
            "labels": {"severity": "critical"},
            "annotations": {
                "summary": "Uncorrectable ECC errors on " + _WHO,
                "description": "{{ $value }} double-bit (uncorrectable) ECC errors in the last "
                f"{options.ecc_window} on " + _WHO + _POD + ": the work on it may be corrupt. Drain the node; "
                "a GPU reset remaps the rows (watch DCGM_FI_DEV_ROW_REMAP_FAILURE).",
            },
        },
        {
            "alert": "GpuRowRemapFailure",
            "expr": "DCGM_FI_DEV_ROW_REMAP_FAILURE > 0",
            "labels": {"severity": "critical"},
            "annotations": {
                "summary": "Row remapping failed on " + _WHO,
                "description": "The GPU could not remap a faulty memory row on " + _WHO + ": it has no spare "
                "rows left. It needs replacing (RMA); drain the node and take the GPU out of service.",
            },
        },
        {
            "alert": "GpuLost",
            "expr": "gpunode_gpu_up == 0",
            "for": options.lost_for,
            "labels": {"severity": "critical"},
            "annotations": {
                "summary": "GPU {{ $labels.gpu }} on {{ $labels.Hostname }} does not answer NVML",
                "description": "NVML has answered nothing for GPU {{ $labels.gpu }} on {{ $labels.Hostname }} for "
                f"{options.lost_for} (fallen off the bus, XID 79, or a driver fault): the plugin reports it "
                "Unhealthy. A reset or reboot is needed; run `gpunode doctor` on the node.",
            },
        },
        {
            "alert": "GpuDevicePluginDown",
            "expr": f'up{{job=~"{job}"}} == 0',
            "for": options.plugin_down_for,
            "labels": {"severity": "critical"},
            "annotations": {
                "summary": "gpunode's device plugin {{ $labels.instance }} cannot be scraped",
                "description": "Prometheus has not reached the device plugin at {{ $labels.instance }} for "
                f"{options.plugin_down_for}: the plugin pod is down or restarting, so its GPUs are neither "
                "advertised nor watched. Run `gpunode doctor`.",
            },
        },
    ]
