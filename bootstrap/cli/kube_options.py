"""The options that say how to reach the cluster, shared by `bootstrap` and `verify`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from gpunode.bootstrap.cluster.kubectl import KubeAccess, SshTarget
from gpunode.bootstrap.core.kube.taints import Toleration, parse_toleration
from gpunode.bootstrap.errors import UserError
from gpunode.bootstrap.local_paths import check_local_file

F = TypeVar("F", bound=Callable[..., Any])


def kube_options(function: F) -> F:
    """--kubeconfig, --context, --kube-host, --kubectl."""
    options = [
        click.option(
            "--kubeconfig",
            metavar="FILE",
            help="kubeconfig for kubectl (default: kubectl's own: $KUBECONFIG, ~/.kube/config). "
            "With --kube-host, a path on that host.",
        ),
        click.option("--context", "kube_context", metavar="NAME", help="kubeconfig context to use."),
        click.option(
            "--kube-host",
            metavar="[USER@]HOST[:PORT]",
            help="Run kubectl on this host over SSH (a control-plane node, or the GPU node "
            "itself in a homelab) instead of on this machine; the SSH options apply.",
        ),
        click.option(
            "--kubectl",
            "kubectl_path",
            default="kubectl",
            show_default=True,
            metavar="PATH",
            help="The kubectl program (on --kube-host when given).",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def toleration_option(function: F) -> F:
    return click.option(
        "--toleration",
        "tolerations",
        multiple=True,
        metavar="KEY[=VALUE][:EFFECT]",
        help="Also tolerate this node taint (repeatable); nvidia.com/gpu is always tolerated (F15).",
    )(function)


def parse_tolerations(values: tuple[str, ...]) -> tuple[Toleration, ...]:
    return tuple(parse_toleration(v) for v in values)


def parse_kube_host(
    text: str, *, key: str | None, config_file: str | None, known_hosts: str | None, default_user: str | None = None
) -> SshTarget | None:
    """`admin@cp1:2222` -> SshTarget; `@local` -> None (kubectl runs here). Without a user
    in the text, `default_user` (the run's --ssh-user), else ssh's own choice."""
    if text == "@local":
        return None
    if not text or any(c in text for c in " \t\n\0") or text.startswith("-"):
        raise UserError(f"--kube-host {text!r} is not a host.", fix="give [USER@]HOST[:PORT], e.g. admin@cp1.example")
    user: str | None = None
    port: int | None = None
    host = text
    if "@" in host:
        user, host = host.rsplit("@", 1)
    if host.count(":") == 1:
        host, port_text = host.split(":")
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise UserError(f"--kube-host {text!r}: {port_text!r} is not a port.", fix="write HOST:PORT with a number")
        port = int(port_text)
    if not host or (user is not None and not user):
        raise UserError(f"--kube-host {text!r} is not a host.", fix="give [USER@]HOST[:PORT]")
    for flag, path in (("--ssh-key", key), ("--ssh-config", config_file), ("--known-hosts", known_hosts)):
        if path is not None:
            check_local_file(flag, path, may_be_missing=flag == "--known-hosts")
    return SshTarget(
        host=host,
        user=user if user is not None else default_user,
        port=port,
        key=str(Path(key).expanduser()) if key else None,
        config_file=str(Path(config_file).expanduser()) if config_file else None,
        known_hosts=str(Path(known_hosts).expanduser()) if known_hosts else None,
    )


def kube_access(
    *,
    kubeconfig: str | None,
    kube_context: str | None,
    kube_host: str | None,
    kubectl_path: str,
    ssh_key: str | None = None,
    ssh_config: str | None = None,
    known_hosts: str | None = None,
    ssh_user: str | None = None,
) -> KubeAccess:
    control = (
        parse_kube_host(kube_host, key=ssh_key, config_file=ssh_config, known_hosts=known_hosts, default_user=ssh_user)
        if kube_host
        else None
    )
    if control is None and kubeconfig is not None:
        check_local_file("--kubeconfig", kubeconfig)
    for what, value in (("--kubeconfig", kubeconfig), ("--context", kube_context), ("--kubectl", kubectl_path)):
        if value is not None and any(c in value for c in "\n\0"):
            raise UserError(f"{what} contains a newline or NUL byte.", fix=f"give {what} on one line")
    return KubeAccess(
        kubeconfig=str(Path(kubeconfig).expanduser()) if kubeconfig and control is None else kubeconfig,
        context=kube_context,
        kubectl=kubectl_path,
        control_host=control,
    )
