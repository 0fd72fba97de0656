"""The device plugin config options `gpunode render` and `gpunode bootstrap` share:
`--plugin-config [NAME=]FILE` (NVIDIA's config file v1, repeatable) and the shortcut
`--sharing time-slicing|mps --replicas N`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from gpunode.bootstrap.core.kube.plugin_config import (
    SHARING_CHOICES,
    NamedConfig,
    PluginConfigs,
    check_config_name,
    named_config,
    sharing_config,
)
from gpunode.bootstrap.errors import UserError
from gpunode.bootstrap.local_input import read_local_file

F = TypeVar("F", bound=Callable[..., Any])


def plugin_config_options(command: F) -> F:
    for option in reversed(
        [
            click.option(
                "--plugin-config",
                "plugin_config",
                multiple=True,
                metavar="[NAME=]FILE",
                help="NVIDIA's device plugin config file (version: v1: flags, resources, sharing), for "
                "either plugin. Repeat for several named configs (NAME defaults to the file name without "
                "its extension); the first is the default, and the node label nvidia.com/device-plugin.config "
                "chooses another per node.",
            ),
            click.option(
                "--sharing",
                type=click.Choice(SHARING_CHOICES),
                help="Share every GPU among pods: time-slicing, or MPS (with NVIDIA's MPS control daemon). "
                "Needs --replicas; makes a config named <sharing>-<replicas>.",
            ),
            click.option(
                "--replicas",
                type=click.IntRange(min=2),
                help="With --sharing: how many pods share each GPU (Allocatable = GPUs x replicas).",
            ),
        ]
    ):
        command = option(command)
    return command


def _from_file(spec: str) -> NamedConfig:
    name, eq, file = spec.partition("=")
    if not eq:
        file, name = spec, Path(spec).stem
    path = Path(file)
    data = read_local_file(path, what="a device plugin config file")
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text.", "Give NVIDIA's config file v1 as YAML or JSON.") from None
    return named_config(check_config_name(name), text, str(path))


def plugin_configs_from(files: tuple[str, ...], sharing: str | None, replicas: int | None) -> PluginConfigs | None:
    """The named configs the options give (the first the default); None without any."""
    if (sharing is None) != (replicas is None):
        raise UserError(
            "--sharing and --replicas go together.", "Give both (e.g. --sharing time-slicing --replicas 4)."
        )
    configs = [_from_file(spec) for spec in files]
    if sharing is not None and replicas is not None:
        configs.insert(0, sharing_config(sharing, replicas))
    if not configs:
        return None
    return PluginConfigs(tuple(configs), default=configs[0].name)
