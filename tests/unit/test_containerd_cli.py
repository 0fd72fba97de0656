"""`gpunode render containerd`, run as a user runs it: the real command in a subprocess."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from standins.containerd_binaries import containerd_bins  # noqa: F401  (fixture)

from gpunode.bootstrap.core.containerd.plan import runtime_problems

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

NVIDIA = "/usr/bin/nvidia-container-runtime"

# Debian 12's own /etc/containerd/config.toml, as the package ships it.
DEBIAN_DEFAULT = (REPO_ROOT / "tests/data/containerd/debian-12-config.toml").read_text()

SYSTEMD_V3 = """\
# kubeadm node
version = 3

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
  runtime_type = 'io.containerd.runc.v2'
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
    SystemdCgroup = true  # matches the kubelet
"""


def gpunode(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpunode.bootstrap.cli.main", *args], capture_output=True, text=True, check=False
    )


def sections(stdout: str) -> dict[str, tuple[str, str]]:
    """{path: (status, text)} from the labelled default output."""
    found: dict[str, tuple[str, str]] = {}
    parts = re.split(r"^# ==> (.+) \((new file|changed|unchanged)\) <==\n", stdout, flags=re.M)
    assert parts[0] == "", "output starts with a file label"
    for path, status, text in zip(parts[1::3], parts[2::3], parts[3::3]):
        found[path] = (status, text)
    return found


def test_default_output_labels_each_file_and_real_containerd_loads_what_it_says(
    containerd_bins: dict[str, Path], tmp_path: Path
) -> None:
    """Without --containerd-version a schema 2 file gets the 1.x drop-in, which 1.6, 1.7 and 2.x all load."""
    config = tmp_path / "etc" / "containerd" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(DEBIAN_DEFAULT)
    dropin = tmp_path / "etc" / "containerd" / "conf.d" / "99-nvidia.toml"
    result = gpunode("render", "containerd", "--config", str(config), "--dropin", str(dropin))
    assert result.returncode == 0, result.stderr
    assert "assuming containerd 1.x" in result.stderr
    files = sections(result.stdout)
    assert list(files) == [str(config), str(dropin)]
    assert files[str(config)][0] == "changed" and files[str(dropin)][0] == "new file"
    assert config.read_text() == DEBIAN_DEFAULT  # render writes nothing
    for path, (_status, text) in files.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    for version, binary in containerd_bins.items():
        out = subprocess.run(
            [str(binary), "--config", str(config), "config", "dump"], capture_output=True, text=True, check=True
        ).stdout
        assert runtime_problems(out, binary_name=NVIDIA) == (), version


def test_in_place_prints_the_complete_new_config_and_nothing_else(
    containerd_bins: dict[str, Path], tmp_path: Path
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(SYSTEMD_V3)
    result = gpunode("render", "containerd", "--config", str(config), "--containerd-version", "2.1.9", "--in-place")
    assert result.returncode == 0, result.stderr
    new = tomllib.loads(result.stdout)  # stdout is the file, whole
    assert new["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["nvidia"]["options"] == {
        "BinaryName": NVIDIA,
        "SystemdCgroup": True,
    }
    assert result.stdout.startswith("# kubeadm node\n") and "# matches the kubelet" in result.stdout
    assert "note:" not in result.stdout and "note:" in result.stderr
    assert config.read_text() == SYSTEMD_V3
    written = tmp_path / "new.toml"
    written.write_text(result.stdout)
    (binary,) = [b for v, b in containerd_bins.items() if v.startswith("2.")]
    out = subprocess.run(
        [str(binary), "--config", str(written), "config", "dump"], capture_output=True, text=True, check=True
    )
    assert runtime_problems(out.stdout, binary_name=NVIDIA) == ()


def test_diff_is_a_patch_that_turns_the_old_file_into_the_new(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(SYSTEMD_V3)
    full = gpunode("render", "containerd", "--config", str(config), "--in-place", "--containerd-version", "2.1")
    diff = gpunode(
        "render", "containerd", "--config", str(config), "--in-place", "--diff", "--containerd-version", "2.1"
    )
    assert diff.returncode == 0 and diff.stdout.startswith(f"--- {config}\n+++ {config}\n")
    copy = tmp_path / "patched.toml"
    shutil.copy(config, copy)
    subprocess.run(["patch", "-s", str(copy)], input=diff.stdout, text=True, check=True)
    assert copy.read_text() == full.stdout
    # Run on its own result: an empty diff.
    config.write_text(full.stdout)
    again = gpunode(
        "render", "containerd", "--config", str(config), "--in-place", "--diff", "--containerd-version", "2.1"
    )
    assert again.returncode == 0 and again.stdout == "" and "nothing to change" in again.stderr


def test_bad_toml_exits_2_naming_file_line_and_column_and_leaves_the_file_alone(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    broken = b'version = 2\n[plugins."io.containerd.grpc.v1.cri"\n  sandbox_image = "x"\n'
    config.write_bytes(broken)
    os.utime(config, (1_000_000_000, 1_000_000_000))
    for extra in ([], ["--in-place"], ["--diff"]):
        result = gpunode("render", "containerd", "--config", str(config), "--containerd-version", "1.7", *extra)
        assert result.returncode == 2
        assert result.stdout == ""
        assert str(config) in result.stderr and "line 2, column" in result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1  # one paragraph
    assert config.read_bytes() == broken and config.stat().st_mtime == 1_000_000_000


@pytest.mark.parametrize(
    ("text", "version", "expected"),
    [
        ('[plugins.cri]\n  sandbox_image = "x"\n', "1.7", "no `version` key"),
        ('version = 1\n[plugins.cri]\n  sandbox_image = "x"\n', "2.1", "containerd config migrate"),
        ("version = 7\n", "2.1", "does not know"),
        ("version = 3\n", "1.7.24", "reads config versions up to 2"),
        ("version = 4\n", "2.1.9", "reads config versions up to 3"),
        ('version = "2"\n', "1.7", "whole number"),
    ],
    ids=["no-version", "version-1", "unknown", "v3-on-1.7", "v4-on-2.1", "string-version"],
)
def test_schemas_gpunode_will_not_guess_at_exit_2_with_what_to_do(
    tmp_path: Path, text: str, version: str, expected: str
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(text)
    result = gpunode("render", "containerd", "--config", str(config), "--containerd-version", version)
    assert result.returncode == 2, result.stdout
    assert expected in result.stderr and "Fix:" in result.stderr
    assert result.stdout == "" and config.read_text() == text


def test_no_config_file_needs_the_version_and_then_starts_from_the_defaults(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    missing = gpunode("render", "containerd", "--config", str(config))
    assert missing.returncode == 2 and "--containerd-version" in missing.stderr
    result = gpunode("render", "containerd", "--config", str(config), "--containerd-version", "2.1.9", "--in-place")
    assert result.returncode == 0
    assert "built-in defaults" in result.stderr
    assert tomllib.loads(result.stdout)["version"] == 3
    assert not config.exists()


def test_set_default_runtime_says_why_that_alone_gives_no_gpus(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(SYSTEMD_V3)
    plain = gpunode("render", "containerd", "--config", str(config), "--in-place", "--containerd-version", "2.1")
    assert "default_runtime_name" not in plain.stdout  # never the default unless asked
    result = gpunode(
        "render",
        "containerd",
        "--config",
        str(config),
        "--in-place",
        "--containerd-version",
        "2.1",
        "--set-default-runtime",
    )
    assert result.returncode == 0
    assert (
        tomllib.loads(result.stdout)["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["default_runtime_name"]
        == "nvidia"
    )
    assert "no GPUs" in result.stderr and "runtimeClassName: nvidia" in result.stderr


def test_k3s_writes_nothing_and_refuses_what_k3s_does_itself(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        'version = 3\n[plugins."io.containerd.cri.v1.runtime".containerd]\n  default_runtime_name = "runc"\n'
    )
    result = gpunode("render", "containerd", "--config", str(config), "--k3s")
    assert result.returncode == 0 and result.stdout == ""
    assert "config.toml.tmpl" in result.stderr and "restart k3s" in result.stderr
    for flag in ("--in-place", "--set-default-runtime"):
        refused = gpunode("render", "containerd", "--config", str(config), "--k3s", flag)
        assert refused.returncode == 2 and "k3s" in refused.stderr and "Fix:" in refused.stderr


def test_bad_options_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(SYSTEMD_V3)
    for args in (
        ["--runtime-path", "nvidia-container-runtime"],
        ["--dropin", "conf.d/99.toml"],
        ["--containerd-version", "latest"],
        ["--containerd-version", "0.9"],
    ):
        result = gpunode("render", "containerd", "--config", str(config), *args)
        assert result.returncode == 2, (args, result.stderr)
        assert "Fix:" in result.stderr
    directory = gpunode("render", "containerd", "--config", str(tmp_path))
    assert directory.returncode == 2 and "directory" in directory.stderr


def test_render_help_lists_the_containerd_subcommand() -> None:
    result = gpunode("render", "--help")
    assert result.returncode == 0 and "containerd" in result.stdout


def gpunode_bounded(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """The command under a deadline: an input that never ends must fail the test, not hang it."""
    return subprocess.run(
        [sys.executable, "-m", "gpunode.bootstrap.cli.main", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def test_config_that_is_no_regular_file_is_refused_at_once(tmp_path: Path) -> None:
    """/dev/zero (endless), a FIFO (no writer: blocks), a link to a device: exit 2 naming what it is."""
    fifo = tmp_path / "config.fifo"
    os.mkfifo(fifo)
    link = tmp_path / "config.toml"
    link.symlink_to("/dev/zero")
    for path, kind in (("/dev/zero", "character device"), (str(fifo), "FIFO"), (str(link), "character device")):
        result = gpunode_bounded("render", "containerd", "--config", path, "--containerd-version", "1.7")
        assert result.returncode == 2, (path, result.stderr)
        assert kind in result.stderr and "regular file" in result.stderr and "Fix:" in result.stderr


def test_config_far_larger_than_any_real_one_is_refused_unread(tmp_path: Path) -> None:
    """A sparse 8 GiB file: refused by its size, so nothing near that is read into memory."""
    huge = tmp_path / "config.toml"
    with open(huge, "wb") as handle:
        handle.truncate(8 * 1024**3)
    result = gpunode_bounded("render", "containerd", "--config", str(huge), "--containerd-version", "1.7")
    assert result.returncode == 2, result.stderr
    assert "MiB at most" in result.stderr and "Fix:" in result.stderr
