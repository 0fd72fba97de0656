"""The error of the NVML library's probe and choice: a verdict id with the problem and its fix."""

from __future__ import annotations

from collections.abc import Sequence

from gpunode.bootstrap.errors import HostStateError


class LibraryProblem(HostStateError):
    """The host has no usable NVML library, or one gpunode must not pick silently."""

    def __init__(
        self,
        verdict_id: str,
        problem: str,
        fix: str,
        evidence: Sequence[str] = (),
        reboot_required: bool = False,
        module_version: str | None = None,
        library_version: str | None = None,
    ) -> None:
        super().__init__(problem, fix)
        self.verdict_id = verdict_id
        self.evidence = tuple(evidence)
        self.reboot_required = reboot_required
        # F14: the two versions that disagree, for whoever reports it (never read back from the text).
        self.module_version = module_version
        self.library_version = library_version

    def __str__(self) -> str:
        text = f"[{self.verdict_id}] {super().__str__()}"
        if self.reboot_required:
            text += " (reboot required)"
        return text
