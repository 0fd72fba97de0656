"""Shell scripts that change whole files on a host safely.

Files are written to a temporary name in their own directory and renamed over the old one
(a reader sees the old or the new file, never half of one). Before that, every file that
existed is copied to a backup set under /var/lib/gpunode/backups/<stamp>/ that restores
it byte for byte, and a file that did not exist is recorded as absent so that a rollback
removes it again.
"""

from __future__ import annotations

import base64
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

BACKUP_ROOT = "/var/lib/gpunode/backups"
# Backup sets kept per host; older ones are pruned when a new one is made.
BACKUPS_KEPT = 5


@dataclass(frozen=True)
class FileWrite:
    path: str
    content: str
    mode: int = 0o644


def _q(value: str) -> str:
    return shlex.quote(value)


def write_files_script(files: Sequence[FileWrite], backup_dir: str | None) -> str:
    """Back up (when `backup_dir` is given) and then replace each file atomically."""
    lines = ["set -e", "umask 022"]
    if backup_dir is not None:
        lines.append(f"mkdir -p {_q(backup_dir)}")
        for index, file in enumerate(files):
            saved = f"{backup_dir}/{index}"
            lines.append(
                f"if [ -e {_q(file.path)} ]; then cp -p {_q(file.path)} {_q(saved)}; "
                f"else : > {_q(saved + '.absent')}; fi"
            )
            lines.append(f"printf '%s\\n' {_q(file.path)} > {_q(saved + '.path')}")
    for file in files:
        directory = file.path.rsplit("/", 1)[0] or "/"
        temporary = f"{directory}/.{file.path.rsplit('/', 1)[1]}.gpunode-new"
        encoded = base64.b64encode(file.content.encode()).decode()
        lines += [
            f"mkdir -p {_q(directory)}",
            f"printf '%s' {_q(encoded)} | base64 -d > {_q(temporary)}",
            f"chmod {file.mode:o} {_q(temporary)}",
            f"mv -f {_q(temporary)} {_q(file.path)}",
        ]
    if backup_dir is not None:
        # Keep the newest backup sets only; names sort by time.
        root = backup_dir.rsplit("/", 1)[0]
        lines.append(f"ls -1d {_q(root)}/*/ 2>/dev/null | sort | head -n -{BACKUPS_KEPT} | xargs -r rm -rf --")
    return "\n".join(lines)


def restore_files_script(files: Sequence[FileWrite], backup_dir: str) -> str:
    """Put every file back as the backup set recorded it (removing files that were absent)."""
    lines = ["set -e"]
    for index, file in enumerate(files):
        saved = f"{backup_dir}/{index}"
        lines.append(
            f"if [ -e {_q(saved + '.absent')} ]; then rm -f {_q(file.path)}; "
            f"elif [ -e {_q(saved)} ]; then cp -p {_q(saved)} {_q(file.path)}; fi"
        )
    return "\n".join(lines)


def sh(script: str) -> str:
    """One command that runs `script` with sh, whatever the login shell is."""
    return "sh -c " + shlex.quote(script)
