"""The `gpunode` command.

Heavy imports (pyinfra, grpc) happen inside the commands that need them, so that
`gpunode --help` and `gpunode render` start fast and `gpunode plugin serve` never loads
pyinfra's gevent. Exit codes, messages and `--output json` are the contract kept by
`gpunode.bootstrap.cli.contract` for every command.
"""

from __future__ import annotations

import gc
import sys

import click

from gpunode.bootstrap.cli.agent import agent
from gpunode.bootstrap.cli.bootstrap import bootstrap
from gpunode.bootstrap.cli.contract import EXIT_BAD_INPUT, EXIT_INTERRUPTED, ContractGroup
from gpunode.bootstrap.cli.doctor import doctor
from gpunode.bootstrap.cli.image import image
from gpunode.bootstrap.cli.messages import escape_controls, one_paragraph
from gpunode.bootstrap.cli.render import render
from gpunode.bootstrap.cli.verify import verify
from gpunode.plugin.cli import plugin_group


@click.group(cls=ContractGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(None, "--version", package_name="gpunode", prog_name="gpunode")
def cli() -> None:
    """Take a Linux host with NVIDIA GPUs to a working Kubernetes GPU node, and prove it.

    \b
    The chain gpunode sets up and checks, link by link:
      driver -> container toolkit -> containerd runtime "nvidia" -> RuntimeClass
      -> device plugin (NVML) -> kubelet registration -> Allocatable nvidia.com/gpu

    \b
    Exit status, for every command: 0 done (healthy); 1 ran and found or caused a
    failure; 2 bad input or could not check, nothing changed; 130 interrupted (Ctrl-C);
    143 terminated (SIGTERM).
    """


cli.add_command(bootstrap)
cli.add_command(render)
cli.add_command(doctor)
cli.add_command(verify)
cli.add_command(plugin_group)
cli.add_command(image)
cli.add_command(agent)


def main(argv: list[str] | None = None) -> None:
    """Console entry point. The commands keep the contract themselves (ContractGroup);
    this only catches what happens outside any command (Ctrl-C while Python starts one)."""
    try:
        # Without standalone mode click returns (not raises) the code of a command that
        # ended with click.exceptions.Exit (`plugin serve`, `plugin list`): pass it on, so
        # the console script exits as `python -m gpunode.plugin` does.
        code = cli.main(args=argv, prog_name="gpunode", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo(one_paragraph("interrupted before it began.", "Run the command again."), err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as exc:
        click.echo(one_paragraph(escape_controls(exc.format_message()), "See `gpunode --help`."), err=True)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        click.echo(one_paragraph("interrupted before it began.", "Run the command again."), err=True)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(code if isinstance(code, int) else 0)


def console_main() -> None:
    """The installed `gpunode` command: main, then a quick exit."""
    try:
        main()
    finally:
        # The interpreter's final garbage collection walks every object pyinfra, paramiko
        # and gevent created: about 0.13 s of a 1.4 s bootstrap, for a process that is
        # ending anyway. Frozen objects are skipped; atexit handlers still run.
        gc.freeze()


if __name__ == "__main__":
    console_main()
