"""`gpunode render agent`: the in-cluster agent's DaemonSet, its settings ConfigMap and the
RBAC it needs, as one YAML stream for `kubectl apply -f -` or a GitOps repository. Offline."""

from __future__ import annotations

from pathlib import Path

import click

from gpunode.bootstrap.cli.contract import EXIT_OK, ContractCommand, Outcome, output_option
from gpunode.bootstrap.core.kube.agent_manifests import (
    AGENT_MODES,
    AgentDeployment,
    agent_image,
    parse_selector,
    render_agent,
)
from gpunode.bootstrap.core.kube.agent_settings import parse_agent_config
from gpunode.bootstrap.errors import UserError


@click.command("agent", cls=ContractCommand, empty_body={"documents": []})
@click.option(
    "--mode",
    type=click.Choice(AGENT_MODES),
    default="check",
    show_default=True,
    help="check: only read and report; apply: converge each node as bootstrap would (needs more RBAC).",
)
@click.option("--interval", type=int, default=300, show_default=True, metavar="SECONDS", help="Time between checks.")
@click.option(
    "--max-unavailable",
    type=int,
    default=1,
    show_default=True,
    metavar="N",
    help="At most this many nodes in a disruptive step at once (Leases in --namespace).",
)
@click.option("--namespace", default="kube-system", show_default=True, metavar="NS")
@click.option("--image", default=None, metavar="REF", help="The agent image (default: gpunode-agent of this version).")
@click.option(
    "--node-selector",
    default=None,
    metavar="KEY=VALUE[,...]",
    help="Run on these nodes instead of GPU nodes by NFD's PCI label or nvidia.com/gpu.present=true.",
)
@click.option(
    "--settings",
    "settings_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A settings.yaml for the ConfigMap (settings: ..., nodes: [{selector, settings}]).",
)
@output_option
def agent_command(
    mode: str,
    interval: int,
    max_unavailable: int,
    namespace: str,
    image: str | None,
    node_selector: str | None,
    settings_file: Path | None,
    output: str,
) -> Outcome:
    """Print the gpunode agent: a DaemonSet on GPU nodes that checks (or converges) its node
    and publishes the Node condition GPUNodeReady, with its ServiceAccount, RBAC and ConfigMap."""
    settings_yaml = ""
    if settings_file is not None:
        try:
            settings_yaml = settings_file.read_text()
        except OSError as exc:
            raise UserError(
                f"--settings {settings_file}: {exc.strerror}.", fix="give a readable settings.yaml"
            ) from exc
        parse_agent_config(settings_yaml)  # refused here rather than by every agent later
    from gpunode.bootstrap.image.published import default_agent_image_published, unpublished_agent_image_notice

    notice = unpublished_agent_image_notice(image, default_agent_image_published())
    if notice:
        click.echo(f"gpunode: warning: {notice}", err=True)
    deployment = AgentDeployment(
        namespace=namespace,
        image=image or agent_image(),
        mode=mode,
        interval=interval,
        max_unavailable=max_unavailable,
        node_selector=parse_selector(node_selector) if node_selector else None,
        settings_yaml=settings_yaml,
    )
    from gpunode.bootstrap.cli.render_alerts import yaml_documents

    text = render_agent(deployment)
    return Outcome(EXIT_OK, {"documents": yaml_documents(text)}, text)
