"""The plugin's logs: one line per event on stderr, `event key=value ...`, the device first.

The same line format as gpunode's own logs (the plugin may not import gpunode.bootstrap,
so the few lines are repeated here). Lines are written whole under a lock, so events
from the gRPC, health and watcher threads never interleave.
"""

from __future__ import annotations

import re
import sys
import threading
from typing import TextIO

_BARE = re.compile(r"^[A-Za-z0-9_./:@+,-]+$")
_lock = threading.Lock()
_stream: TextIO | None = None


def format_event(event: str, **fields: object) -> str:
    """`event k=v k2="v 2"`: values with spaces, quotes or newlines are quoted."""
    parts = [event]
    for key, value in fields.items():
        if value is None:
            continue
        text = str(value)
        if not _BARE.match(text):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


def log_event(event: str, **fields: object) -> None:
    line = format_event(event, **fields) + "\n"
    stream = _stream or sys.stderr
    with _lock:
        stream.write(line)
        stream.flush()


def set_stream(stream: TextIO | None) -> None:
    """Send events elsewhere (None: back to stderr)."""
    global _stream
    _stream = stream
