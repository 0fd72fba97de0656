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
    """A whole file to write. `mode` is for a new file; a file that exists keeps its own mode
    and owner. `mode_from` names the file the content was taken from: a new file gets no
    more than that file's permissions and its owner (a drop-in that carries config.toml's
    tables, registry credentials included, is no more readable than config.toml)."""

    path: str
    content: str
    mode: int = 0o644
    mode_from: str | None = None


def _q(value: str) -> str:
    return shlex.quote(value)


# Where a file is really written: a symlink is followed to its target (the link stays as it
# is); a dangling or looping link, a directory or a device where a file should be is refused
# before anything is written. Sets $t. Needs $p.
_RESOLVE = (
    'if [ -L "$p" ] && ! [ -e "$p" ]; then '
    'echo "gpunode: $p is a dangling or looping symlink, not a file; nothing written" >&2; exit 3; fi; '
    'if [ -e "$p" ] && ! [ -f "$p" ]; then '
    'echo "gpunode: $p is not a regular file (a directory or a device); nothing written" >&2; exit 3; fi; '
    't=$p; if [ -L "$p" ]; then t=$(readlink -f -- "$p"); fi'
)


def _resolve(path: str) -> str:
    return f"p={_q(path)}; {_RESOLVE}"


def write_files_script(files: Sequence[FileWrite], backup_dir: str | None) -> str:
    """Back up (when `backup_dir` is given) and then replace each file atomically.

    Every path is checked before the first change, so a refused one leaves all untouched.
    """
    lines = ["set -e", "umask 022"]
    lines += [_resolve(file.path) for file in files]
    if backup_dir is not None:
        lines.append(f"mkdir -p -m 700 {_q(backup_dir)}")
        for index, file in enumerate(files):
            saved = f"{backup_dir}/{index}"
            lines.append(_resolve(file.path))
            lines.append(f'if [ -e "$t" ]; then cp -p "$t" {_q(saved)}; else : > {_q(saved + ".absent")}; fi')
            lines.append(f"printf '%s\\n' {_q(file.path)} > {_q(saved + '.path')}")
    for file in files:
        encoded = base64.b64encode(file.content.encode()).decode()
        lines += [
            _resolve(file.path),
            'd=$(dirname -- "$t"); n=.$(basename -- "$t").gpunode-new; mkdir -p "$d"',
            # Made 0600 first: a secret never sits in a readable file, not for a moment.
            f"(umask 077; printf '%s' {_q(encoded)} | base64 -d > \"$d/$n\")",
            _keep_permissions(file),
            'mv -f "$d/$n" "$t"',
        ]
    if backup_dir is not None:
        # Keep the newest backup sets only; names sort by time.
        root = backup_dir.rsplit("/", 1)[0]
        lines.append(f"ls -1d {_q(root)}/*/ 2>/dev/null | sort | head -n -{BACKUPS_KEPT} | xargs -r rm -rf --")
    return "\n".join(lines)


def _keep_permissions(file: FileWrite) -> str:
    """Mode and owner of the new file: the replaced file's; else no more than `mode_from`'s."""
    same = 'chmod "$(stat -c %a "$t")" "$d/$n"; chown "$(stat -c %u:%g "$t")" "$d/$n"'
    fresh = f'chmod {file.mode:o} "$d/$n"'
    if file.mode_from is not None:
        source = _q(file.mode_from)
        fresh = (
            f"if [ -e {source} ]; then "
            f'm=$(stat -L -c %a {source}); chmod "$(printf %o $(( 0$m & 0{file.mode:o} )))" "$d/$n"; '
            f'chown "$(stat -L -c %u:%g {source})" "$d/$n"; else {fresh}; fi'
        )
    return f'if [ -e "$t" ]; then {same}; else {fresh}; fi'


def restore_files_script(files: Sequence[FileWrite], backup_dir: str) -> str:
    """Put every file back as the backup set recorded it (removing files that were absent).

    Through a symlink, the target is restored and the link left as it is; the saved copy
    (mode and owner kept by cp -p) replaces the file atomically, as the write did.
    """
    lines = ["set -e"]
    for index, file in enumerate(files):
        saved = f"{backup_dir}/{index}"
        lines += [
            f'p={_q(file.path)}; t=$p; if [ -L "$p" ]; then t=$(readlink -f -- "$p"); fi',
            f'if [ -e {_q(saved + ".absent")} ]; then rm -f "$t"; '
            f'elif [ -e {_q(saved)} ]; then cp -p {_q(saved)} "$t.gpunode-restore" && mv -f "$t.gpunode-restore" "$t"; fi',
        ]
    return "\n".join(lines)


def sh(script: str) -> str:
    """One command that runs `script` with sh, whatever the login shell is."""
    return "sh -c " + shlex.quote(script)
