"""Step plugin-service: the bundled plugin as a systemd service on the node (homelab mode).

The package goes into its own virtualenv on the node with only the plugin's dependencies
(no pyinfra, no gevent); the unit runs `gpunode plugin serve`. Where the host has no
systemd, the unit is written and the step says it could not start it.
"""

from __future__ import annotations

import posixpath
import shlex
from importlib.metadata import requires
from pathlib import Path
from typing import Any

from gpunode.bootstrap.core.host.plugin_unit import UNIT_NAME, UNIT_PATH, VENV_DIR, render_plugin_unit
from gpunode.bootstrap.core.host.record import STATE_PATH, parse_record
from gpunode.bootstrap.core.packages.common import FileSpec, PackageSpec, apt_install_command
from gpunode.bootstrap.core.plugin_dependencies import PLUGIN_DEPENDENCIES, plugin_requirements
from gpunode.bootstrap.core.settings import NodeSettings
from gpunode.bootstrap.errors import GpunodeError, UserError
from gpunode.bootstrap.node.steps.base import NodeFacts, NodeStep, StepPlan, UploadFiles, file_diff, write_files

WHEEL_DIR = "/var/lib/gpunode/packages/plugin"


def plugin_service_paths(settings: NodeSettings) -> tuple[str, ...]:
    return (UNIT_PATH,) if settings.plugin_mode == "host" else ()


def installed_plugin_requirements() -> list[str]:
    """The plugin's own dependencies with the floors this gpunode was built against."""
    return plugin_requirements(requires("gpunode") or [])


def venv_install_commands(settings: NodeSettings, ours: str) -> list[Any]:
    """Commands that put the plugin into the venv: its dependencies first, gpunode last.

    gpunode's own dist-info is what the snapshot takes for "installed", so it is written
    only after everything it needs is there: a run cut off half way is redone next time.
    """
    pip = shlex.quote(f"{VENV_DIR}/bin/pip")
    commands: list[Any] = [f"python3 -m venv {shlex.quote(VENV_DIR)}"]
    source = ""
    package = settings.plugin_package or f"gpunode=={ours}"
    if settings.plugin_wheels:
        wheels = sorted(Path(settings.plugin_wheels).expanduser().glob("*.whl"))
        if not wheels:
            raise UserError(
                f"--plugin-wheels {settings.plugin_wheels} holds no .whl files.",
                fix="put the gpunode wheel and its plugin dependencies there "
                f"(pip wheel --no-deps . && pip download {' '.join(PLUGIN_DEPENDENCIES)})",
            )
        commands.append(UploadFiles(tuple((str(wheel), posixpath.join(WHEEL_DIR, wheel.name), "") for wheel in wheels)))
        # Only these files: a host without an index (air-gapped) must not try one.
        source = f" --no-index --find-links {shlex.quote(WHEEL_DIR)}"
    elif Path(package).is_file():
        remote = posixpath.join(WHEEL_DIR, Path(package).name)
        commands.append(UploadFiles(((package, remote, ""),)))
        package = remote
    if not settings.plugin_wheels:
        commands.append(f"{pip} install --quiet --upgrade pip")
    commands += [
        f"{pip} install --quiet{source} " + " ".join(shlex.quote(r) for r in installed_plugin_requirements()),
        # The distribution also carries the operator side (pyinfra, gevent); the service
        # needs only the plugin's dependencies, installed just above.
        f"{pip} install --quiet --no-deps{source} {shlex.quote(package)}",
    ]
    return commands


def plan_plugin_service_step(node: NodeFacts, settings: NodeSettings) -> StepPlan:
    facts = node.host
    driver_version = node.library.version if node.library else None
    recorded = parse_record(facts.managed_file(STATE_PATH))
    plan = StepPlan("plugin-service")
    if settings.plugin_mode != "host":
        plan.skipped = "the plugin runs as a DaemonSet (plugin mode daemonset)"
        return plan
    ours = node.gpunode_version
    venv = facts.plugin_venv
    if venv.installed_version != ours:
        if venv.python3 is None:
            plan.failed = "python3 is not installed on the host. Fix: install python3, or use --plugin-mode daemonset"
            return plan
        if facts.os.family == "debian" and not venv.venv_package:
            plan.commands.append(apt_install_command([PackageSpec("python3-venv")], allow_downgrades=False))
            plan.changes.append("install python3-venv")
        try:
            plan.commands += venv_install_commands(settings, ours)
        except GpunodeError as exc:
            plan.failed = str(exc)
            return plan
        plan.changes.append(
            f"install gpunode {ours} into {VENV_DIR}"
            + (f" (was {venv.installed_version})" if venv.installed_version else "")
            + (f" from {settings.plugin_wheels}" if settings.plugin_wheels else "")
        )
    unit = render_plugin_unit(kubelet_root=facts.kubelet.root_dir, driver_version=driver_version)
    current = facts.managed_file(UNIT_PATH)
    unit_changed = current != unit
    if unit_changed:
        plan.commands += write_files(node, "plugin-service", [FileSpec(UNIT_PATH, unit)])
        plan.changes.append(f"write {UNIT_PATH}")
        plan.diff = file_diff(UNIT_PATH, current, unit)
    driver_changed = recorded is not None and recorded.driver_version not in (None, driver_version)
    needs_restart = unit_changed or driver_changed or venv.installed_version != ours
    if facts.has_systemd:
        if needs_restart:
            plan.commands += [
                "systemctl daemon-reload",
                f"systemctl enable {UNIT_NAME}",
                f"systemctl restart {UNIT_NAME}",
            ]
            plan.changes.append(f"restart {UNIT_NAME}" + (" (driver changed)" if driver_changed else ""))
        elif venv.unit_active != "active":
            plan.commands += [f"systemctl enable --now {UNIT_NAME}"]
            plan.changes.append(f"start {UNIT_NAME} (it was {venv.unit_active or 'not running'})")
    elif plan.commands:
        plan.notes.append(
            f"no systemd on this host: {UNIT_PATH} is written but could not be "
            f"started; run `{VENV_DIR}/bin/python -m gpunode.plugin serve` under your init system"
        )
    plan.unchanged = f"gpunode {ours} in {VENV_DIR}, {UNIT_NAME} " + (
        venv.unit_active or "written (no systemd on this host)"
    )
    return plan


STEP = NodeStep("plugin-service", "config", plan_plugin_service_step, managed_paths=plugin_service_paths)
