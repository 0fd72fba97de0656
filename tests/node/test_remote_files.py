"""The file-changing scripts, run for real with sh on real files."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from gpunode.bootstrap.node.remote_files import (
    BACKUPS_KEPT,
    FileWrite,
    restore_files_script,
    sh,
    write_files_script,
)


def run(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(sh(script), shell=True, capture_output=True, text=True, check=False)


def test_write_replaces_files_and_a_restore_puts_back_every_byte(tmp_path: Path) -> None:
    existing = tmp_path / "etc" / "config.toml"
    existing.parent.mkdir()
    original = b"version = 2\n# a comment \xe2\x9c\x93 kept byte for byte\n"
    existing.write_bytes(original)
    os.chmod(existing, 0o600)
    created = tmp_path / "etc" / "conf.d" / "99-nvidia.toml"
    hostile = "quote ' \" $(touch pwned) ; `x` \\ \n% end\n"
    files = [FileWrite(str(existing), "version = 2\nnew\n"), FileWrite(str(created), hostile, 0o640)]
    backup = tmp_path / "backups" / "20260101T000000Z-containerd"

    result = run(write_files_script(files, str(backup)))
    assert result.returncode == 0, result.stderr
    assert existing.read_text() == "version = 2\nnew\n"
    assert created.read_text() == hostile
    assert oct(created.stat().st_mode & 0o777) == "0o640"
    assert not (tmp_path / "pwned").exists()
    assert not list((tmp_path / "etc").rglob("*.gpunode-new")), "no temporary file is left behind"

    result = run(restore_files_script(files, str(backup)))
    assert result.returncode == 0, result.stderr
    assert existing.read_bytes() == original
    assert oct(existing.stat().st_mode & 0o777) == "0o600"
    assert not created.exists(), "a file that did not exist before is removed again"


def test_old_backup_sets_are_pruned(tmp_path: Path) -> None:
    target = tmp_path / "file"
    root = tmp_path / "backups"
    for index in range(BACKUPS_KEPT + 3):
        assert (
            run(
                write_files_script([FileWrite(str(target), f"{index}\n")], str(root / f"2026010{index}T000000Z-x"))
            ).returncode
            == 0
        )
    kept = sorted(p.name for p in root.iterdir())
    assert len(kept) == BACKUPS_KEPT
    assert kept[-1] == f"2026010{BACKUPS_KEPT + 2}T000000Z-x"


def test_a_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "ro" / "file"
    target.parent.mkdir()
    target.write_text("old\n")
    blocker = tmp_path / "ro" / ".file.gpunode-new"
    blocker.mkdir()  # the temporary name is taken by a directory: the write must fail
    (blocker / "x").write_text("")
    result = run(write_files_script([FileWrite(str(target), "new\n")], None))
    assert result.returncode != 0
    assert target.read_text() == "old\n"
