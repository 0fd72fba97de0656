"""`gpunode render`: what gpunode would write, computed offline from the inputs given."""

from __future__ import annotations

import click

from gpunode.bootstrap.cli.render_containerd import containerd_command


@click.group("render", invoke_without_command=True)
@click.pass_context
def render(ctx: click.Context) -> None:
    """Print what gpunode would write, without a host: see the subcommands."""
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


render.add_command(containerd_command)
