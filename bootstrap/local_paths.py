"""Paths on the operator's machine (keys, configs, inventories, package directories),
checked before any host is contacted, with a message that says what the path really is."""

from __future__ import annotations

import os
from pathlib import Path

from gpunode.bootstrap.errors import UserError


def check_local_file(what: str, path: str, *, directory: bool = False, may_be_missing: bool = False) -> Path:
    """A path on the operator's machine that must be a readable file (or directory), before
    any host is contacted. The message says what the path really is, as given. With
    `may_be_missing`, a path that does not exist yet is fine (a known_hosts file to create)."""
    expanded = Path(path).expanduser()
    kind = "directory" if directory else "file"
    if not path or any(c in path for c in "\n\0"):
        raise UserError(f"{what} {path!r} is not a path.", fix=f"give {what} the path of a {kind}")
    if not expanded.exists():
        if may_be_missing and not os.path.lexists(expanded):
            return expanded
        if os.path.lexists(expanded):
            problem = f"{what} {path} is a symlink that leads nowhere (its target is missing, or the links loop)."
        else:
            problem = f"{what} {path} does not exist."
        raise UserError(problem, fix=f"point {what} at an existing {kind}")
    if directory and not expanded.is_dir():
        raise UserError(f"{what} {path} is not a directory.", fix=f"point {what} at a directory")
    if not directory and expanded.is_dir():
        raise UserError(f"{what} {path} is a directory, not a file.", fix=f"point {what} at a file")
    if not directory and not expanded.is_file():
        raise UserError(f"{what} {path} is not a regular file.", fix=f"point {what} at a file")
    if not os.access(expanded, os.R_OK | (os.X_OK if directory else 0)):
        raise UserError(f"{what} {path} cannot be read by this user.", fix=f"check the permissions of {path}")
    return expanded


def state_dir() -> Path:
    """Where gpunode keeps what only a bug report needs (full traces): the XDG state
    directory ($XDG_STATE_HOME/gpunode, else ~/.local/state/gpunode)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "gpunode"


def append_private(name: str, text: str) -> Path | None:
    """Append `text` to a file of the state directory readable by its owner only; None when
    no such file can be written (then there is nowhere to keep it)."""
    directory = state_dir()
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as handle:
            handle.write(text)
    except OSError:
        return None
    return directory / name
