"""Writing a benchmark's section of benchmarks/RESULTS.md, with the machine, date and load.

Each benchmark owns the text between `<!-- KEY:start -->` and `<!-- KEY:end -->`; a new
recording replaces it and leaves the other sections alone.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import statistics
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
# A 1-minute load average above this on this 2-core machine means something else was running.
BUSY = 0.7


def installed_cli_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for timing the gpunode command as a user runs it.

    `pip install` compiles gpunode's modules to bytecode; a process started with
    PYTHONDONTWRITEBYTECODE (as this machine's shells are) compiles every module from source
    on every start, about 0.2 s that no installed gpunode pays. The first timed run writes
    the bytecode, like pip would have.
    """
    env = dict(os.environ if base is None else base)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def measured_on(command: str) -> str:
    """The opening sentence: when, on what, with which command."""
    return (
        f"Measured {datetime.date.today().isoformat()} on a {os.cpu_count()}-core "
        f"{platform.machine()} machine (kernel {platform.release()}), Python "
        f"{platform.python_version()}, with `{command}`."
    )


def load_note(start: float, end: float) -> str:
    """The machine's load: only the load before the benchmark says whether something else
    was running; the load after it includes the benchmark's own work."""
    busy = start > BUSY
    return f"1-minute load average {start:.2f} at start ({end:.2f} at end, the benchmark's own work included): " + (
        "**the machine was busy with other work; the figures are upper bounds.**" if busy else "a quiet machine."
    )


def write_section(key: str, title: str, body: str) -> Path:
    start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
    section = f"{start}\n## {title}\n\n{body.strip()}\n{end}\n"
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end) + r"\n?", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _match: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text)
    print(f"recorded in {RESULTS}")
    return RESULTS


def seconds(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f} s, max {max(values):.2f} s ({len(values)} runs)"
