"""`gpunode verify NODE...`: does each node advertise its GPUs in Allocatable?"""

from __future__ import annotations

import click

from gpunode.bootstrap.cli.contract import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    ContractCommand,
    Outcome,
    output_option,
)
from gpunode.bootstrap.cli.kube_options import kube_access, kube_options, parse_tolerations, toleration_option
from gpunode.bootstrap.cli.params import FiniteFloatRange
from gpunode.bootstrap.core.kube.manifests import DEFAULT_VERIFY_IMAGE
from gpunode.bootstrap.errors import GpunodeError, UserError


@click.command("verify", cls=ContractCommand, empty_body={"nodes": []})
@click.argument("nodes", nargs=-1, required=True, metavar="NODE...")
@click.option(
    "--expect",
    type=click.IntRange(0, 4096),
    metavar="N",
    help="GPUs each node must advertise. Default: what gpunode bootstrap recorded on the "
    "node (annotation gpunode.io/gpu-count), else the node's capacity.",
)
@click.option(
    "--timeout",
    type=FiniteFloatRange(0, 3600),
    default=60,
    show_default=True,
    metavar="SECONDS",
    help="Wait up to this long for every node to be OK (0: look once).",
)
@kube_options
@click.option("--ssh-key", metavar="FILE", help="SSH private key for --kube-host.")
@click.option("--ssh-config", metavar="FILE", help="ssh_config file for --kube-host.")
@click.option("--known-hosts", metavar="FILE", help="known_hosts file for --kube-host.")
@click.option(
    "--workload",
    is_flag=True,
    help="Also run a pod with runtimeClassName nvidia and nvidia.com/gpu: 1 on each OK node; "
    "its `nvidia-smi -L` must name a GPU. The pod is deleted afterwards.",
)
@click.option(
    "--workload-image",
    default=DEFAULT_VERIFY_IMAGE,
    show_default=True,
    metavar="REF",
    help="Image of the workload pod (any glibc image: the NVIDIA runtime injects nvidia-smi).",
)
@click.option("--workload-namespace", default="default", show_default=True, metavar="NS")
@click.option(
    "--workload-timeout",
    type=FiniteFloatRange(1, 3600),
    default=120,
    show_default=True,
    metavar="SECONDS",
    help="How long the workload pod may take to finish.",
)
@toleration_option
@output_option
def verify(
    nodes: tuple[str, ...],
    expect: int | None,
    timeout: float,
    kubeconfig: str | None,
    kube_context: str | None,
    kube_host: str | None,
    kubectl_path: str,
    ssh_key: str | None,
    ssh_config: str | None,
    known_hosts: str | None,
    workload: bool,
    workload_image: str,
    workload_namespace: str,
    workload_timeout: float,
    tolerations: tuple[str, ...],
    output: str,
) -> Outcome:
    """Check that each NODE's Allocatable nvidia.com/gpu equals its GPUs, waiting up to --timeout.

    \b
    Verdicts, each with its likely cause and fix:
      OK       Allocatable nvidia.com/gpu equals the GPUs expected
      absent   no device plugin has registered on the node (the key is missing)
      zero     the value is 0: the plugin is gone, or every GPU is unhealthy (F9)
      fewer    GPUs missing (the plugin does not see them) or unhealthy, named
      more     more than expected (the record is out of date)
    Exit status: 0 every node OK; 1 a node is not OK; 2 could not check (no cluster,
    no such node, bad input).

    \b
    Examples:
      gpunode verify gpu01 gpu02
      gpunode verify gpu01 --expect 8 --timeout 300 --workload --output json
    """
    from gpunode.bootstrap.cluster.kubectl import Kubectl
    from gpunode.bootstrap.cluster.verify import VerifyRequest, verify_nodes

    for name in nodes:
        if not name or len(name) > 253 or any(c in " /" or ord(c) < 32 or ord(c) == 127 for c in name):
            raise UserError(
                f"{name!r} is not a node name (at most 253 characters, no spaces or '/').",
                fix="give node names as `kubectl get nodes` shows them",
            )
    access = kube_access(
        kubeconfig=kubeconfig,
        kube_context=kube_context,
        kube_host=kube_host,
        kubectl_path=kubectl_path,
        ssh_key=ssh_key,
        ssh_config=ssh_config,
        known_hosts=known_hosts,
    )
    request = VerifyRequest(
        nodes=nodes,
        expect=expect,
        timeout=timeout,
        workload=workload,
        workload_namespace=workload_namespace,
        workload_image=workload_image,
        workload_timeout=workload_timeout,
        tolerations=parse_tolerations(tolerations),
    )
    try:
        checks = verify_nodes(Kubectl(access), request)
    except UserError:
        raise
    except GpunodeError as exc:
        # Could not check: no cluster, refused credentials, kubectl failing.
        return Outcome(EXIT_BAD_INPUT, {"nodes": []}, error=exc)
    error = None
    unchecked = [c for c in checks if not c.verdict.checked]
    if unchecked:
        code = EXIT_BAD_INPUT
        error = GpunodeError(
            "could not check " + "; ".join(f"{c.verdict.node}: {c.verdict.headline}" for c in unchecked),
            fix=unchecked[0].verdict.fix,
        )
    elif all(c.ok for c in checks):
        code = EXIT_OK
    else:
        code = EXIT_FAILED
    lines = []
    for check in checks:
        head, *rest = check.lines()
        lines.append(f"{check.verdict.node}: {head}")
        lines += [f"  {line}" for line in rest]
    return Outcome(code, {"nodes": [c.as_dict() for c in checks]}, "\n".join(lines), error)
