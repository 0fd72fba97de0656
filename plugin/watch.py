"""Notice changes in the kubelet's device-plugins directory as they happen.

The kubelet, when it restarts, deletes every socket in the directory and creates a new
kubelet.sock; a plugin has to register again. inotify (through libc, no dependency)
reports that within milliseconds; where it is unavailable, or the directory does not
exist yet, the watcher looks every `poll_seconds` instead. The watcher only says
"something changed"; the manager decides whether it matters.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import threading
from collections.abc import Callable
from pathlib import Path

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_MASK = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF | IN_ATTRIB


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        return libc
    except (OSError, AttributeError):
        return None


class DirectoryWatcher(threading.Thread):
    def __init__(self, directory: Path, on_change: Callable[[], None], poll_seconds: float = 2.0) -> None:
        super().__init__(name="kubelet-dir-watcher", daemon=True)
        self._directory = directory
        self._on_change = on_change
        self._poll = poll_seconds
        self._stop_r, self._stop_w = os.pipe()
        self.using_inotify = False

    def stop(self) -> None:
        os.write(self._stop_w, b"x")

    def run(self) -> None:
        libc = _libc()
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC) if libc else -1
        watching = False
        try:
            while True:
                if fd >= 0 and not watching and libc is not None:
                    watching = libc.inotify_add_watch(fd, os.fsencode(self._directory), _MASK) >= 0
                    self.using_inotify = watching
                    if watching:
                        self._on_change()  # the directory may have changed before the watch began
                readers = [self._stop_r] + ([fd] if watching else [])
                ready, _, _ = select.select(readers, [], [], self._poll)
                if self._stop_r in ready:
                    return
                if watching and fd in ready:
                    events = self._drain(fd)
                    if events & (IN_DELETE_SELF | IN_MOVE_SELF):
                        watching = False  # the directory itself went away: watch it again once back
                self._on_change()
        finally:
            if fd >= 0:
                os.close(fd)

    @staticmethod
    def _drain(fd: int) -> int:
        mask = 0
        try:
            while True:
                data = os.read(fd, 65536)
                if not data:
                    break
                offset = 0
                while offset + 16 <= len(data):
                    event_mask = int.from_bytes(data[offset + 4 : offset + 8], "little")
                    length = int.from_bytes(data[offset + 12 : offset + 16], "little")
                    mask |= event_mask
                    offset += 16 + length
        except BlockingIOError:
            pass
        return mask
