"""The one fact bootstrap, verify and doctor read a host through: HostSnapshot.

One round trip gathers everything (see snapshot_script.sh); parsing is pure and lives in
gpunode.bootstrap.core.host.facts.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from functools import lru_cache
from importlib.resources import files

from pyinfra.api.facts import FactBase

from gpunode.bootstrap.core.host.diagnostics import NVML_CHECK_SOURCE
from gpunode.bootstrap.core.host.facts import HostFacts, parse_snapshot
from gpunode.bootstrap.core.host.snapshot_contract import Parameter, Placeholder, check_script, fill
from gpunode.bootstrap.core.nvml.library import PROBE_COMMAND, probe_command
from gpunode.bootstrap.core.packages.common import DPKG_QUERY_COMMAND, RPM_QUERY_COMMAND

DEFAULT_CONTAINERD_CONFIG = "/etc/containerd/config.toml"
DRIVER_CONTAINER_ROOT = "/run/nvidia/driver"  # the GPU Operator's driver container root
UPLOAD_DIR = "/var/lib/gpunode/packages"


@lru_cache(maxsize=1)
def _script_template() -> str:
    script = files("gpunode.bootstrap.node").joinpath("snapshot_script.sh").read_text()
    check_script(script)
    return script


@lru_cache(maxsize=4)
def _driver_root_probe(root: str) -> str:
    # Run in a subshell: the probe sets its own variables and functions.
    return "( " + probe_command(root=root) + " )"


def snapshot_command(
    containerd_config: str,
    managed_files: Iterable[str],
    *,
    diagnostics: bool = False,
    driver_root: str = DRIVER_CONTAINER_ROOT,
    apt_names: Iterable[str] = (),
) -> str:
    """The one command that reads a host; `diagnostics` adds what only doctor needs
    (`driver_root`: where a containerised driver's root would be mounted)."""
    script = fill(
        _script_template(),
        {
            Placeholder.NVML_PROBE: PROBE_COMMAND,
            Placeholder.NVML_PROBE_DRIVER_ROOT: _driver_root_probe(driver_root),
            Placeholder.DPKG_QUERY: DPKG_QUERY_COMMAND,
            Placeholder.RPM_QUERY: RPM_QUERY_COMMAND,
        },
    )
    parameters = {
        Parameter.CONTAINERD_CONFIG: containerd_config,
        Parameter.MANAGED_FILES: "\n".join(managed_files),
        Parameter.UPLOAD_DIR: UPLOAD_DIR,
        Parameter.APT_NAMES: " ".join(apt_names),
    }
    if diagnostics:
        parameters |= {
            Parameter.DIAGNOSE: "1",
            Parameter.NVML_CHECK: NVML_CHECK_SOURCE,
            Parameter.DRIVER_ROOT: driver_root,
        }
    assignments = "".join(f"{name.value}={shlex.quote(value)}\n" for name, value in parameters.items())
    # pyinfra runs commands through `sh -c`; a subshell keeps the variables local.
    return "sh -c " + shlex.quote(assignments + script)


class HostSnapshot(FactBase[HostFacts]):
    """Everything gpunode needs to know about a host, read in one round trip."""

    def command(
        self,
        containerd_config: str = DEFAULT_CONTAINERD_CONFIG,
        managed_files: tuple[str, ...] = (),
        diagnostics: bool = False,
        apt_names: tuple[str, ...] = (),
    ) -> str:
        return snapshot_command(containerd_config, managed_files, diagnostics=diagnostics, apt_names=apt_names)

    def process(self, output: list[str]) -> HostFacts:
        return parse_snapshot("\n".join(output))
