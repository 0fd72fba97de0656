"""The options that say how to reach hosts over SSH, shared by `bootstrap` and `doctor`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def ssh_options(function: F) -> F:
    """--ssh-user, --ssh-port, --ssh-key, --ssh-config, --known-hosts, --strict-host-keys."""
    options = [
        click.option("--ssh-user", metavar="USER", help="SSH user (default: inventory data, then your SSH config)."),
        click.option("--ssh-port", type=click.IntRange(1, 65535), metavar="PORT", help="SSH port."),
        click.option("--ssh-key", metavar="FILE", help="SSH private key file."),
        click.option("--ssh-config", metavar="FILE", help="An ssh_config file (Host aliases, ports, keys)."),
        click.option(
            "--known-hosts",
            metavar="FILE",
            help="known_hosts file to check host keys against and record new ones in (default ~/.ssh/known_hosts).",
        ),
        click.option(
            "--strict-host-keys",
            is_flag=True,
            help="Refuse hosts whose key is not already in the known-hosts file (default: record a new "
            "host's key, as ssh's StrictHostKeyChecking=accept-new; a changed key is always refused).",
        ),
    ]
    # Applied last-first so the options list in --help in the order written above.
    for option in reversed(options):
        function = option(function)
    return function
