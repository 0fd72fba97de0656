"""Every node step's planner against its cases as data, the way pyinfra tests its operations.

tests/unit/steps/<step>/<case>.yaml holds one case: a host (a snapshot in hosts/, with
`sections` laid over it), the settings, what the run knows besides the host (local toolkit
packages, the library resolved earlier), and the plan expected out: status, the summary's
changes or reason, the commands, the files written, the notes. The runner builds the
snapshot text the host's script would print and reads it with the real parser, so a case
is the host as gpunode sees it.

A new step needs only a directory of cases here. To write the expected part of a new case,
run with GPUNODE_RECORD_STEP_CASES=1 (it fills `expect` from what the planner returns),
then read it: the recorded plan is the claim the case makes.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpunode.bootstrap.core.host.facts import parse_snapshot
from gpunode.bootstrap.core.nvml.library import NvmlLibrary
from gpunode.bootstrap.core.packages.toolkit import LocalPackage
from gpunode.bootstrap.core.settings import NodeSettings
from gpunode.bootstrap.node.steps import NODE_STEPS, StepPlan, step_named
from gpunode.bootstrap.node.steps.base import (
    InstallContainerd,
    NodeFacts,
    PinInstalledDriver,
    RuntimeChange,
    UploadFiles,
    WriteFiles,
)

CASES = Path(__file__).parent / "steps"
RECORD = os.environ.get("GPUNODE_RECORD_STEP_CASES") == "1"
STAMP = "20261207T000000Z"


class _CaseDumper(yaml.SafeDumper):
    """Multi-line text as YAML block literals, so that a recorded file reads as the file."""


def _text(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
    style = "|" if "\n" in text and not any(line != line.rstrip() for line in text.splitlines()) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_CaseDumper.add_representer(str, _text)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` laid on `base`: mappings merged key by key (None removes a key), the rest replaced."""
    merged = dict(base)
    for key, value in over.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def snapshot_text(sections: dict[str, Any]) -> str:
    """What the snapshot script prints for these sections: a mapping is `key base64(value)` lines."""
    lines: list[str] = []
    for name, value in sections.items():
        lines.append(f"@@{name}")
        if isinstance(value, dict):
            lines += [f"{key} {base64.b64encode(str(text).encode()).decode()}" for key, text in value.items()]
        else:
            lines += [str(line) for line in value or ()]
    return "\n".join(lines) + "\n"


def load_case(path: Path) -> dict[str, Any]:
    case: dict[str, Any] = yaml.safe_load(path.read_text())
    host: dict[str, Any] = yaml.safe_load((CASES / "hosts" / f"{case['host']}.yaml").read_text())
    case["sections"] = _merge(host, case.get("sections") or {})
    return case


def node_facts(case: dict[str, Any]) -> NodeFacts:
    local = case.get("local_packages")
    library = case.get("library")
    return NodeFacts(
        host=parse_snapshot(snapshot_text(case["sections"])),
        gpunode_version=case.get("gpunode_version", "0.1.0"),
        stamp=STAMP,
        local_packages=tuple(LocalPackage(**package) for package in local) if local is not None else None,
        library=_library(library) if library is not None else None,
    )


def _library(fields: dict[str, Any]) -> NvmlLibrary:
    return NvmlLibrary(
        path=fields["path"], version=fields["version"], chain=tuple(fields.get("chain", [fields["path"]])), notes=()
    )


def _command(command: Any) -> Any:
    if isinstance(command, WriteFiles):
        return {"write": [f.path for f in command.files], "backup": command.backup}
    if isinstance(command, UploadFiles):
        return {"upload": [list(entry) for entry in command.files]}
    if isinstance(command, RuntimeChange):
        return {
            "runtime_change": {
                "write": [f.path for f in command.writes],
                "backup": command.backup,
                "config_path": command.config_path,
                "runtime": f"{command.runtime_name} -> {command.binary_name}",
                "restart_command": command.restart_command,
                "has_systemd": command.has_systemd,
            }
        }
    if isinstance(command, PinInstalledDriver):
        return {"pin_installed": {"package": command.version_package, "backup": command.backup}}
    if isinstance(command, InstallContainerd):
        return {
            "install_containerd": {
                "commands": list(command.install_commands),
                "config_path": command.config_path,
                "backup": command.backup,
                "systemd_cgroup": command.has_systemd,
                "restart_command": command.restart_command,
            }
        }
    assert isinstance(command, str), f"a command the runner does not know: {command!r}"
    return command


def observed(plan: StepPlan) -> dict[str, Any]:
    """The plan as a case states it (only what is there: an empty list is left out)."""
    shown: dict[str, Any] = {"status": plan.status}
    if plan.failed is not None:
        shown["failed"] = plan.failed
    if plan.skipped is not None:
        shown["skipped"] = plan.skipped
    if plan.changes:
        shown["changes"] = list(plan.changes)
    if plan.unchanged and plan.failed is None and plan.skipped is None:
        shown["unchanged"] = plan.unchanged
    if plan.commands:
        shown["commands"] = [_command(command) for command in plan.commands]
    if plan.files_written:
        shown["files"] = {f.path: {"mode": f"{f.mode:04o}", "content": f.content} for f in plan.files_written}
    if plan.notes:
        shown["notes"] = list(plan.notes)
    if plan.reboot_required:
        shown["reboot_required"] = True
    if plan.library is not None:
        shown["library"] = {"path": plan.library.path, "version": plan.library.version}
    return shown


def _case_paths() -> list[Path]:
    return sorted(path for path in CASES.glob("*/*.yaml") if path.parent.name != "hosts")


@pytest.mark.parametrize("path", _case_paths(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_planner_case(path: Path) -> None:
    case = load_case(path)
    step = step_named(path.parent.name)
    settings = NodeSettings(**(case.get("settings") or {}))
    plan = step.plan(node_facts(case), settings)
    assert plan.name == step.name
    got = observed(plan)
    if RECORD:
        text = path.read_text().split("\nexpect:", 1)[0].rstrip("\n")
        path.write_text(
            text + "\n" + yaml.dump({"expect": got}, Dumper=_CaseDumper, sort_keys=False, width=100, allow_unicode=True)
        )
    assert got == case["expect"], f"{path.relative_to(CASES)}: the plan differs from the case"


REQUIRED = ("unchanged", "first-run")


@pytest.mark.parametrize("step", [s.name for s in NODE_STEPS])
def test_every_step_has_the_cases_it_needs(step: str) -> None:
    """An unchanged host, a first run, and every refusal (`refuses-*`, status failed)."""
    directory = CASES / step
    names = {path.stem for path in directory.glob("*.yaml")}
    missing = [name for name in REQUIRED if name not in names]
    assert not missing, f"tests/unit/steps/{step} has no case {', '.join(missing)}"
    for path in directory.glob("refuses-*.yaml"):
        assert load_case(path)["expect"]["status"] == "failed", f"{path.name} is named a refusal but does not fail"


def test_every_case_directory_is_a_step() -> None:
    known = {s.name for s in NODE_STEPS} | {"hosts"}
    assert {p.name for p in CASES.iterdir() if p.is_dir()} <= known
