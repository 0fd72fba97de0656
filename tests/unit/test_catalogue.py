"""The verdict catalogue: every id a rule can emit is in it, every id in it can be emitted,
and docs/failure-modes.md is generated from it."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from gpunode.bootstrap.core.doctor.catalogue import CATALOGUE, LINKS, failure_modes_table
from gpunode.bootstrap.core.doctor.engine import Findings

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "failure-modes.md"
TABLE_START = "| id | link |"


def _constant(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def emitted_ids() -> dict[str, list[str]]:
    """Every verdict id named in the code where a verdict is made: `findings.add("ID", ...)`,
    a plugin cause `PluginCause(id="ID", ...)`, and the library choice's `LibraryProblem("ID", ...)`
    (which rules_host turns into a verdict of the same id). id -> where."""
    found: dict[str, list[str]] = {}
    for path in sorted((REPO / "bootstrap").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            first = node.args[0] if node.args else None
            if name == "add" and isinstance(func, ast.Attribute) and any(k.arg == "cause" for k in node.keywords):
                verdict = _constant(first)
            elif name == "PluginCause":
                verdict = _constant(next((k.value for k in node.keywords if k.arg == "id"), first))
            elif name == "LibraryProblem":
                verdict = _constant(first)
            else:
                continue
            if verdict is not None:
                found.setdefault(verdict, []).append(f"{path.relative_to(REPO)}:{node.lineno}")
    return found


def test_every_id_a_rule_emits_is_in_the_catalogue() -> None:
    missing = {verdict: where for verdict, where in emitted_ids().items() if verdict not in CATALOGUE}
    assert not missing, f"ids emitted but not in core/doctor/catalogue.py: {missing}"


def test_every_id_in_the_catalogue_can_be_emitted() -> None:
    unused = sorted(set(CATALOGUE) - set(emitted_ids()))
    assert not unused, f"ids in the catalogue that no rule emits: {unused}"


def test_every_entry_is_complete() -> None:
    for item in CATALOGUE.values():
        assert all(link in LINKS for link in item.links), item.id
        assert item.breaks and item.seen and item.fix.endswith((".", ")")), item.id


def test_a_rule_cannot_emit_an_unknown_id_or_put_one_on_another_link() -> None:
    findings = Findings("gpu01")
    with pytest.raises(ValueError, match="not in the catalogue"):
        findings.add("F99", cause="no such verdict")
    with pytest.raises(ValueError, match="sits on"):
        findings.add("F14", cause="a driver verdict on the workload", link="workload")
    verdict = findings.add("F14", cause="module 535.216.01, library 535.261.03")
    assert (verdict.link, verdict.severity, verdict.fix) == ("driver", "critical", CATALOGUE["F14"].fix)


def test_the_failure_modes_document_is_the_catalogue() -> None:
    text = DOC.read_text()
    start = text.index(TABLE_START)
    end = text.index("\n\n", start) + 1
    wanted = text[:start] + failure_modes_table() + text[end:]
    if os.environ.get("GPUNODE_WRITE_DOCS") == "1":
        DOC.write_text(wanted)
    assert text == wanted, "docs/failure-modes.md differs from the catalogue: run with GPUNODE_WRITE_DOCS=1"
