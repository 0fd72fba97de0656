"""`gpunode bootstrap HOST...`: bring hosts to working Kubernetes GPU nodes."""

from __future__ import annotations

import sys
from typing import Any

import click

from gpunode.bootstrap.cli.contract import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    ContractCommand,
    Outcome,
    output_option,
    set_interrupt_report,
)
from gpunode.bootstrap.cli.kube_options import kube_access, kube_options, parse_tolerations, toleration_option
from gpunode.bootstrap.cli.params import FiniteFloatRange
from gpunode.bootstrap.cli.plugin_config_options import plugin_config_options, plugin_configs_from
from gpunode.bootstrap.cli.ssh_options import ssh_options
from gpunode.bootstrap.cli.telemetry_options import telemetry_options
from gpunode.bootstrap.core.kube.cluster_plan import ClusterSettings, validate_cluster_settings
from gpunode.bootstrap.core.kube.plugin_deployment import MODES, NVIDIA_PLUGIN_IMAGE, PLUGINS
from gpunode.bootstrap.core.kube.rollout_plan import parse_max_unavailable
from gpunode.bootstrap.core.kube.rollout_text import format_rollout
from gpunode.bootstrap.core.report import format_reports
from gpunode.bootstrap.core.settings import resolve_settings
from gpunode.bootstrap.errors import UserError


def _confirm(plan: str) -> bool:
    click.echo("gpunode will make these changes:\n" + plan, err=True)
    return click.confirm("Apply them?", default=False, err=True)


@click.command("bootstrap", cls=ContractCommand, empty_body={"hosts": []})
@click.argument("hosts", nargs=-1, metavar="[HOST]...")
@click.option(
    "-i",
    "--inventory",
    metavar="FILE",
    help="A pyinfra inventory file (see inventory/fleet.py, inventory/homelab.py) "
    "instead of HOST arguments; settings come from its data as gpunode_<setting>.",
)
@ssh_options
@click.option(
    "--sudo/--no-sudo",
    default=None,
    help="Run commands through sudo on the hosts (needed when the SSH user is not root).",
)
@click.option(
    "--kernel-module",
    type=click.Choice(["dkms", "precompiled", "none"]),
    help="How the nvidia kernel module gets there: built by DKMS, the distro's signed "
    "precompiled modules, or none (managed elsewhere; userspace only). Default dkms.",
)
@click.option("--driver-branch", metavar="BRANCH", help="NVIDIA driver branch, e.g. 535.")
@click.option(
    "--driver-version",
    metavar="VERSION",
    help="Exact driver version (535.261.03, or the distro package version). Default: "
    "keep the installed one; on a new host, the branch's current release. Pinned.",
)
@click.option(
    "--open-modules", "driver_flavour", flag_value="open", default=None, help="Use NVIDIA's open kernel modules."
)
@click.option("--toolkit-version", metavar="VERSION", help="NVIDIA container toolkit version, e.g. 1.17.8-1.")
@click.option(
    "--toolkit-packages",
    metavar="DIR",
    help="Install the container toolkit from this local directory of .deb/.rpm files "
    "(air-gapped hosts) instead of NVIDIA's repository.",
)
@click.option("--containerd-config", metavar="PATH", help="containerd's config.toml on the hosts.")
@click.option("--runtime-path", metavar="PATH", help="The toolkit's runtime binary on the hosts.")
@click.option(
    "--in-place",
    "containerd_in_place",
    is_flag=True,
    default=None,
    help="Edit containerd's config.toml itself instead of adding a drop-in file.",
)
@click.option(
    "--set-default-runtime",
    is_flag=True,
    default=None,
    help="Also make nvidia containerd's default runtime (pods still need RuntimeClass).",
)
@click.option(
    "--containerd-restart-command",
    metavar="CMD",
    help="How to restart containerd on hosts without systemd (runit, s6, supervisord).",
)
@click.option(
    "--plugin-mode",
    type=click.Choice(["daemonset", "host"]),
    help="daemonset: the plugin runs in the cluster; host: a systemd service on the node.",
)
@click.option(
    "--plugin-package",
    metavar="SPEC|FILE",
    help="What pip installs on the node in host plugin mode (default gpunode==<this version>).",
)
@click.option(
    "--plugin-wheels",
    metavar="DIR",
    help="Host plugin mode without an index: upload these wheels (gpunode and click, grpcio, "
    "protobuf, nvidia-ml-py for the node's Python) and install only from them.",
)
@click.option(
    "--allow-no-gpu",
    is_flag=True,
    default=None,
    help="Go on when the host has no NVIDIA GPU (testing, image building).",
)
@click.option(
    "--install-containerd",
    is_flag=True,
    default=None,
    help="A host without a container runtime gets the distribution's containerd (Debian, Ubuntu), "
    "configured from `containerd config default` with runc's SystemdCgroup matching the init system, "
    "as kubeadm's documentation says. Without it, such a host is refused before any change.",
)
@click.option("--reboot", is_flag=True, default=None, help="Reboot hosts that need it and wait for them.")
@click.option("--skip-cluster", is_flag=True, help="Node steps only: no kubectl, no verify.")
@click.option(
    "--max-unavailable",
    default="1",
    show_default=True,
    metavar="N|P%",
    help="Nodes a disruptive run (driver, containerd restart, reboot, plugin replaced) takes out of "
    "service at once: cordoned, drained, upgraded, proven, uncordoned before the next batch.",
)
@click.option(
    "--drain-timeout",
    type=click.FloatRange(0, 86400),
    default=600,
    show_default=True,
    metavar="SECONDS",
    help="How long a node's drain may take (evictions a PodDisruptionBudget refuses are retried).",
)
@click.option(
    "--delete-emptydir-data",
    is_flag=True,
    help="Drain pods with emptyDir volumes too (their emptyDir data is lost).",
)
@click.option(
    "--max-parallel-reboots",
    type=click.IntRange(1, 500),
    metavar="N",
    help="With --skip-cluster --reboot: at most N hosts rebooting at once (default: --parallel).",
)
@kube_options
@telemetry_options
@click.option(
    "--plugin",
    type=click.Choice(PLUGINS),
    default="bundled",
    show_default=True,
    help="bundled: gpunode's own device plugin; nvidia: NVIDIA's k8s-device-plugin image (same mounts).",
)
@click.option(
    "--mode",
    type=click.Choice(MODES),
    default="mount",
    show_default=True,
    help="mount: the node's real NVML library file mounted, /dev, privileged; runtime: "
    "runtimeClassName nvidia, the NVIDIA runtime injects library and devices.",
)
@click.option(
    "--image",
    metavar="REF",
    help="Device plugin image. Default: ghcr.io/gpunode/gpunode:<gpunode version> (bundled) "
    f"or {NVIDIA_PLUGIN_IMAGE} (nvidia).",
)
@click.option(
    "--namespace",
    default="kube-system",
    show_default=True,
    metavar="NS",
    help="Namespace of the device plugin DaemonSets.",
)
@toleration_option
@click.option(
    "--rollout-timeout",
    type=FiniteFloatRange(0, 3600),
    default=180,
    show_default=True,
    metavar="SECONDS",
    help="How long the device plugin may take to run on a node.",
)
@click.option(
    "--verify-timeout",
    type=FiniteFloatRange(0, 3600),
    default=120,
    show_default=True,
    metavar="SECONDS",
    help="How long Allocatable nvidia.com/gpu may take to reach the GPU count.",
)
@plugin_config_options
@click.option("--dry-run", is_flag=True, help="Show the plan and file diffs; change nothing.")
@click.option("-y", "--yes", is_flag=True, help="Apply without asking.")
@click.option("--parallel", type=click.IntRange(1, 500), default=10, show_default=True, help="Hosts worked on at once.")
@output_option
@click.pass_context
def bootstrap(
    ctx: click.Context,
    /,
    hosts: tuple[str, ...],
    inventory: str | None,
    ssh_user: str | None,
    ssh_port: int | None,
    ssh_key: str | None,
    ssh_config: str | None,
    known_hosts: str | None,
    strict_host_keys: bool,
    sudo: bool | None,
    skip_cluster: bool,
    max_unavailable: str,
    drain_timeout: float,
    delete_emptydir_data: bool,
    max_parallel_reboots: int | None,
    kubeconfig: str | None,
    kube_context: str | None,
    kube_host: str | None,
    kubectl_path: str,
    plugin: str,
    mode: str,
    image: str | None,
    namespace: str,
    tolerations: tuple[str, ...],
    rollout_timeout: float,
    verify_timeout: float,
    metrics_addr: str,
    node_labels: str,
    dry_run: bool,
    yes: bool,
    parallel: int,
    output: str,
    **settings: Any,
) -> Outcome:
    """Bring HOSTs (or an inventory) to working Kubernetes GPU nodes, idempotently.

    \b
    Steps per host: preflight, driver, nouveau, toolkit, containerd, nvml-library,
    plugin-service, state on the host; then, with kubectl, runtimeclass, node-label,
    device-plugin (one DaemonSet per driver version and host layout, rolled out) and
    verify (Allocatable nvidia.com/gpu = the GPUs found). Each reports changed /
    unchanged / failed / skipped. A second run on an unchanged host changes nothing.
    After a driver upgrade, a run moves the node to the new driver's DaemonSet.

    SSH host keys: a host met for the first time has its key recorded in the
    known-hosts file (~/.ssh/known_hosts, or --known-hosts, or your SSH config's
    UserKnownHostsFile; created 0600 in a 0700 directory when missing); a host whose
    key differs from the recorded one is refused. --strict-host-keys refuses unknown
    hosts too.

    \b
    Examples:
      gpunode bootstrap gpu01.example --ssh-user admin --sudo
      gpunode bootstrap -i inventory/fleet.py --dry-run
      sudo gpunode bootstrap @local --kernel-module none --yes
      gpunode bootstrap gpu01 gpu02 --kubeconfig ~/.kube/prod --context gpu
      gpunode bootstrap gpu01 --kube-host admin@cp1 --toleration dedicated=ml:NoSchedule
    """
    from gpunode.bootstrap.cli.progress import BootstrapProgress
    from gpunode.bootstrap.orchestration.green import patch_for_pyinfra

    patch_for_pyinfra()
    from gpunode.bootstrap.orchestration.bootstrap import BootstrapRequest, ClusterRequest, run_bootstrap
    from gpunode.bootstrap.orchestration.targets import check_inventory, make_inventory, ssh_data

    if not skip_cluster and max_parallel_reboots is not None:
        raise UserError(
            "--max-parallel-reboots is for --skip-cluster runs.",
            fix="with the cluster, --max-unavailable decides how many nodes are out (and rebooting) at once",
        )
    budget = parse_max_unavailable(max_unavailable)
    if not dry_run and not yes and not sys.stdin.isatty():
        raise UserError(
            "bootstrap changes hosts and this is not an interactive terminal.",
            fix="pass --yes to apply, or --dry-run to see the plan",
        )
    # --plugin-config names files for the cluster's ConfigMap; a host's own choice of config
    # is inventory data (gpunode_plugin_config, or gpunode_sharing with gpunode_replicas).
    config_files = plugin_configs_from(settings.pop("plugin_config"), None, None)
    # Everything is checked before any host is contacted: flags, then every host's
    # inventory data (named with its file and host), then files on this machine.
    resolve_settings("command line", {}, settings)
    cluster = None
    if not skip_cluster:
        cluster_settings = ClusterSettings(
            plugin=plugin,  # type: ignore[arg-type]
            mode=mode,  # type: ignore[arg-type]
            image=image,
            namespace=namespace,
            tolerations=parse_tolerations(tolerations),
            rollout_timeout=rollout_timeout,
            verify_timeout=verify_timeout,
            plugin_config_files=config_files.configs if config_files is not None else (),
            metrics_addr=metrics_addr if plugin == "bundled" or metrics_addr == "off" else None,
            node_labels=node_labels,
        )
        validate_cluster_settings(cluster_settings)
        from gpunode.bootstrap.image.published import default_image_published, unpublished_image_notice

        notice = unpublished_image_notice(plugin, image, settings.get("plugin_mode"), default_image_published())
        if notice:
            click.echo(f"gpunode: warning: {notice}", err=True)
        access = kube_access(
            kubeconfig=kubeconfig,
            kube_context=kube_context,
            kube_host=kube_host,
            kubectl_path=kubectl_path,
            ssh_key=ssh_key,
            ssh_config=ssh_config,
            known_hosts=known_hosts,
            ssh_user=ssh_user,
        )
        cluster = ClusterRequest(access, cluster_settings)
    override = ssh_data(
        user=ssh_user,
        port=ssh_port,
        key=ssh_key,
        config_file=ssh_config,
        known_hosts=known_hosts,
        sudo=sudo,
        strict_host_keys=strict_host_keys,
    )
    pyinfra_inventory = make_inventory(hosts, inventory, override)
    check_inventory(pyinfra_inventory, settings, inventory or "command line")
    progress = BootstrapProgress(executing=yes and not dry_run)
    set_interrupt_report(ctx, progress.interrupt_report)

    def confirm(plan: str) -> bool:
        progress.executing = _confirm(plan)
        return progress.executing

    request = BootstrapRequest(
        overrides=settings,
        dry_run=dry_run,
        parallel=parallel,
        confirm=None if (yes or dry_run) else confirm,
        progress=progress,
        cluster=cluster,
        max_parallel_reboots=max_parallel_reboots,
    )
    if cluster is None:
        result = run_bootstrap(pyinfra_inventory, request)
        return _outcome(result.reports, result.plan, None, dry_run=dry_run)
    from gpunode.bootstrap.orchestration.rollout import RolloutRequest, run_rollout

    rollout = run_rollout(
        pyinfra_inventory,
        RolloutRequest(
            bootstrap=request,
            max_unavailable=budget,
            drain_timeout=drain_timeout,
            delete_emptydir_data=delete_emptydir_data,
            confirm_nowhere=None if yes else _confirm_nowhere,
        ),
    )
    return _outcome(rollout.reports, rollout.plan, rollout.as_dict(), dry_run=dry_run, stopped=rollout.stopped)


def _outcome(
    reports: list[Any], plan: str, rollout: dict[str, Any] | None, *, dry_run: bool, stopped: str | None = None
) -> Outcome:
    text = format_reports(reports, dry_run=dry_run)
    body: dict[str, Any] = {"hosts": [r.as_dict(dry_run) for r in reports]}
    if rollout is not None:
        body["rollout"] = rollout
        # Before the hosts' steps, so that a host's last step (verify) still ends the text.
        text = format_rollout(rollout, dry_run=dry_run).lstrip("\n") + "\n\n" + text
    if dry_run and plan:
        text += "\n\nThe plan, with file diffs:\n" + plan
    failed = [report for report in reports if not report.ok]
    if stopped is None and not failed:
        return Outcome(EXIT_OK, body, text)
    if stopped is None and all(report.only_unchecked for report in failed):
        # Nothing found wrong, but a part could not be checked (a dry run without its
        # cluster): the contract's "could not check".
        return Outcome(EXIT_BAD_INPUT, body, text)
    return Outcome(EXIT_FAILED, body, text)


def _confirm_nowhere(question: str) -> bool:
    return click.confirm(question + " Drain it anyway?", default=False, err=True)
