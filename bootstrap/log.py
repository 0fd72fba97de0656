"""Structured logs: one line per event, `key=value` pairs, the host or device first."""

from __future__ import annotations

import logging
import re

from gpunode.bootstrap.masking import mask_secrets

_BARE = re.compile(r"^[A-Za-z0-9_./:@+-]+$")

logger = logging.getLogger("gpunode")


def format_event(event: str, **fields: object) -> str:
    """`event k=v k2="v 2"`: values with spaces, quotes or newlines are quoted."""
    parts = [event]
    for key, value in fields.items():
        text = "" if value is None else mask_secrets(str(value))
        if not _BARE.match(text):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


def log_event(event: str, level: int = logging.INFO, **fields: object) -> None:
    logger.log(level, format_event(event, **fields))
