"""The bundled plugin's telemetry and node-label options, shared by `render` and `bootstrap`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from gpunode.bootstrap.core.kube.plugin_deployment import DEFAULT_METRICS_ADDR, NODE_LABEL_MODES

F = TypeVar("F", bound=Callable[..., Any])


def telemetry_options(command: F) -> F:
    command = click.option(
        "--node-labels",
        type=click.Choice(NODE_LABEL_MODES),
        default="node",
        show_default=True,
        help="GPU feature discovery's labels (nvidia.com/gpu.product, gpu.memory, ...) from the bundled plugin: "
        "node patches its own Node (a ClusterRole with nodes get, patch is rendered), nfd writes NFD's "
        "feature file on the host (NFD must run there), off: none.",
    )(command)
    command = click.option(
        "--metrics-addr",
        default=DEFAULT_METRICS_ADDR,
        show_default=True,
        metavar="[HOST]:PORT|off",
        help="Where the bundled plugin serves /metrics (GPU telemetry in dcgm-exporter's names, its own "
        "counters); the port is declared on the pod with prometheus.io/scrape annotations. off: no metrics.",
    )(command)
    return command
