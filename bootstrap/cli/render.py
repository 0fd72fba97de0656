"""`gpunode render`: print what gpunode would apply or write, with no host and no cluster."""

from __future__ import annotations

from typing import cast

import click
from click.core import ParameterSource

from gpunode.bootstrap.cli.contract import EXIT_OK, ContractGroup, Outcome, output_option
from gpunode.bootstrap.cli.kube_options import parse_tolerations, toleration_option
from gpunode.bootstrap.cli.plugin_config_options import plugin_config_options, plugin_configs_from
from gpunode.bootstrap.cli.render_agent import agent_command
from gpunode.bootstrap.cli.render_alerts import alerts_command, yaml_documents
from gpunode.bootstrap.cli.render_containerd import containerd_command
from gpunode.bootstrap.cli.render_dashboard import dashboard_command
from gpunode.bootstrap.cli.telemetry_options import telemetry_options
from gpunode.bootstrap.core.kube.manifest_templates import dump_yaml
from gpunode.bootstrap.core.kube.manifests import render_manifests
from gpunode.bootstrap.core.kube.plugin_deployment import (
    MIG_STRATEGIES,
    MODES,
    NVIDIA_PLUGIN_IMAGE,
    PLUGINS,
    MigStrategy,
    Mode,
    Plugin,
    PluginDeployment,
    library_file_version,
)
from gpunode.bootstrap.core.kube.telemetry import pod_monitor
from gpunode.bootstrap.errors import UserError

_MANIFEST_OPTIONS = (
    "lib_path",
    "driver_version",
    "plugin",
    "mode",
    "image",
    "namespace",
    "mig_strategy",
    "kubelet_root",
    "fail_on_init_error",
    "tolerations",
    "plugin_config",
    "sharing",
    "replicas",
    "metrics_addr",
    "node_labels",
    "prometheus_operator",
)


@click.group("render", cls=ContractGroup, invoke_without_command=True, empty_body={"documents": []})
@click.option(
    "--lib-path",
    metavar="FILE",
    help="The node's real NVML library file, e.g. "
    "/usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.535.261.03 "
    "(`readlink -f` of libnvidia-ml.so.1 on the node), never the .so.1 symlink. "
    "Required in mount mode.",
)
@click.option(
    "--driver-version",
    metavar="VERSION",
    help="Driver version the DaemonSet is named and node-selected by. Default: read "
    "from the --lib-path file name (libnvidia-ml.so.<version>); required in "
    "runtime mode without --lib-path.",
)
@click.option(
    "--plugin",
    type=click.Choice(PLUGINS),
    default="bundled",
    show_default=True,
    help="bundled: gpunode's own plugin; nvidia: NVIDIA's k8s-device-plugin image.",
)
@click.option(
    "--mode",
    type=click.Choice(MODES),
    default="mount",
    show_default=True,
    help="mount: mount the library file, /dev, privileged; runtime: runtimeClassName "
    "nvidia, the NVIDIA runtime injects library and devices, SYS_ADMIN only.",
)
@click.option(
    "--image",
    metavar="REF",
    help=f"Plugin image. Default: ghcr.io/gpunode/gpunode:<gpunode version> (bundled) "
    f"or {NVIDIA_PLUGIN_IMAGE} (nvidia).",
)
@click.option("--namespace", default="kube-system", show_default=True, metavar="NS")
@click.option(
    "--mig-strategy",
    type=click.Choice(MIG_STRATEGIES),
    default="none",
    show_default=True,
    help="MIG exposure; single or mixed also turns on MIG monitoring (SYS_ADMIN).",
)
@click.option(
    "--kubelet-root",
    default="/var/lib/kubelet",
    show_default=True,
    metavar="DIR",
    help="The kubelet's --root-dir on the nodes; its device-plugins dir is mounted.",
)
@click.option(
    "--fail-on-init-error/--no-fail-on-init-error",
    default=True,
    show_default=True,
    help="Crash the plugin pod when NVML cannot start, so the failure shows instead of a Running pod with zero GPUs.",
)
@plugin_config_options
@toleration_option
@telemetry_options
@click.option(
    "--prometheus-operator",
    is_flag=True,
    help="Also a PodMonitor (monitoring.coreos.com/v1) that scrapes the bundled plugin's metrics port.",
)
@output_option
@click.pass_context
def render(
    ctx: click.Context,
    lib_path: str | None,
    driver_version: str | None,
    plugin: str,
    mode: str,
    image: str | None,
    namespace: str,
    mig_strategy: str,
    kubelet_root: str,
    fail_on_init_error: bool,
    plugin_config: tuple[str, ...],
    sharing: str | None,
    replicas: int | None,
    tolerations: tuple[str, ...],
    metrics_addr: str,
    node_labels: str,
    prometheus_operator: bool,
    output: str,
) -> Outcome | None:
    """Print the RuntimeClass and device plugin DaemonSet as a multi-document YAML stream.

    \b
    Example, for a Debian 12 node with driver 535.261.03:
      gpunode render --lib-path \\
        /usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.535.261.03 | kubectl apply -f -

    With --plugin-config or --sharing, also the ConfigMap of device plugin configs and the
    service account that lets the plugin read its node's label nvidia.com/device-plugin.config:
      gpunode render --lib-path ... --sharing time-slicing --replicas 4

    The options below apply to these manifests only. Other configuration (such as the
    containerd drop-in) is printed by the subcommands listed under Commands, each with
    its own --help. Exit status 0 when printed, 2 on bad input (the reason on stderr,
    nothing on stdout; with --output json the envelope with the error).
    """
    if ctx.invoked_subcommand is not None:
        given = [
            name for name in _MANIFEST_OPTIONS if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)
        ]
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise UserError(
                f"{flags} belong to the manifests `gpunode render` prints, not to "
                f"`gpunode render {ctx.invoked_subcommand}`.",
                f"Run `gpunode render {ctx.invoked_subcommand} --help` for its own options.",
            )
        return None
    if lib_path is None and mode == "mount":
        raise UserError(
            "Mount mode needs the node's real NVML library file, and --lib-path was not given.",
            "Pass --lib-path with the file libnvidia-ml.so.1 resolves to on the node "
            "(`readlink -f /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1` there), or use "
            "--mode runtime with --driver-version.",
        )
    if driver_version is None:
        if lib_path is None:
            raise UserError(
                "Runtime mode without --lib-path has no file name to read the driver version from.",
                "Pass --driver-version (the node's driver, e.g. 535.261.03: `cat /sys/module/nvidia/version` there).",
            )
        driver_version = library_file_version(lib_path)
    deployment = PluginDeployment(
        driver_version=driver_version,
        lib_path=lib_path,
        plugin=cast(Plugin, plugin),  # click.Choice has checked these three
        mode=cast(Mode, mode),
        mig_strategy=cast(MigStrategy, mig_strategy),
        image=image,
        namespace=namespace,
        kubelet_root=kubelet_root,
        fail_on_init_error=fail_on_init_error,
        tolerations=parse_tolerations(tolerations),
        plugin_configs=plugin_configs_from(plugin_config, sharing, replicas),
        metrics_addr=metrics_addr if plugin == "bundled" or metrics_addr == "off" else None,
        node_labels=node_labels,
    )
    text = render_manifests(deployment)
    if prometheus_operator:
        text += f"---\n{dump_yaml(pod_monitor(deployment)).rstrip()}\n"
    return Outcome(EXIT_OK, {"documents": yaml_documents(text)}, text, verbatim=True)


render.add_command(containerd_command)
render.add_command(alerts_command)
render.add_command(dashboard_command)
render.add_command(agent_command)
