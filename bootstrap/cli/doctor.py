"""`gpunode doctor [HOST...]`: name the broken link of a GPU node, with evidence and fix."""

from __future__ import annotations

import click

from gpunode.bootstrap.cli.contract import EXIT_BAD_INPUT, ContractCommand, Outcome, output_option
from gpunode.bootstrap.cli.ssh_options import ssh_options
from gpunode.bootstrap.errors import GpunodeError, UserError
from gpunode.bootstrap.local_paths import check_local_file


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


@click.command("doctor", cls=ContractCommand, empty_body={"healthy": False, "verdicts": [], "not_checked": []})
@click.argument("hosts", nargs=-1, metavar="[HOST]...")
@click.option("-i", "--inventory", metavar="FILE", help="A pyinfra inventory file instead of HOST arguments.")
@click.option(
    "--node",
    "nodes",
    multiple=True,
    metavar="NAME",
    help="A Kubernetes node to judge (repeatable). With one HOST: that host's node name, "
    "when it differs from the host's.",
)
@click.option("--pod", metavar="NS/NAME", help="A GPU pod that does not work (Pending, crashing, no GPU inside).")
@click.option("--kubeconfig", metavar="FILE", help="kubeconfig for kubectl (default: kubectl's own).")
@click.option("--context", metavar="NAME", help="kubeconfig context.")
@click.option(
    "--kube-host", metavar="HOST", help="Run kubectl on this control host over SSH (with the SSH options below)."
)
@click.option("--no-cluster", is_flag=True, help="Judge the HOSTs only; do not run kubectl.")
@ssh_options
@click.option("--sudo/--no-sudo", default=None, help="Run the (read-only) commands through sudo on the hosts.")
@click.option("--containerd-config", metavar="PATH", help="containerd's config.toml on the hosts.")
@click.option("--parallel", type=click.IntRange(1, 500), default=10, show_default=True, help="Hosts read at once.")
@output_option
def doctor(
    hosts: tuple[str, ...],
    inventory: str | None,
    nodes: tuple[str, ...],
    pod: str | None,
    kubeconfig: str | None,
    context: str | None,
    kube_host: str | None,
    no_cluster: bool,
    ssh_user: str | None,
    ssh_port: int | None,
    ssh_key: str | None,
    ssh_config: str | None,
    known_hosts: str | None,
    strict_host_keys: bool,
    sudo: bool | None,
    containerd_config: str | None,
    parallel: int,
    output: str,
) -> Outcome:
    """Walk the GPU chain of nodes and name the link that broke, its evidence and its fix.

    \b
    The chain, bottom up: driver -> container toolkit -> containerd runtime "nvidia"
    -> RuntimeClass -> device plugin (DaemonSet, NVML) -> kubelet registration
    -> Allocatable nvidia.com/gpu -> the GPU pod. The lowest broken link is listed
    first for each node: it explains the rest. Ids F1..F17 are the well-known failure
    modes; other ids are gpunode's own (docs/failure-modes.md lists them all). Works
    on nodes gpunode never saw (by hand, NVIDIA's Helm chart, the GPU Operator).
    Everything it runs only reads.

    \b
    HOSTs are read over SSH (driver, NVML, toolkit, containerd, kubelet sockets);
    the cluster with kubectl (node, DaemonSets and their pods' logs, RuntimeClass,
    ClusterPolicy, events). Without HOST, --node or --pod: every GPU node.

    \b
    Examples:
      gpunode doctor gpu01.example --ssh-user admin --sudo
      gpunode doctor --node gpu-7 --pod ml/train-0
      gpunode doctor gpu01.example --no-cluster --output json

    Exit status: 0 healthy, 1 problems found, 2 could not check (or bad input).
    """
    from gpunode.bootstrap.cluster.kubectl import KubeAccess, SshTarget
    from gpunode.bootstrap.core.doctor.engine import format_text

    target_pod = None
    inventory_object = None
    if kubeconfig is not None and not kube_host:
        check_local_file("--kubeconfig", kubeconfig)
    if no_cluster and (kubeconfig or context or kube_host or pod):
        raise UserError(
            "--no-cluster leaves kubectl out, but --kubeconfig, --context, --kube-host or --pod need it.",
            fix="drop --no-cluster, or the cluster options",
        )
    if no_cluster and not hosts and not inventory:
        raise UserError("--no-cluster with no HOST leaves nothing to check.", fix="name a host: gpunode doctor HOST")
    override: dict[str, object] = {}
    if hosts or inventory or kube_host:
        # pyinfra (imported by the targets module) is only needed when SSH is.
        from gpunode.bootstrap.orchestration.targets import ssh_data

        override = ssh_data(
            user=ssh_user,
            port=ssh_port,
            key=ssh_key,
            config_file=ssh_config,
            known_hosts=known_hosts,
            sudo=sudo,
            strict_host_keys=strict_host_keys,
        )
    if hosts or inventory:
        from gpunode.bootstrap.orchestration.green import patch_for_pyinfra

        patch_for_pyinfra()
        from gpunode.bootstrap.orchestration.targets import make_inventory

        inventory_object = make_inventory(hosts, inventory, override)
    from gpunode.bootstrap.orchestration.doctor import DoctorRequest, parse_pod, run_doctor

    if pod:
        target_pod = parse_pod(pod)
    kube = None
    if not no_cluster:
        control = None
        if kube_host:
            from gpunode.bootstrap.orchestration.targets import parse_target

            name, data = parse_target(kube_host)
            control = SshTarget(
                host=name,
                user=data.get("ssh_user") or ssh_user,
                port=data.get("ssh_port") or ssh_port,
                key=_text(override.get("ssh_key")),
                config_file=_text(override.get("ssh_config_file")),
                known_hosts=_text(override.get("ssh_known_hosts_file")),
            )
        kube = KubeAccess(kubeconfig=kubeconfig, context=context, control_host=control)
    request = DoctorRequest(
        inventory=inventory_object,
        nodes=nodes,
        pod=target_pod,
        kube=kube,
        containerd_config=containerd_config,
        parallel=parallel,
    )
    diagnosis = run_doctor(request)
    body = diagnosis.as_dict()
    body.pop("exit_code", None)  # the envelope's
    error = None
    if diagnosis.exit_code == EXIT_BAD_INPUT:
        asked = [item for item in diagnosis.not_checked if item.asked]
        error = GpunodeError(
            "could not check " + "; ".join(f"{item.subject}: {item.what} ({item.why})" for item in asked),
            fix="see what was not checked above; fix access (SSH, kubeconfig) or the names given, then run again",
        )
    return Outcome(diagnosis.exit_code, body, format_text(diagnosis), error)
