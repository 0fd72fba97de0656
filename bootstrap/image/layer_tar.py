"""A directory tree as an image layer tar: root-owned, fixed times, sorted, so that the same
tree always gives the same digest."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path


def tree_layer_tar(root: Path, out: Path, mtime: int) -> None:
    """Every file, directory and symlink under `root`, at the same path from the image's /."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(root.rglob("*")):
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(root)))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = mtime
            if not path.is_symlink():
                info.mode = 0o755 if path.is_dir() or os.access(path, os.X_OK) else 0o644
            if info.isreg():
                with open(path, "rb") as data:
                    tar.addfile(info, data)
            else:
                tar.addfile(info)
