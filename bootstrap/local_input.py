"""Files the user hands gpunode on the control machine: regular files of a bounded size only.

A path to a device (/dev/zero), a FIFO or a socket would make a plain read never end or
never start; a huge file would be read whole into memory. Both are refused with the fix.
The file is opened without blocking (a FIFO with no writer would otherwise hang in open)
and judged by fstat of what was opened, so a path swapped between a check and the read
cannot slip through.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from gpunode.bootstrap.errors import UserError

# containerd configs in the wild are a few KiB; a registry mirror list makes tens of KiB.
CONFIG_LIMIT = 4 * 1024 * 1024
# The NVIDIA container toolkit's largest package is a few MiB.
PACKAGE_LIMIT = 256 * 1024 * 1024

_KINDS = {
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a directory",
}


def _size(limit: int) -> str:
    return f"{limit // (1024 * 1024)} MiB"


def read_local_file(path: Path, *, what: str, limit: int = CONFIG_LIMIT) -> bytes:
    """The bytes of `path`, a regular file of at most `limit` bytes; UserError otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except IsADirectoryError:
        raise UserError(f"{path} is a directory, not {what}.", fix=f"give {what} itself.") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}.", fix="check the path and its permissions.") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        kind = _KINDS.get(stat.S_IFMT(info.st_mode), "not a regular file")
        raise UserError(f"{path} is {kind}, not {what}.", fix=f"give {what} as a regular file.")
    with os.fdopen(fd, "rb") as handle:
        if info.st_size > limit:
            raise UserError(
                f"{path} is {info.st_size} bytes, more than any {what} ({_size(limit)} at most).",
                fix=f"give {what} itself, not another file.",
            )
        data = handle.read(limit + 1)
    if len(data) > limit:  # grew while we read it
        raise UserError(f"{path} is larger than {_size(limit)}, more than any {what}.", fix=f"give {what} itself.")
    return data
