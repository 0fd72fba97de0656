"""gevent for pyinfra, without the start-up cost.

pyinfra runs hosts in greenlets, so paramiko needs gevent's cooperative sockets:
`monkey.patch_all()` must run before anything opens a connection. gevent announces each
patch to plugins through `importlib.metadata.entry_points()`, which rescans every
installed distribution on each of ~30 calls (half a second in a full virtualenv); one
scan, reused for the duration of the patch, gives the same answers.

paramiko checks every incoming packet's MAC with a byte-by-byte Python loop; the standard
library's `hmac.compare_digest` is the same constant-time comparison in C. With ten hosts
the loop was a quarter of gpunode's own CPU time.
"""

from __future__ import annotations

import hmac
import importlib.metadata
import io
from typing import Any

from gpunode.bootstrap.local_paths import append_private


def patch_for_pyinfra() -> None:
    from gevent import monkey

    if not monkey.is_module_patched("socket"):
        scanned = importlib.metadata.entry_points()
        original = importlib.metadata.entry_points

        def entry_points(**selection: Any) -> Any:
            return scanned.select(**selection) if selection else scanned

        importlib.metadata.entry_points = entry_points
        try:
            monkey.patch_all()
        finally:
            importlib.metadata.entry_points = original
    # After patch_all: paramiko must see gevent's socket and threading.
    _compare_macs_in_c()
    _hub_reports_to_a_file()


class _HubReports(io.TextIOBase):
    """gevent's hub prints every exception a greenlet dies of (paramiko's transport
    threads when a host goes away, a Ctrl-C passing through) to stderr, with a bare
    timestamp. gpunode reports per host and step instead; these go to a file for bug
    reports, never to the user's terminal."""

    def write(self, text: str) -> int:
        append_private("greenlets.log", text)
        return len(text)

    def writable(self) -> bool:
        return True


def _hub_reports_to_a_file() -> None:
    import gevent

    gevent.get_hub().exception_stream = _HubReports()


def _compare_macs_in_c() -> None:
    import paramiko.util

    # packet.py looks the function up on paramiko.util at each call.
    setattr(paramiko.util, "constant_time_bytes_eq", hmac.compare_digest)  # noqa: B010 (mypy: overloaded type)
