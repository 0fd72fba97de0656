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


def mode_of(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_a_replaced_file_keeps_its_mode_and_owner(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("version = 2\n")
    os.chmod(config, 0o600)
    os.chown(config, 4321, 4322)
    result = run(write_files_script([FileWrite(str(config), "version = 2\n# new\n")], str(tmp_path / "b" / "1")))
    assert result.returncode == 0, result.stderr
    assert config.read_text() == "version = 2\n# new\n"
    assert mode_of(config) == 0o600 and (config.stat().st_uid, config.stat().st_gid) == (4321, 4322)


def test_a_new_file_holding_content_of_a_tighter_file_gets_its_permissions(tmp_path: Path) -> None:
    source = tmp_path / "config.toml"
    source.write_text('[auth]\npassword = "s3cret"\n')
    os.chmod(source, 0o600)
    os.chown(source, 4321, 4322)
    dropin = tmp_path / "conf.d" / "99-nvidia.toml"
    plain = tmp_path / "conf.d" / "plain.toml"
    files = [
        FileWrite(str(dropin), 'password = "s3cret"\n', 0o644, mode_from=str(source)),
        FileWrite(str(plain), "x\n"),
    ]
    result = run(write_files_script(files, None))
    assert result.returncode == 0, result.stderr
    assert mode_of(dropin) == 0o600 and (dropin.stat().st_uid, dropin.stat().st_gid) == (4321, 4322)
    assert mode_of(plain) == 0o644


def test_a_symlinked_file_is_edited_through_the_link_and_restored_there(tmp_path: Path) -> None:
    real = tmp_path / "srv" / "containerd.toml"
    real.parent.mkdir()
    original = b"version = 2\n"
    real.write_bytes(original)
    os.chmod(real, 0o640)
    link = tmp_path / "etc" / "config.toml"
    link.parent.mkdir()
    link.symlink_to("../srv/containerd.toml")
    files = [FileWrite(str(link), "version = 2\n# edited\n")]
    backup = tmp_path / "backups" / "1"

    assert run(write_files_script(files, str(backup))).returncode == 0
    assert link.is_symlink() and os.readlink(link) == "../srv/containerd.toml", "the link is left as it was"
    assert real.read_text() == "version = 2\n# edited\n" and mode_of(real) == 0o640
    assert not list(tmp_path.rglob("*.gpunode-new"))

    assert run(restore_files_script(files, str(backup))).returncode == 0
    assert link.is_symlink() and os.readlink(link) == "../srv/containerd.toml"
    assert real.read_bytes() == original and mode_of(real) == 0o640


def test_what_is_no_file_is_refused_before_any_file_changes(tmp_path: Path) -> None:
    first = tmp_path / "first.toml"
    first.write_text("old\n")
    dangling = tmp_path / "dangling.toml"
    dangling.symlink_to(tmp_path / "missing" / "x.toml")
    loop = tmp_path / "loop.toml"
    loop.symlink_to(loop)
    directory = tmp_path / "dir.toml"
    directory.mkdir()
    for bad, words in ((dangling, "dangling or looping"), (loop, "dangling or looping"), (directory, "not a regular")):
        files = [FileWrite(str(first), "new\n"), FileWrite(str(bad), "new\n")]
        result = run(write_files_script(files, str(tmp_path / "backups" / bad.name)))
        assert result.returncode != 0 and words in result.stderr, result.stderr
        assert first.read_text() == "old\n", "nothing written"
    assert dangling.is_symlink() and not (tmp_path / "missing").exists()
    assert loop.is_symlink() and directory.is_dir() and not list(directory.iterdir())
