"""What a run did, per host and step: the summary users read and CI parses."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

from gpunode.bootstrap.masking import mask_secrets

StepStatus = Literal["changed", "unchanged", "failed", "skipped"]
STEP_STATUSES: tuple[StepStatus, ...] = ("changed", "unchanged", "failed", "skipped")


@dataclass
class StepResult:
    name: str
    status: StepStatus
    detail: str = ""
    # What the step wants the user to know besides its outcome (one sentence each).
    notes: tuple[str, ...] = ()
    # The unified diff of the files the step writes (or would write, in a dry run).
    diff: str | None = None

    def shown_status(self, dry_run: bool) -> str:
        """In a dry run nothing changed: a step that would change says so."""
        return "would change" if dry_run and self.status == "changed" else self.status

    def as_dict(self, dry_run: bool = False) -> dict[str, object]:
        return {
            "name": self.name,
            "status": self.shown_status(dry_run),
            "detail": self.detail,
            "notes": list(self.notes),
            "diff": self.diff,
        }


@dataclass
class HostReport:
    host: str
    steps: list[StepResult] = field(default_factory=list)
    driver_version: str | None = None
    nvml_library: str | None = None
    gpu_count: int | None = None
    reboot_required: bool = False
    node_name: str | None = None
    # Set when the host never got as far as its steps (unreachable, locked, no GPU).
    error: str | None = None
    # Steps that failed only because their evidence could not be read (a dry run whose
    # cluster did not answer): "could not check", not "found a failure".
    unchecked: set[str] = field(default_factory=set)

    @property
    def ok(self) -> bool:
        return self.error is None and all(step.status != "failed" for step in self.steps)

    @property
    def only_unchecked(self) -> bool:
        """Not ok, but only because some steps could not be checked."""
        failed = {step.name for step in self.steps if step.status == "failed"}
        return self.error is None and bool(failed) and failed <= self.unchecked

    def step(self, name: str) -> StepResult | None:
        for step in self.steps:
            if step.name == name:
                return step
        return None

    def record(
        self, name: str, status: StepStatus, detail: str = "", notes: tuple[str, ...] = (), diff: str | None = None
    ) -> StepResult:
        """Add a step, or update it in place when a later phase finishes what it began."""
        if "\nnote: " in detail:  # a layer that folds its notes into the detail: unfold them
            detail, *folded = detail.split("\nnote: ")
            notes = (*notes, *folded)
        existing = self.step(name)
        # What is shown is masked: secret values of configs never reach a report.
        detail = mask_secrets(detail)
        notes = tuple(mask_secrets(note) for note in notes)
        diff = mask_secrets(diff) if diff is not None else None
        if existing is None:
            existing = StepResult(name, status, detail, tuple(notes), diff)
            self.steps.append(existing)
        else:
            existing.status = status
            existing.detail = detail
            existing.notes = tuple(notes) or existing.notes
            existing.diff = diff if diff is not None else existing.diff
        return existing

    def as_dict(self, dry_run: bool = False) -> dict[str, object]:
        return {
            "host": self.host,
            "ok": self.ok,
            "error": mask_secrets(self.error) if self.error is not None else None,
            "steps": [s.as_dict(dry_run) for s in self.steps],
            "driver_version": self.driver_version,
            "nvml_library": self.nvml_library,
            "gpu_count": self.gpu_count,
            "reboot_required": self.reboot_required,
            "node_name": self.node_name,
        }


def reports_to_json(reports: list[HostReport], dry_run: bool = False) -> str:
    return json.dumps({"hosts": [r.as_dict(dry_run) for r in reports]}, indent=2)


def format_reports(reports: list[HostReport], *, dry_run: bool = False) -> str:
    """The human summary: one block per host, one line per step."""
    lines: list[str] = []
    width = max((len(s.name) for r in reports for s in r.steps), default=10)
    for report in reports:
        counts = {status: sum(1 for s in report.steps if s.status == status) for status in STEP_STATUSES}
        if report.error is not None:
            headline = f"FAILED: {mask_secrets(report.error)}"
        else:
            verb = "would change" if dry_run else "changed"
            headline = ("ok" if report.ok else "FAILED") + (
                f" ({counts['changed']} {verb}, {counts['unchanged']} unchanged"
                + (f", {counts['failed']} failed" if counts["failed"] else "")
                + (f", {counts['skipped']} skipped" if counts["skipped"] else "")
                + ")"
            )
        if report.reboot_required:
            headline += ", REBOOT REQUIRED"
        lines.append(f"{report.host}: {headline}")
        for step in report.steps:
            status = step.shown_status(dry_run)
            text = "\n".join([step.detail, *(f"note: {note}" for note in step.notes)]) if step.notes else step.detail
            detail = text.replace("\n", "\n" + " " * (width + 19))
            lines.append(f"  {step.name:<{width}}  {status:<12}  {detail}".rstrip())
    return "\n".join(lines)
