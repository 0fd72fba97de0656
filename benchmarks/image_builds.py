"""What the two image benchmarks (image_bench.py, agent_image_bench.py) share: a timed
`gpunode image build` and reading a figure from its text report. Imported after the
benchmark has put tests/ and tests/plugin on sys.path."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from image_world import CONSOLE_SCRIPT


def build(archive: Path, cache: Path, kind: str | None = None) -> tuple[float, str]:
    """Seconds `gpunode image build [--kind KIND]` took, and what it printed."""
    kind_args = ["--kind", kind] if kind is not None else []
    started = time.monotonic()
    result = subprocess.run(
        [str(CONSOLE_SCRIPT), "image", "build", *kind_args, "--archive", str(archive), "--cache-dir", str(cache)],
        capture_output=True,
        text=True,
        check=True,
    )
    return time.monotonic() - started, result.stdout


def line_value(stdout: str, label: str) -> str:
    return next(line for line in stdout.splitlines() if line.strip().startswith(label)).split(":", 1)[1].strip()
