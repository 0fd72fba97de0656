"""Device plugin configs gpunode hands to the cluster: NVIDIA's config file v1, as named
configs in one ConfigMap, the node label `nvidia.com/device-plugin.config` choosing one per
node (both plugins read it: gpunode's by itself, NVIDIA's through its config-manager).

A config comes from a file the user gives (`--plugin-config [NAME=]FILE`) or from the
shortcut `--sharing time-slicing|mps --replicas N`, which writes NVIDIA's own example
config. Every config is checked with the bundled plugin's parser before anything is
rendered, so a config the plugin would refuse is refused here, with its key and line.
Pure: text in, data out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from gpunode.bootstrap.errors import UserError
from gpunode.plugin.config import ConfigError

if TYPE_CHECKING:  # the parser brings PyYAML, imported when a config is first read
    from gpunode.plugin.nvidia_config import FileConfig

SharingChoice = Literal["time-slicing", "mps"]
SHARING_CHOICES: tuple[str, ...] = ("time-slicing", "mps")
CONFIG_LABEL = "nvidia.com/device-plugin.config"
# Where NVIDIA's Helm chart keeps the MPS root on the host; the MPS control daemon and the
# plugin must agree on it.
DEFAULT_MPS_ROOT = "/run/nvidia/mps"
# A ConfigMap key, which is also the label value that chooses it: a label value's rules.
_CONFIG_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


@dataclass(frozen=True)
class NamedConfig:
    name: str
    text: str
    parsed: FileConfig


@dataclass(frozen=True)
class PluginConfigs:
    """The named configs of one ConfigMap; `default` is used on nodes without the label."""

    configs: tuple[NamedConfig, ...]
    default: str

    def __post_init__(self) -> None:
        names = [c.name for c in self.configs]
        if not names:
            raise UserError("No device plugin config was given.", "Give --plugin-config FILE or --sharing.")
        if len(set(names)) != len(names):
            raise UserError(
                f"Two device plugin configs are named alike: {', '.join(names)}.",
                "Give each --plugin-config a name of its own (NAME=FILE).",
            )
        if self.default not in names:
            raise UserError(
                f"The default config {self.default!r} is not among the configs ({', '.join(names)}).",
                "Name one of the given configs as the default.",
            )

    def get(self, name: str) -> NamedConfig:
        return next(c for c in self.configs if c.name == name)

    def data(self) -> dict[str, str]:
        """The ConfigMap's data: name -> config text."""
        return {c.name: c.text for c in self.configs}

    @property
    def uses_mps(self) -> bool:
        return any(c.parsed.sharing.strategy == "mps" for c in self.configs)


def check_config_name(name: str) -> str:
    if not _CONFIG_NAME.match(name):
        raise UserError(
            f"{name!r} cannot name a device plugin config: it is a ConfigMap key and a node label value.",
            "Use up to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit.",
        )
    return name


def named_config(name: str, text: str, source: str) -> NamedConfig:
    """A config checked with the plugin's own parser; UserError names the key and line."""
    from gpunode.plugin.nvidia_config import parse_config_text

    check_config_name(name)
    try:
        parsed = parse_config_text(text, source)
    except ConfigError as exc:
        problem, _, fix = str(exc).partition(". Fix: ")
        raise UserError(f"The device plugin config {problem}.", fix or "Correct the config file.") from None
    if parsed.sharing.strategy == "mps" and "mps_root" not in parsed.settings:
        raise UserError(
            f"The device plugin config {source} shares GPUs with MPS but sets no flags.mpsRoot.",
            f"Add `mpsRoot: {DEFAULT_MPS_ROOT}` under flags: the plugin and the MPS control daemon meet there.",
        )
    return NamedConfig(name=name, text=text, parsed=parsed)


def sharing_config_text(strategy: str, replicas: int, mps_root: str = DEFAULT_MPS_ROOT) -> str:
    """NVIDIA's example config for sharing every GPU `replicas` ways."""
    if strategy not in SHARING_CHOICES:
        raise UserError(f"Unknown sharing strategy {strategy!r}.", f"Use one of: {', '.join(SHARING_CHOICES)}.")
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 2:
        raise UserError(
            f"{replicas!r} replicas cannot share a GPU: NVIDIA's config needs 2 or more.",
            "Give --replicas 2 or more (or leave --sharing out for whole GPUs).",
        )
    key = "mps" if strategy == "mps" else "timeSlicing"
    flags = f"flags:\n  mpsRoot: {mps_root}\n" if strategy == "mps" else ""
    return (
        f"version: v1\n{flags}sharing:\n  {key}:\n    resources:\n"
        f"    - name: nvidia.com/gpu\n      replicas: {replicas}\n"
    )


def sharing_config(strategy: str, replicas: int) -> NamedConfig:
    name = f"{strategy}-{replicas}"
    return named_config(name, sharing_config_text(strategy, replicas), f"--sharing {strategy} --replicas {replicas}")


def expected_allocatable(config: FileConfig | None, gpus: int) -> dict[str, int]:
    """What a node with `gpus` full GPUs (no MIG) should show in Allocatable under a config:
    resource name -> count (GPUs x replicas, under the renamed resource if renamed)."""
    if config is None:
        return {"nvidia.com/gpu": gpus}
    shared = config.sharing.replicated("nvidia.com/gpu")
    if shared is None or gpus == 0:
        return {"nvidia.com/gpu": gpus}
    if isinstance(shared.devices, int):
        selected = min(shared.devices, gpus)
    elif isinstance(shared.devices, tuple):
        selected = min(len(shared.devices), gpus)
    else:
        selected = gpus
    out = {shared.advertised_name: selected * shared.replicas}
    if selected < gpus:
        out["nvidia.com/gpu"] = out.get("nvidia.com/gpu", 0) + gpus - selected
    return out
