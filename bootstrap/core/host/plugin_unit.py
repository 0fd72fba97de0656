"""The systemd unit of the host-mode device plugin (--plugin-mode host)."""

from __future__ import annotations

from collections.abc import Mapping
from importlib.resources import files

import jinja2

from gpunode.bootstrap.errors import UserError

UNIT_NAME = "gpunode-device-plugin.service"
UNIT_PATH = f"/etc/systemd/system/{UNIT_NAME}"
VENV_DIR = "/opt/gpunode/venv"
# The venv holds only the plugin's dependencies, so the operator CLI (`gpunode`) would not
# start there; the plugin package runs as a module.
PYTHON = f"{VENV_DIR}/bin/python"


def systemd_quote(value: object) -> str:
    """One word for a unit file: double-quoted, backslash-escaped, `%` doubled (specifiers)."""
    text = str(value)
    if any(ch in text for ch in "\n\r\0"):
        raise UserError(
            f"{text!r} cannot go into a systemd unit: it has a line break or NUL.", fix="give the value on one line"
        )
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{escaped}"'


_ENV = jinja2.Environment(
    loader=jinja2.FunctionLoader(lambda name: files("gpunode.templates").joinpath(name).read_text()),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,
)
_ENV.filters["unit"] = systemd_quote


def render_plugin_unit(
    *,
    kubelet_root: str,
    driver_version: str | None,
    resource_name: str = "nvidia.com/gpu",
    extra_environment: Mapping[str, str] | None = None,
) -> str:
    environment = {
        "GPUNODE_KUBELET_DIR": f"{kubelet_root.rstrip('/')}/device-plugins",
        "GPUNODE_RESOURCE_NAME": resource_name,
        "GPUNODE_FAIL_ON_INIT_ERROR": "true",
        # Not read by the plugin: it ties the unit to the driver, so that a new driver
        # changes the unit and the service restarts onto the new library.
        "GPUNODE_DRIVER_VERSION": driver_version or "unknown",
        **(extra_environment or {}),
    }
    return _ENV.get_template("gpunode-device-plugin.service.j2").render(
        environment=environment,
        exec_start=PYTHON,
        resource_name=resource_name,
    )
