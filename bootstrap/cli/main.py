"""The `gpunode` command.

Heavy imports (pyinfra, grpc) happen inside the commands that need them, so that
`gpunode --help` and `gpunode render` start fast and `gpunode plugin serve` never loads
pyinfra's gevent.
"""

from __future__ import annotations

import gc
import sys

import click

from gpunode.bootstrap.cli.agent import agent
from gpunode.bootstrap.cli.bootstrap import bootstrap
from gpunode.bootstrap.cli.doctor import doctor
from gpunode.bootstrap.cli.image import image
from gpunode.bootstrap.cli.render import render
from gpunode.bootstrap.cli.verify import verify
from gpunode.bootstrap.errors import GpunodeError
from gpunode.plugin.cli import plugin_group


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(None, "--version", package_name="gpunode", prog_name="gpunode")
def cli() -> None:
    """Take a Linux host with NVIDIA GPUs to a working Kubernetes GPU node, and prove it.

    \b
    The chain gpunode sets up and checks, link by link:
      driver -> container toolkit -> containerd runtime "nvidia" -> RuntimeClass
      -> device plugin (NVML) -> kubelet registration -> Allocatable nvidia.com/gpu
    """


cli.add_command(bootstrap)
cli.add_command(render)
cli.add_command(doctor)
cli.add_command(verify)
cli.add_command(plugin_group)
cli.add_command(image)
cli.add_command(agent)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: expected failures become one paragraph and an exit code."""
    try:
        # Without standalone mode click returns (not raises) the code of a command that
        # ended with click.exceptions.Exit (`plugin serve`, `plugin list`): pass it on, so
        # the console script exits as `python -m gpunode.plugin` does.
        code = cli.main(args=argv, prog_name="gpunode", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except GpunodeError as exc:
        click.echo(f"gpunode: {exc}", err=True)
        sys.exit(exc.exit_code)
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
