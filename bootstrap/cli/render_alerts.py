"""`gpunode render alerts`: the alert rules for GPU nodes, as a PrometheusRule or a plain
Prometheus rule file. Offline: nothing is read from a cluster."""

from __future__ import annotations

import click
import yaml

from gpunode.bootstrap.cli.contract import EXIT_OK, ContractCommand, Outcome, output_option
from gpunode.bootstrap.core.kube.alerts import (
    DEFAULT_DAEMONSET_REGEX,
    DEFAULT_GPU_NODE_LABELS,
    AlertOptions,
    render_prometheus_rule,
    render_rule_file,
)
from gpunode.bootstrap.core.kube.gpu_alerts import (
    DEFAULT_PLUGIN_JOB_REGEX,
    DEFAULT_TEMPERATURE_THRESHOLD,
    GpuAlertOptions,
)
from gpunode.bootstrap.errors import UserError


def yaml_documents(text: str) -> list[object]:
    """A YAML stream gpunode rendered, as the JSON body's `documents`."""
    return [document for document in yaml.safe_load_all(text) if document is not None]


def _labels(values: tuple[str, ...]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep or not key:
            raise UserError(f"--label {value!r} is not KEY=VALUE.", fix="give e.g. --label release=prometheus")
        labels[key] = text
    return labels


@click.command("alerts", cls=ContractCommand, empty_body={"documents": []})
@click.option(
    "--plain", is_flag=True, help="A plain Prometheus rule file (for rule_files:) instead of a PrometheusRule."
)
@click.option(
    "--gpu-node-label",
    "gpu_node_labels",
    multiple=True,
    metavar="KEY[=VALUE]",
    help="A node label that marks GPU nodes (repeatable; any one is enough). Default: "
    + ", ".join(DEFAULT_GPU_NODE_LABELS)
    + ". kube-state-metrics must export it "
    "(--metric-labels-allowlist=nodes=[KEY,...]).",
)
@click.option(
    "--daemonset-regex",
    default=DEFAULT_DAEMONSET_REGEX,
    show_default=True,
    metavar="RE",
    help="Which DaemonSets are device plugins (gpunode's, NVIDIA's Helm chart, the GPU Operator's). "
    "RE2 syntax, as Prometheus matches it (no lookaround, no backreferences).",
)
@click.option(
    "--namespace", default="monitoring", show_default=True, metavar="NS", help="The PrometheusRule's namespace."
)
@click.option(
    "--label",
    "rule_labels",
    multiple=True,
    metavar="KEY=VALUE",
    help="A label on the PrometheusRule, for the Prometheus Operator's ruleSelector "
    "(e.g. release=kube-prometheus-stack).",
)
@click.option(
    "--temperature-threshold",
    type=int,
    default=DEFAULT_TEMPERATURE_THRESHOLD,
    show_default=True,
    metavar="C",
    help="GpuTemperatureHigh fires above this GPU temperature (DCGM_FI_DEV_GPU_TEMP).",
)
@click.option(
    "--plugin-job-regex",
    default=DEFAULT_PLUGIN_JOB_REGEX,
    show_default=True,
    metavar="RE",
    help="The Prometheus job(s) scraping gpunode's plugin (a PodMonitor's job is <namespace>/<name>).",
)
@output_option
def alerts_command(
    plain: bool,
    gpu_node_labels: tuple[str, ...],
    daemonset_regex: str,
    namespace: str,
    rule_labels: tuple[str, ...],
    temperature_threshold: int,
    plugin_job_regex: str,
    output: str,
) -> Outcome:
    """Print the alert rules that catch a GPU node that stopped advertising its GPUs.

    \b
    GpuNodeAdvertisesZeroGpus          Allocatable nvidia.com/gpu == 0 on a GPU node, 2m
    GpuNodeWithoutGpuResource          the key absent on a GPU node, 5m (0 and absent differ)
    GpuDevicePluginDaemonSetNotReady   device plugin DaemonSet ready != desired, 5m
    GpuDeviceUnhealthy                 the bundled plugin reports a device Unhealthy, 2m
    GpuDevicePluginKeepsReRegistering  its registration count keeps rising
    GpuDevicePluginNvmlDown            it runs, but NVML did not start
    GpuXidError                        an XID that is not an application's (79, 48, 94 ...)
    GpuTemperatureHigh                 DCGM_FI_DEV_GPU_TEMP above the threshold, 5m
    GpuUncorrectableEccErrors          double-bit ECC errors in the last 10m
    GpuRowRemapFailure                 no spare memory rows left (RMA)
    GpuLost                            NVML answers nothing for a GPU, 1m
    GpuDevicePluginDown                the plugin's /metrics cannot be scraped, 5m

    The GPU rules read the plugin's telemetry in dcgm-exporter's names, so they work on
    dcgm-exporter too (GpuLost and GpuDevicePluginDown are gpunode's own).

    Exit status 0 when printed, 2 on bad input (nothing on stdout).
    """
    options = AlertOptions(
        gpu_node_labels=gpu_node_labels or DEFAULT_GPU_NODE_LABELS,
        daemonset_regex=daemonset_regex,
        namespace=namespace,
        rule_labels=_labels(rule_labels),
        gpu=GpuAlertOptions(temperature_threshold=temperature_threshold, plugin_job_regex=plugin_job_regex),
    )
    text = render_rule_file(options) if plain else render_prometheus_rule(options)
    return Outcome(EXIT_OK, {"documents": yaml_documents(text)}, text, verbatim=True)
