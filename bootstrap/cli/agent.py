"""`gpunode agent`: run on a GPU node (the DaemonSet of `gpunode render agent`), check or
converge the node through the host's namespaces, publish the Node condition GPUNodeReady."""

from __future__ import annotations

import logging
import sys
import threading

import click

from gpunode.bootstrap.cli.contract import EXIT_OK, ContractCommand, Outcome, output_option
from gpunode.bootstrap.cli.kube_options import kube_options
from gpunode.bootstrap.core.kube.agent_manifests import AGENT_MODES
from gpunode.bootstrap.errors import UserError


@click.command("agent", cls=ContractCommand, empty_body={"ticks": []})
@click.option("--node-name", envvar="NODE_NAME", metavar="NAME", help="This node's name [env NODE_NAME].")
@click.option(
    "--namespace",
    envvar="POD_NAMESPACE",
    default="kube-system",
    show_default=True,
    metavar="NS",
    help="Where the ConfigMap, Leases and Events live [env POD_NAMESPACE].",
)
@click.option(
    "--mode",
    type=click.Choice(AGENT_MODES),
    default=None,
    help="check: only read; apply: converge like gpunode bootstrap. Default: apply on nodes gpunode set up "
    "(its record on the host), check on others.",
)
@click.option("--interval", type=float, default=300.0, show_default=True, metavar="SECONDS")
@click.option("--max-unavailable", type=int, default=1, show_default=True, metavar="N")
@click.option(
    "--heartbeat",
    type=float,
    default=300.0,
    show_default=True,
    metavar="SECONDS",
    help="Rewrite an unchanged condition after this long (its lastHeartbeatTime says the agent lives).",
)
@click.option("--lease-duration", type=int, default=60, show_default=True, metavar="SECONDS")
@click.option(
    "--driver-poll",
    type=float,
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="How often to look for a driver change (a file read, no process).",
)
@click.option(
    "--drain-timeout",
    type=float,
    default=600.0,
    show_default=True,
    metavar="SECONDS",
    help="How long a drain may take before the tick gives up (the node stays cordoned, the slot kept).",
)
@click.option(
    "--delete-emptydir-data", is_flag=True, help="Let the drain evict pods with emptyDir volumes (their data is lost)."
)
@click.option(
    "--host-pid",
    type=int,
    default=1,
    show_default=True,
    metavar="PID",
    help="The process whose namespaces are the host (1 in a hostPID pod).",
)
@click.option("--once", is_flag=True, help="One check, print it, exit (0 GPUNodeReady True, 1 False, 2 Unknown).")
@output_option
@kube_options
def agent(
    node_name: str | None,
    namespace: str,
    mode: str | None,
    interval: float,
    max_unavailable: int,
    heartbeat: float,
    lease_duration: int,
    driver_poll: float,
    drain_timeout: float,
    delete_emptydir_data: bool,
    host_pid: int,
    once: bool,
    output: str,
    kubeconfig: str | None,
    kube_context: str | None,
    kube_host: str | None,
    kubectl_path: str,
) -> Outcome:
    """Check (or converge) this GPU node and publish the Node condition GPUNodeReady.

    \b
    Runs in the DaemonSet of `gpunode render agent` (hostPID, privileged): node commands run
    inside the host's namespaces (nsenter into --host-pid). Each check ends in the Node's
    condition GPUNodeReady: True, or False with the first verdict id of doctor's chain as
    its reason and the cause and fix as its message; an Event on the Node when it changes.
    Checks run on start, every --interval, and when the driver changes. With --mode apply,
    disruptive steps wait for a slot of the Lease budget (--max-unavailable).

    Each check is logged on standard error (`agent_tick node=... status=... reason=...`).
    --once: one check; exit 0 when True, 1 when False, 2 when Unknown; --output json prints
    it as `ticks`. Without --once it runs until SIGTERM (exit 143, as every command)."""
    from gpunode.bootstrap.cluster.kubectl import KubeAccess
    from gpunode.bootstrap.orchestration.agent import AgentRequest, TickOutcome, run_agent

    if not node_name:
        raise UserError("No node name.", fix="pass --node-name or set NODE_NAME (the DaemonSet sets it)")
    if kube_host:
        raise UserError("--kube-host is not for the agent.", fix="run the agent in the cluster, or with --kubeconfig")
    if interval < 1 or max_unavailable < 1 or lease_duration < 5 or driver_poll <= 0 or host_pid < 1:
        raise UserError(
            "--interval, --max-unavailable, --lease-duration, --driver-poll or --host-pid is out of range.",
            fix="give --interval >= 1, --max-unavailable >= 1, --lease-duration >= 5, --driver-poll > 0, --host-pid >= 1",
        )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    request = AgentRequest(
        node_name=node_name,
        kube=KubeAccess(kubeconfig=kubeconfig, context=kube_context, kubectl=kubectl_path),
        host_pid=host_pid,
        mode=mode,
        namespace=namespace,
        interval=interval,
        max_unavailable=max_unavailable,
        heartbeat=heartbeat,
        lease_duration=lease_duration,
        driver_poll=driver_poll,
        drain_timeout=drain_timeout,
        delete_emptydir_data=delete_emptydir_data,
        progress=lambda text: click.echo(text, err=True),
    )

    if once:
        from gpunode.bootstrap.orchestration.agent import Agent

        outcome = Agent(request).tick()
        c = outcome.condition
        return Outcome(
            {"True": EXIT_OK, "False": 1}.get(c.status, 2),
            {"ticks": [outcome.as_dict()]},
            f"{outcome.node}: GPUNodeReady={c.status} ({c.reason}) {c.message}\n",
        )
    last: list[TickOutcome] = []  # only the latest: the agent runs for months

    def keep(outcome: TickOutcome) -> None:
        last[:] = [outcome]

    # Until SIGTERM: the contract turns it into an exception that ends the wait (exit 143);
    # a disruptive step under way gives its Lease back on the way out.
    run_agent(request, threading.Event(), keep)
    return Outcome(EXIT_OK, {"ticks": [t.as_dict() for t in last]})
