"""What `gpunode bootstrap` prints while it runs, and what it says when it is stopped.

The orchestration reports progress as lines (`connecting to 2 host(s)`,
`[gpu01] driver: will change`, `[gpu01] driver: changed`). They go to stderr as they
come, and they are enough to say, on Ctrl-C or SIGTERM, which hosts had finished, which
were cut off in the middle of a step, and which had not been changed at all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import click

from gpunode.bootstrap.cli.contract import InterruptReport
from gpunode.bootstrap.cli.messages import escape_controls

_STEP_LINE = re.compile(r"^\[(?P<host>[^\]]+)\] (?P<step>[^:]+): (?P<state>.+)$")
_PENDING = ("will change",)
_DONE = ("changed", "unchanged", "FAILED", "failed", "skipped", "would change")


@dataclass
class _HostProgress:
    pending: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)


@dataclass
class BootstrapProgress:
    """Prints progress lines and remembers, per host, which steps were begun and ended."""

    # True once planned changes may be carried out: from the start with --yes, else when
    # the user has confirmed the plan. Before that, a planned change has not begun.
    executing: bool = False
    hosts: dict[str, _HostProgress] = field(default_factory=dict)

    def __call__(self, text: str) -> None:
        click.echo(escape_controls(text, keep_newlines=True), err=True)
        match = _STEP_LINE.match(text)
        if match is None:
            return
        host = self.hosts.setdefault(match["host"], _HostProgress())
        step, state = match["step"], match["state"]
        if state in _PENDING:
            host.pending.append(step)
        elif state in _DONE:
            if step in host.pending:
                host.pending.remove(step)
            host.done.append(step + (" FAILED" if state in ("FAILED", "failed") else ""))

    def interrupt_report(self) -> InterruptReport:
        def finished(p: _HostProgress) -> bool:
            return not p.pending and ("state" in p.done or any(s.endswith("FAILED") for s in p.done))

        done = sorted(name for name, p in self.hosts.items() if finished(p))
        cut_off = {name: p.pending for name, p in self.hosts.items() if p.pending and self.executing}
        untouched = sorted(name for name, p in self.hosts.items() if name not in done and name not in cut_off)
        parts = []
        if done:
            parts.append("node steps finished on: " + ", ".join(done))
        if cut_off:
            parts.append(
                "cut off before these steps had finished: "
                + "; ".join(f"{name} ({', '.join(steps)})" for name, steps in sorted(cut_off.items()))
            )
        if untouched:
            parts.append("stopped between steps (nothing half done) on: " + ", ".join(untouched))
        problem = ("; ".join(parts) if parts else "no host had been contacted yet") + "."
        fix = (
            "run the same command again: every step reads the host first, so a re-run finishes what was "
            "cut off and changes nothing that is done (a file being written is replaced whole, never half)."
        )
        body = {
            "interrupted": {
                "finished": done,
                "cut_off": [{"host": name, "steps": steps} for name, steps in sorted(cut_off.items())],
                "not_changed": untouched,
            }
        }
        return InterruptReport(problem, fix, body)
