"""Per-host settings of a bootstrap: defaults, then inventory data, then command-line flags.

Inventory data uses the field names with a `gpunode_` prefix (`gpunode_driver_version`);
a flag given on the command line overrides them for every host.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Literal, get_args

from gpunode.bootstrap.errors import UserError

KernelModule = Literal["dkms", "precompiled", "none"]
DriverFlavour = Literal["proprietary", "open"]
PluginMode = Literal["daemonset", "host"]

DATA_PREFIX = "gpunode_"

_BRANCH = re.compile(r"^[0-9]{3}$")
_VERSION = re.compile(r"^[0-9A-Za-z.+~:-]{1,64}$")


@dataclass(frozen=True)
class NodeSettings:
    driver_branch: str | None = None
    driver_version: str | None = None
    kernel_module: KernelModule = "dkms"
    driver_flavour: DriverFlavour = "proprietary"
    toolkit_version: str | None = None
    toolkit_packages: str | None = None
    containerd_config: str = "/etc/containerd/config.toml"
    runtime_path: str = "/usr/bin/nvidia-container-runtime"
    containerd_in_place: bool = False
    set_default_runtime: bool = False
    containerd_restart_command: str | None = None
    plugin_mode: PluginMode = "daemonset"
    plugin_package: str | None = None
    plugin_wheels: str | None = None
    allow_no_gpu: bool = False
    # A bare host without a container runtime gets the distribution's containerd.
    install_containerd: bool = False
    reboot: bool = False
    # The device plugin config this node uses (nvidia.com/device-plugin.config): the name of
    # a --plugin-config, or a sharing shortcut (time-slicing or mps, with replicas).
    plugin_config: str | None = None
    sharing: str | None = None
    replicas: str | None = None

    @property
    def plugin_config_name(self) -> str | None:
        """The config this node is labelled with: plugin_config, else <sharing>-<replicas>."""
        if self.plugin_config:
            return self.plugin_config
        if self.sharing and self.replicas:
            return f"{self.sharing}-{self.replicas}"
        return None


_CHOICES: dict[str, tuple[str, ...]] = {
    "kernel_module": get_args(KernelModule),
    "driver_flavour": get_args(DriverFlavour),
    "plugin_mode": get_args(PluginMode),
    "sharing": ("time-slicing", "mps"),
}
_BOOLEANS = {f.name for f in fields(NodeSettings) if f.type in ("bool", bool)}
_ABSOLUTE_PATHS = ("containerd_config", "runtime_path")


def _as_bool(host: str, source: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise UserError(f"{host}: {source} = {value!r} is not a boolean.", fix=f"set {source} to true or false")


def _check(host: str, source: str, name: str, value: Any) -> Any:
    if value is None:
        return None
    if name in _BOOLEANS:
        return _as_bool(host, source, value)
    if name == "replicas" and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise UserError(f"{host}: {source} = {value!r} must be a string.", fix=f"quote the value of {source}")
    if "\n" in value or "\0" in value:
        raise UserError(f"{host}: {source} contains a newline or NUL byte.", fix=f"give {source} on one line")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise UserError(
            f"{host}: {source} = {value!r} contains control characters.", fix=f"give {source} as plain text"
        )
    if name in _CHOICES and value not in _CHOICES[name]:
        raise UserError(
            f"{host}: {source} = {value!r} is not one of {', '.join(_CHOICES[name])}.",
            fix=f"use one of: {', '.join(_CHOICES[name])}",
        )
    if name == "driver_branch" and not _BRANCH.match(value):
        raise UserError(
            f"{host}: {source} = {value!r} is not a driver branch.", fix="give the three-digit branch, e.g. 535 or 550"
        )
    if name in ("driver_version", "toolkit_version") and not _VERSION.match(value):
        raise UserError(
            f"{host}: {source} = {value!r} is not a package version.",
            fix=f"give {source} as the distro prints it, e.g. 535.261.03 or 1.17.8-1",
        )
    if name == "replicas" and not (value.isdigit() and int(value) >= 2):
        raise UserError(
            f"{host}: {source} = {value!r} is not a number of replicas.",
            fix=f"give {source} as 2 or more (how many pods share each GPU)",
        )
    if name == "plugin_config" and not re.fullmatch(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?", value):
        raise UserError(
            f"{host}: {source} = {value!r} cannot name a device plugin config.",
            fix="use the NAME of a --plugin-config NAME=FILE (letters, digits, '-', '_', '.')",
        )
    if name in _ABSOLUTE_PATHS and not value.startswith("/"):
        raise UserError(
            f"{host}: {source} = {value!r} is not an absolute path.",
            fix=f"give {source} as an absolute path on the host",
        )
    return value


def resolve_settings(host: str, data: Mapping[str, Any], overrides: Mapping[str, Any]) -> NodeSettings:
    """Defaults <- inventory data (`gpunode_*`) <- command-line overrides (non-None only)."""
    known = {f.name for f in fields(NodeSettings)}
    unknown = sorted(k for k in data if k.startswith(DATA_PREFIX) and k[len(DATA_PREFIX) :] not in known)
    if unknown:
        raise UserError(
            f"{host}: unknown inventory setting(s) {', '.join(unknown)}.",
            fix="check the spelling; known settings are " + ", ".join(sorted(DATA_PREFIX + k for k in known)),
        )
    values: dict[str, Any] = {}
    for name in known:
        if DATA_PREFIX + name in data:
            values[name] = _check(host, f"inventory data {DATA_PREFIX}{name}", name, data[DATA_PREFIX + name])
    for name, value in overrides.items():
        if name not in known:
            raise ValueError(f"unknown setting {name}")
        if value is not None:
            values[name] = _check(host, f"option --{name.replace('_', '-')}", name, value)
    settings = replace(NodeSettings(), **{k: v for k, v in values.items() if v is not None})
    if (settings.sharing is None) != (settings.replicas is None):
        raise UserError(
            f"{host}: sharing and replicas go together (one is set, the other is not).",
            fix="set both (--sharing time-slicing --replicas 4, or gpunode_sharing and gpunode_replicas), or neither",
        )
    if (
        settings.driver_branch
        and settings.driver_version
        and not settings.driver_version.startswith(settings.driver_branch)
    ):
        raise UserError(
            f"{host}: driver version {settings.driver_version} is not on branch {settings.driver_branch}.",
            fix="give a version of that branch, or only one of the two",
        )
    return settings
