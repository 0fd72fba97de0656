"""The one small error taxonomy every layer raises.

An expected failure is one of these, and the CLI prints it as one paragraph that names
the problem and the fix, never as a traceback.
"""

from __future__ import annotations


class GpunodeError(Exception):
    """A failure gpunode expected and can explain."""

    exit_code = 1

    def __init__(self, problem: str, fix: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def __str__(self) -> str:
        if self.fix:
            return f"{self.problem} Fix: {self.fix}"
        return self.problem


class UserError(GpunodeError):
    """Bad input: a flag, a file, an inventory value. The message says what to change."""

    exit_code = 2


class HostStateError(GpunodeError):
    """The host (or cluster) is in a state gpunode must not work around silently."""

    exit_code = 1


class CouldNotCheck(GpunodeError):
    """A command could not look at what it was asked about (no cluster, no such node), and
    changed nothing: exit status 2, like bad input."""

    exit_code = 2


class TransientError(GpunodeError):
    """Something that may well succeed when tried again (network, a busy lock)."""

    exit_code = 1
