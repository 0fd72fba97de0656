"""The alert rules that would have caught the silent failures of docs/failure-modes.md, as a Prometheus
Operator PrometheusRule or a plain Prometheus rule file. Pure: options in, YAML text out.

The node-level rules read kube-state-metrics:
- `kube_node_status_allocatable{resource="nvidia_com_gpu"}` (KSM writes the resource name
  with `.` and `/` as `_`, unit "integer");
- `kube_node_labels{label_<key>=...}`: the node's GPU label, so CPU nodes never fire (KSM
  exports node labels only when allowed: `--metric-labels-allowlist=nodes=[<key>,...]`);
- `kube_daemonset_status_number_ready` / `..._desired_number_scheduled`.
The plugin rules read the bundled plugin's own `/metrics` (gpunode_plugin_*); the GPU rules
(gpu_alerts.py) its telemetry, in dcgm-exporter's names.

`0` and absent are different failures (F9, docs/failure-modes.md): one rule for each.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from gpunode.bootstrap.core.kube.gpu_alerts import GpuAlertOptions, gpu_alert_rules
from gpunode.bootstrap.core.kube.promql_regex import check_re2
from gpunode.bootstrap.errors import UserError

# Node labels that mark a GPU node, as `key` (any value) or `key=value`.
DEFAULT_GPU_NODE_LABELS: tuple[str, ...] = ("gpunode.io/driver-version", "nvidia.com/gpu.present=true")
DEFAULT_DAEMONSET_REGEX = ".*device-plugin.*"
RULE_NAME = "gpunode-gpu-node-alerts"
GROUP_NAME = "gpunode-gpu-nodes"

_LABEL_KEY = re.compile(
    r"^(?:[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE = re.compile(r"^(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_DNS_LABEL = re.compile(r"^[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?$")
_INVALID_LABEL_CHAR = re.compile(r"[^a-zA-Z0-9_]")
_ALL_CAP = re.compile(r"([a-z0-9])([A-Z])")


@dataclass(frozen=True)
class AlertOptions:
    gpu_node_labels: Sequence[str] = DEFAULT_GPU_NODE_LABELS
    daemonset_regex: str = DEFAULT_DAEMONSET_REGEX
    namespace: str = "monitoring"
    rule_labels: dict[str, str] = field(default_factory=dict)  # metadata labels (ruleSelector)
    zero_for: str = "2m"
    absent_for: str = "5m"
    daemonset_for: str = "5m"
    unhealthy_for: str = "2m"
    # A registration in every `reregister_window` for `reregister_for`: it keeps rising.
    reregister_window: str = "10m"
    reregister_for: str = "30m"
    # The GPUs' own rules (XID, temperature, ECC, row remapping, lost, plugin down).
    gpu: GpuAlertOptions = field(default_factory=GpuAlertOptions)


def ksm_label_name(key: str) -> str:
    """The Prometheus label kube-state-metrics gives a Kubernetes label key:
    `nvidia.com/gpu.present` -> `label_nvidia_com_gpu_present` (camelCase -> snake_case)."""
    return "label_" + _ALL_CAP.sub(r"\1_\2", _INVALID_LABEL_CHAR.sub("_", key)).lower()


def promql_string(value: str) -> str:
    """A PromQL double-quoted string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _gpu_node_selector(labels: Sequence[str]) -> str:
    """One series per GPU node: `max by (node) (kube_node_labels{...} or ...)`."""
    parts = []
    for spec in labels:
        key, has_value, value = spec.partition("=")
        matcher = f"={promql_string(value)}" if has_value else '!=""'
        parts.append(f"kube_node_labels{{{ksm_label_name(key)}{matcher}}}")
    return "max by (node) (" + " or ".join(parts) + ")"


def check_options(options: AlertOptions) -> None:
    if not options.gpu_node_labels:
        raise UserError(
            "No GPU node label given.", fix="give --gpu-node-label KEY or KEY=VALUE, e.g. nvidia.com/gpu.present=true"
        )
    for spec in options.gpu_node_labels:
        key, has_value, value = spec.partition("=")
        if not _LABEL_KEY.match(key) or len(key) > 316:
            raise UserError(
                f"{key!r} is not a Kubernetes label key.",
                fix="give --gpu-node-label as KEY or KEY=VALUE, e.g. nvidia.com/gpu.present=true",
            )
        if has_value and (not value or not _LABEL_VALUE.match(value)):
            raise UserError(
                f"{value!r} is not a Kubernetes label value.",
                fix="give --gpu-node-label as KEY or KEY=VALUE with a plain value",
            )
    check_re2("--daemonset-regex", options.daemonset_regex, ".*device-plugin.*")
    if not _DNS_LABEL.match(options.namespace):
        raise UserError(f"{options.namespace!r} is not a namespace name.", fix="use e.g. monitoring")
    for key, value in options.rule_labels.items():
        if not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(value):
            raise UserError(
                f"{key}={value} is not a Kubernetes label.", fix="give --label KEY=VALUE, e.g. release=prometheus"
            )


def alert_rules(options: AlertOptions) -> list[dict[str, Any]]:
    check_options(options)
    gpu_nodes = _gpu_node_selector(options.gpu_node_labels)
    allocatable = 'kube_node_status_allocatable{resource="nvidia_com_gpu"}'
    ds = f"daemonset=~{promql_string(options.daemonset_regex)}"
    doctor = "Run `gpunode doctor --node {{ $labels.node }}` (add the host for the driver's side)."
    return _node_and_plugin_rules(options, gpu_nodes, allocatable, ds, doctor) + gpu_alert_rules(options.gpu)


def _node_and_plugin_rules(
    options: AlertOptions, gpu_nodes: str, allocatable: str, ds: str, doctor: str
) -> list[dict[str, Any]]:
    return [
        {
            "alert": "GpuNodeAdvertisesZeroGpus",
            "expr": f"({allocatable} == 0)\nand on (node)\n{gpu_nodes}",
            "for": options.zero_for,
            "labels": {"severity": "critical"},
            "annotations": {
                "summary": "GPU node {{ $labels.node }} advertises nvidia.com/gpu = 0",
                "description": "Allocatable nvidia.com/gpu has been 0 on GPU node {{ $labels.node }} for "
                f"{options.zero_for}: its device plugin registered and then went away, or reports "
                "every GPU unhealthy. The kubelet keeps the key at 0, so absent() never sees it. " + doctor,
            },
        },
        {
            "alert": "GpuNodeWithoutGpuResource",
            "expr": f"{gpu_nodes}\nunless on (node)\n{allocatable}",
            "for": options.absent_for,
            "labels": {"severity": "critical"},
            "annotations": {
                "summary": "GPU node {{ $labels.node }} has no nvidia.com/gpu in Allocatable",
                "description": "GPU node {{ $labels.node }} carries a GPU label but its Allocatable has had no "
                f"nvidia.com/gpu for {options.absent_for}: no device plugin has registered since its "
                "kubelet started. " + doctor,
            },
        },
        {
            "alert": "GpuDevicePluginDaemonSetNotReady",
            "expr": (
                f"kube_daemonset_status_number_ready{{{ds}}}\n!=\n"
                f"kube_daemonset_status_desired_number_scheduled{{{ds}}}"
            ),
            "for": options.daemonset_for,
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "Device plugin DaemonSet {{ $labels.namespace }}/{{ $labels.daemonset }} is not ready",
                "description": "{{ $labels.namespace }}/{{ $labels.daemonset }} has had {{ $value }} ready pods, "
                f"not the desired number, for {options.daemonset_for}: a GPU node's plugin is "
                "crashing, pending or cannot pull its image. Run `gpunode doctor`.",
            },
        },
        {
            "alert": "GpuDeviceUnhealthy",
            "expr": 'gpunode_plugin_devices{health="Unhealthy"} > 0',
            "for": options.unhealthy_for,
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "{{ $value }} {{ $labels.resource }} device(s) Unhealthy",
                "description": "gpunode's device plugin ({{ $labels.instance }}) has reported {{ $value }} "
                f"{{{{ $labels.resource }}}} device(s) Unhealthy for {options.unhealthy_for} (longer "
                "than a transient XID's recovery): the kubelet does not count them. Check "
                "`dmesg | grep -i xid` on the node.",
            },
        },
        {
            "alert": "GpuDevicePluginKeepsReRegistering",
            "expr": f"increase(gpunode_plugin_registrations_total[{options.reregister_window}]) > 0",
            "for": options.reregister_for,
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "Device plugin {{ $labels.instance }} keeps registering {{ $labels.resource }} again",
                "description": "gpunode's device plugin ({{ $labels.instance }}) has registered "
                f"{{{{ $labels.resource }}}} again in every {options.reregister_window} for "
                f"{options.reregister_for}: the kubelet keeps restarting or ending its stream, or the "
                "plugin keeps restarting. Check the kubelet's log and the plugin's.",
            },
        },
        {
            "alert": "GpuDevicePluginNvmlDown",
            "expr": "gpunode_plugin_nvml_up == 0",
            "for": options.daemonset_for,
            "labels": {"severity": "critical"},
            "annotations": {
                "summary": "Device plugin {{ $labels.instance }} cannot start NVML",
                "description": "gpunode's device plugin ({{ $labels.instance }}) runs but NVML did not start, so "
                "it advertises nothing (init errors are not fatal there). Its log line "
                "`nvml_init_failed reason=...` names the cause; run `gpunode doctor`.",
            },
        },
    ]


class _Dumper(yaml.SafeDumper):
    """Multi-line PromQL as literal blocks (`|`), the way people write rule files."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _dump(data: Any) -> str:
    text: str = yaml.dump(
        data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100, allow_unicode=True
    )
    return text


def render_rule_file(options: AlertOptions) -> str:
    """The plain Prometheus rule file (`rule_files:`), what `promtool check rules` reads."""
    return _dump({"groups": [{"name": GROUP_NAME, "rules": alert_rules(options)}]})


def render_prometheus_rule(options: AlertOptions) -> str:
    """The same rules as a Prometheus Operator PrometheusRule."""
    metadata: dict[str, Any] = {
        "name": RULE_NAME,
        "namespace": options.namespace,
        "labels": {"app.kubernetes.io/managed-by": "gpunode", **options.rule_labels},
    }
    return _dump(
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PrometheusRule",
            "metadata": metadata,
            "spec": {"groups": [{"name": GROUP_NAME, "rules": alert_rules(options)}]},
        }
    )
