"""gevent for pyinfra, without the start-up cost.

pyinfra runs hosts in greenlets, so paramiko needs gevent's cooperative sockets:
`monkey.patch_all()` must run before anything opens a connection. gevent announces each
patch to plugins through `importlib.metadata.entry_points()`, which rescans every
installed distribution on each of ~30 calls (half a second in a full virtualenv); one
scan, reused for the duration of the patch, gives the same answers.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any


def patch_for_pyinfra() -> None:
    from gevent import monkey

    if monkey.is_module_patched("socket"):
        return
    scanned = importlib.metadata.entry_points()
    original = importlib.metadata.entry_points

    def entry_points(**selection: Any) -> Any:
        return scanned.select(**selection) if selection else scanned

    importlib.metadata.entry_points = entry_points
    try:
        monkey.patch_all()
    finally:
        importlib.metadata.entry_points = original
