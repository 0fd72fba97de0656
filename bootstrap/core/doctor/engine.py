"""`gpunode doctor`'s judgement: evidence in, verdicts out, ordered by the chain. Pure.

The chain (docs/failure-modes.md) is walked from the bottom: driver -> container toolkit ->
containerd runtime -> RuntimeClass -> device plugin deployment -> device plugin (NVML)
-> kubelet registration -> Allocatable -> the workload pod. The lowest broken link comes
first, since it explains the ones above it. A verdict for one of the well-known failure modes (docs/failure-modes.md)
carries its id (F1 ... F17); anything else has an id of its own.

Every verdict id, its link, severity and fix live in the catalogue (catalogue.py); the rules
live in rules_host (what the host says), rules_cluster, rules_plugin and rules_workload (what
the cluster says). This module holds the finding type, the ordering, what could not be
checked, the exit status and the two renderings (text, JSON).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from gpunode.bootstrap.core.doctor.catalogue import LINKS, SEVERITIES, Severity, entry
from gpunode.bootstrap.core.doctor.evidence import DoctorCase

__all__ = ["LINKS", "SEVERITIES", "Diagnosis", "Finding", "Findings", "NotChecked", "Severity", "diagnose", "order"]


@dataclass(frozen=True)
class Finding:
    id: str
    cause: str  # one line
    evidence: tuple[str, ...]
    fix: str
    severity: Severity
    link: str
    subject: str = ""  # the host or node (or pod) it is about
    reboot_required: bool = False

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "cause": self.cause,
            "evidence": list(self.evidence),
            "fix": self.fix,
            "severity": self.severity,
            "link": self.link,
            "subject": self.subject,
            "reboot_required": self.reboot_required,
        }


@dataclass(frozen=True)
class NotChecked:
    subject: str
    what: str
    why: str
    asked: bool = True  # the user asked for it and it failed (counts for exit status 2)

    def as_dict(self) -> dict[str, object]:
        return {"subject": self.subject, "what": self.what, "why": self.why, "asked": self.asked}


@dataclass
class Findings:
    """What the rules of one case produce; `add` keeps one verdict per (id, cause)."""

    subject: str
    verdicts: list[Finding] = field(default_factory=list)
    not_checked: list[NotChecked] = field(default_factory=list)

    def add(
        self,
        id: str,
        *,
        cause: str,
        evidence: Iterable[str] = (),
        fix: str | None = None,
        severity: Severity | None = None,
        link: str | None = None,
        reboot_required: bool = False,
    ) -> Finding:
        """A verdict of the catalogue, as found here. `fix` defaults to the catalogue's; `link`
        must be one the catalogue gives the id; `severity` overrides its default (a note)."""
        known = entry(id)
        link = link or known.link
        if link not in known.links:
            raise ValueError(f"verdict {id} sits on {', '.join(known.links)} (core/doctor/catalogue.py), not {link}")
        severity = severity or known.severity
        fix = fix or known.fix
        lines = tuple(line for line in evidence if line)
        if severity != "info":
            # A note (say, "the default runtime is nvidia") gives way to the verdict that
            # shows it actually broke something.
            self.verdicts = [v for v in self.verdicts if not (v.id == id and v.severity == "info")]
        for index, existing in enumerate(self.verdicts):
            if existing.id == id and existing.cause == cause:
                merged = existing.evidence + tuple(l for l in lines if l not in existing.evidence)
                self.verdicts[index] = Finding(
                    id,
                    cause,
                    merged,
                    fix,
                    existing.severity,
                    link,
                    self.subject,
                    existing.reboot_required or reboot_required,
                )
                return self.verdicts[index]
        verdict = Finding(id, cause, lines, fix, severity, link, self.subject, reboot_required)
        self.verdicts.append(verdict)
        return verdict

    def skip(self, what: str, why: str, asked: bool = True) -> None:
        self.not_checked.append(NotChecked(self.subject, what, why, asked))

    def has(self, *ids: str) -> bool:
        return any(v.id in ids for v in self.verdicts)

    def below(self, link: str) -> list[Finding]:
        """Problems found on links lower than `link` (which would explain it)."""
        limit = LINKS.index(link)
        return [v for v in self.verdicts if LINKS.index(v.link) < limit and v.severity != "info"]


@dataclass(frozen=True)
class Diagnosis:
    verdicts: tuple[Finding, ...]
    not_checked: tuple[NotChecked, ...]

    @property
    def problems(self) -> tuple[Finding, ...]:
        return tuple(v for v in self.verdicts if v.severity != "info")

    @property
    def exit_code(self) -> int:
        """0 healthy, 1 problems found, 2 could not check (and found nothing wrong)."""
        if self.problems:
            return 1
        if any(item.asked for item in self.not_checked):
            return 2
        return 0

    def as_dict(self) -> dict[str, object]:
        return {
            "healthy": self.exit_code == 0,
            "exit_code": self.exit_code,
            "verdicts": [v.as_dict() for v in self.verdicts],
            "not_checked": [n.as_dict() for n in self.not_checked],
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)


def order(verdicts: Sequence[Finding]) -> list[Finding]:
    """Lowest link first; within a link, critical before warning before info, then as found."""
    ranked = sorted(
        enumerate(verdicts), key=lambda item: (LINKS.index(item[1].link), SEVERITIES.index(item[1].severity), item[0])
    )
    return [verdict for _, verdict in ranked]


def diagnose_case(case: DoctorCase) -> Findings:
    from gpunode.bootstrap.core.doctor.rules_cluster import cluster_rules
    from gpunode.bootstrap.core.doctor.rules_host import host_rules

    findings = Findings(case.subject)
    host_rules(case, findings)
    cluster_rules(case, findings)
    return findings


def diagnose(cases: Sequence[DoctorCase]) -> Diagnosis:
    """Every case judged; verdicts grouped by case (in the order given), each group ordered
    by the chain."""
    verdicts: list[Finding] = []
    skipped: list[NotChecked] = []
    for case in cases:
        findings = diagnose_case(case)
        verdicts.extend(order(findings.verdicts))
        skipped.extend(findings.not_checked)
    return Diagnosis(tuple(verdicts), tuple(skipped))


def format_text(diagnosis: Diagnosis) -> str:
    """One line per verdict (id, cause), then its evidence and fix; then what was not checked."""
    lines: list[str] = []
    subject = None
    for verdict in diagnosis.verdicts:
        if verdict.subject != subject:
            subject = verdict.subject
            lines.append(f"{subject}:")
        marker = {"critical": "!!", "warning": "! ", "info": "  "}[verdict.severity]
        reboot = " (reboot required)" if verdict.reboot_required else ""
        lines.append(f"{marker}[{verdict.id}] {verdict.cause}{reboot}")
        for line in verdict.evidence:
            lines.append(f"      evidence: {line}")
        lines.append(f"      fix: {verdict.fix}")
    if diagnosis.not_checked:
        lines.append("not checked:")
        for item in diagnosis.not_checked:
            lines.append(f"  {item.subject}: {item.what}: {item.why}")
    code = diagnosis.exit_code
    if code == 0:
        lines.append(
            "healthy: every link that was checked holds"
            + ("" if not diagnosis.verdicts else " (notes above are for information)")
        )
    elif code == 1:
        count = len(diagnosis.problems)
        lines.append(f"{count} problem(s) found; the first one listed for each node explains the rest")
    else:
        lines.append("could not check: nothing wrong found in what could be read, but see above")
    return "\n".join(lines)
