"""`gpunode plugin serve|list` (also `python -m gpunode.plugin`).

Every flag has a GPUNODE_* environment variable (the DaemonSet sets those); booleans
from the environment accept true/false/1/0. Only click and the standard library are
imported here; NVML and gRPC come in with the command that needs them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from gpunode.plugin.config import (
    DEFAULT_FATAL_XIDS,
    DEFAULT_IGNORED_XIDS,
    DEFAULT_KUBELET_DIR,
    DEFAULT_RECOVERY_SECONDS,
    DEFAULT_RESOURCE_NAME,
    ConfigError,
    PluginConfig,
    parse_metrics_addr,
    parse_xid_list,
    pod_resources_default,
    validate_resource_name,
)

F = TypeVar("F", bound=Callable[..., Any])


def _checked(parse: Callable[[str], Any]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        try:
            return parse(value)
        except ConfigError as exc:
            raise click.BadParameter(str(exc)) from exc

    return callback


def _xids(values: frozenset[int]) -> str:
    return ",".join(str(x) for x in sorted(values))


def device_options(command: F) -> F:
    """The options that decide which devices are advertised, shared by serve and list."""
    for option in reversed(
        [
            click.option(
                "--resource-name",
                envvar="GPUNODE_RESOURCE_NAME",
                default=DEFAULT_RESOURCE_NAME,
                show_default=True,
                show_envvar=True,
                callback=_checked(validate_resource_name),
                help="Extended resource name for full GPUs (MIG resources take its domain).",
            ),
            click.option(
                "--mig-strategy",
                envvar="GPUNODE_MIG_STRATEGY",
                default="none",
                show_default=True,
                show_envvar=True,
                type=click.Choice(["none", "single", "mixed"]),
                help="none: full GPUs only; single: every GPU's MIG devices as the one resource; "
                "mixed: one resource per MIG profile, <domain>/mig-<profile>.",
            ),
            click.option(
                "--device-id-strategy",
                envvar="GPUNODE_DEVICE_ID_STRATEGY",
                default="uuid",
                show_default=True,
                show_envvar=True,
                type=click.Choice(["uuid", "index"]),
                help="Advertise devices by UUID, or by index (GPU N, MIG device N:M).",
            ),
        ]
    ):
        command = option(command)
    return command


@click.group("plugin", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def plugin_group() -> None:
    """The bundled NVML device plugin (kubelet device plugin API v1beta1)."""


@plugin_group.command("serve")
@click.option(
    "--kubelet-dir",
    envvar="GPUNODE_KUBELET_DIR",
    default=str(DEFAULT_KUBELET_DIR),
    show_default=True,
    show_envvar=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The kubelet's device-plugins directory (kubelet.sock and the plugin's sockets).",
)
@device_options
@click.option(
    "--device-list-strategy",
    envvar="GPUNODE_DEVICE_LIST_STRATEGY",
    default="envvar",
    show_default=True,
    show_envvar=True,
    type=click.Choice(["envvar", "cdi"]),
    help="envvar: NVIDIA_VISIBLE_DEVICES in the container; cdi: CDI devices nvidia.com/gpu=<uuid>.",
)
@click.option(
    "--pass-device-specs/--no-pass-device-specs",
    envvar="GPUNODE_PASS_DEVICE_SPECS",
    default=False,
    show_default=True,
    show_envvar=True,
    help="Also hand the kubelet the device nodes (/dev/nvidiaN, nvidiactl, nvidia-uvm*) that exist.",
)
@click.option(
    "--dev-root",
    envvar="GPUNODE_DEV_ROOT",
    default="/",
    show_default=True,
    show_envvar=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the host's /dev (and /proc/driver/nvidia) are, for --pass-device-specs.",
)
@click.option(
    "--fail-on-init-error/--no-fail-on-init-error",
    envvar="GPUNODE_FAIL_ON_INIT_ERROR",
    default=True,
    show_default=True,
    show_envvar=True,
    help="Exit non-zero when NVML cannot start. Off: log the reason, stay up, advertise nothing.",
)
@click.option(
    "--health-checks/--no-health-checks",
    envvar="GPUNODE_HEALTH_CHECKS",
    default=True,
    show_default=True,
    show_envvar=True,
    help="Watch NVML XID events and report affected devices Unhealthy.",
)
@click.option(
    "--health-ignore-xids",
    envvar="GPUNODE_HEALTH_IGNORE_XIDS",
    default=_xids(DEFAULT_IGNORED_XIDS),
    show_default=True,
    show_envvar=True,
    callback=_checked(parse_xid_list),
    help="XIDs that never make a device Unhealthy (application errors).",
)
@click.option(
    "--health-fatal-xids",
    envvar="GPUNODE_HEALTH_FATAL_XIDS",
    default=_xids(DEFAULT_FATAL_XIDS),
    show_default=True,
    show_envvar=True,
    callback=_checked(parse_xid_list),
    help="XIDs after which a device stays Unhealthy until the plugin restarts.",
)
@click.option(
    "--health-recovery-seconds",
    envvar="GPUNODE_HEALTH_RECOVERY_SECONDS",
    default=DEFAULT_RECOVERY_SECONDS,
    show_default=True,
    show_envvar=True,
    type=click.FloatRange(min=0),
    help="Quiet period after which a device made Unhealthy by a non-fatal XID is Healthy again; 0: never.",
)
@click.option(
    "--metrics-addr",
    envvar="GPUNODE_METRICS_ADDR",
    default="",
    show_envvar=True,
    callback=_checked(parse_metrics_addr),
    help="host:port to serve Prometheus metrics on /metrics: GPU telemetry named as dcgm-exporter names it, "
    "and the plugin's own counters (off when empty).",
)
@click.option(
    "--node-name",
    envvar=["GPUNODE_NODE_NAME", "NODE_NAME"],
    default="",
    show_envvar=True,
    help="The Node this plugin runs on (the DaemonSet sets spec.nodeName); the Hostname label of the "
    "telemetry, and the node whose label chooses the config with --config-dir. Default: the host name.",
)
@click.option(
    "--pod-resources-socket",
    envvar="GPUNODE_POD_RESOURCES_SOCKET",
    default="",
    show_envvar=True,
    help="The kubelet's PodResources socket, for the pod, namespace and container labels of the telemetry. "
    "Default: pod-resources/kubelet.sock beside the --kubelet-dir; 'off': no pod labels.",
)
@click.option(
    "--mps-root",
    envvar=["GPUNODE_MPS_ROOT", "MPS_ROOT"],
    default=None,
    show_envvar=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Host directory the MPS control daemon shares with its clients (NVIDIA's mpsRoot; for sharing.mps).",
)
@click.option(
    "--config-file",
    envvar=["GPUNODE_CONFIG_FILE", "CONFIG_FILE"],
    default=None,
    show_envvar=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="NVIDIA's device plugin config file (version: v1): flags, resources, sharing. "
    "Flags and GPUNODE_* variables given explicitly override it.",
)
@click.option(
    "--config-dir",
    envvar=["GPUNODE_CONFIG_DIR", "CONFIG_FILE_SRCDIR"],
    default=None,
    show_envvar=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Per-node config: a directory of named configs (a mounted ConfigMap); the node label "
    "--config-label chooses one, and a change of either is applied without a restart.",
)
@click.option(
    "--config-label",
    envvar=["GPUNODE_CONFIG_LABEL", "NODE_LABEL"],
    default="nvidia.com/device-plugin.config",
    show_default=True,
    show_envvar=True,
    help="The node label naming the config to use (with --config-dir).",
)
@click.option(
    "--default-config",
    envvar=["GPUNODE_DEFAULT_CONFIG", "DEFAULT_CONFIG"],
    default=None,
    show_envvar=True,
    help="The config to use when the node has no label (then one named 'default', then the only one).",
)
@click.pass_context
@click.option(
    "--node-labels",
    envvar="GPUNODE_NODE_LABELS",
    default="auto",
    show_default=True,
    show_envvar=True,
    type=click.Choice(["auto", "nfd", "node", "off"]),
    help="GPU feature discovery's node labels (nvidia.com/gpu.product, gpu.memory, ...): nfd writes NFD's "
    "feature file, node patches this Node (RBAC: nodes get, patch); auto: nfd when NFD's directory exists, "
    "else node when running in a pod with --node-name.",
)
@click.option(
    "--node-labels-interval",
    envvar="GPUNODE_NODE_LABELS_INTERVAL",
    default=60.0,
    show_default=True,
    show_envvar=True,
    type=click.FloatRange(min=0.1),
    help="Seconds between re-applying the node labels (a lost GPU, a label removed by hand).",
)
@click.option(
    "--nfd-features-dir",
    envvar="GPUNODE_NFD_FEATURES_DIR",
    default="/etc/kubernetes/node-feature-discovery/features.d",
    show_default=True,
    show_envvar=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="NFD's local feature directory (mounted from the host).",
)
@click.option(
    "--machine-type-file",
    envvar="GPUNODE_MACHINE_TYPE_FILE",
    default="/sys/class/dmi/id/product_name",
    show_default=True,
    show_envvar=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where nvidia.com/gpu.machine is read from.",
)
def serve_command(
    ctx: click.Context,
    kubelet_dir: Path,
    resource_name: str,
    mig_strategy: str,
    device_id_strategy: str,
    device_list_strategy: str,
    pass_device_specs: bool,
    dev_root: Path,
    fail_on_init_error: bool,
    health_checks: bool,
    health_ignore_xids: frozenset[int],
    health_fatal_xids: frozenset[int],
    health_recovery_seconds: float,
    metrics_addr: tuple[str, int] | None,
    mps_root: Path | None,
    config_file: Path | None,
    config_dir: Path | None,
    config_label: str,
    default_config: str | None,
    node_name: str,
    pod_resources_socket: str,
    node_labels: str,
    node_labels_interval: float,
    nfd_features_dir: Path,
    machine_type_file: Path,
) -> None:
    """Serve the GPUs to the kubelet and keep them registered."""
    from gpunode.plugin.serve import NodeConfigs, serve

    if config_file is not None and config_dir is not None:
        raise click.UsageError("--config-file and --config-dir exclude each other: give one")
    node_configs = None
    if config_dir is not None:
        if not node_name.strip():
            raise click.UsageError("--config-dir needs --node-name (NODE_NAME; in a DaemonSet, from spec.nodeName)")
        node_configs = NodeConfigs(config_dir, node_name.strip(), config_label, default_config or None)

    kubelet_dir = kubelet_dir.absolute()
    if pod_resources_socket.strip() in ("off", "none"):
        pod_socket: Path | None = None
    elif pod_resources_socket.strip():
        pod_socket = Path(pod_resources_socket.strip()).absolute()
    else:
        pod_socket = pod_resources_default(kubelet_dir)

    config = PluginConfig(
        kubelet_dir=kubelet_dir,
        resource_name=resource_name,
        mig_strategy=mig_strategy,  # type: ignore[arg-type]  # click.Choice checked it
        device_id_strategy=device_id_strategy,  # type: ignore[arg-type]
        device_list_strategy=device_list_strategy,  # type: ignore[arg-type]
        pass_device_specs=pass_device_specs,
        dev_root=dev_root,
        fail_on_init_error=fail_on_init_error,
        health_checks=health_checks,
        health_ignore_xids=health_ignore_xids,
        health_fatal_xids=health_fatal_xids - health_ignore_xids,
        health_recovery_seconds=health_recovery_seconds,
        metrics_addr=metrics_addr,
        mps_root=mps_root,
        node_name=node_name.strip(),
        pod_resources_socket=pod_socket,
        node_labels=node_labels,  # type: ignore[arg-type]  # click.Choice checked it
        node_labels_interval=node_labels_interval,
        nfd_features_dir=nfd_features_dir,
        machine_type_file=machine_type_file,
    )
    try:
        if config_file is not None:
            config = with_config_file(config, config_file, explicit_settings(ctx))
        code = serve(config, node_configs, explicit_settings(ctx))
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    raise click.exceptions.Exit(code)


# Options that NVIDIA's config file can also set: the file gives way to them only when
# they were given (on the command line or in the environment).
_FILE_SETTINGS = (
    "mig_strategy",
    "device_id_strategy",
    "device_list_strategy",
    "pass_device_specs",
    "dev_root",
    "fail_on_init_error",
    "mps_root",
)


def explicit_settings(ctx: click.Context) -> frozenset[str]:
    given = (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)
    return frozenset(name for name in _FILE_SETTINGS if ctx.get_parameter_source(name) in given)


def with_config_file(config: PluginConfig, path: Path, explicit: frozenset[str]) -> PluginConfig:
    from gpunode.plugin.log import log_event
    from gpunode.plugin.nvidia_config import apply_file, load_config_file

    file = load_config_file(path)
    for note in file.notes:
        log_event("config_note", file=path, note=note)
    return apply_file(config, file, explicit)


@plugin_group.command("list")
@device_options
@click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option(
    "--config-file",
    envvar=["GPUNODE_CONFIG_FILE", "CONFIG_FILE"],
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help="NVIDIA's device plugin config file: show the devices (replicas, renamed resources) it gives.",
)
@click.pass_context
def list_command(
    ctx: click.Context,
    resource_name: str,
    mig_strategy: str,
    device_id_strategy: str,
    output: str,
    config_file: Path | None,
) -> None:
    """Show the devices, IDs, health and topology the plugin would advertise (from NVML)."""
    from gpunode.plugin.inventory_view import render_json, render_text
    from gpunode.plugin.nvml import NvmlInitError
    from gpunode.plugin.serve import load_devices

    config = PluginConfig(
        resource_name=resource_name,
        mig_strategy=mig_strategy,  # type: ignore[arg-type]
        device_id_strategy=device_id_strategy,  # type: ignore[arg-type]
    )
    try:
        if config_file is not None:
            config = with_config_file(config, config_file, explicit_settings(ctx))
        inventory, resources = load_devices(config)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    except NvmlInitError as exc:
        click.echo(exc.line(), err=True)
        raise click.exceptions.Exit(1) from exc
    if output == "json":
        click.echo(json.dumps(render_json(inventory, resources), indent=2))
    else:
        click.echo(render_text(inventory, resources), nl=False)
