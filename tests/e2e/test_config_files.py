"""What gpunode writes into containerd's config, on a real Debian 12 host: secrets stay as
private as they were and are never shown, symlinks are edited through and left as they were,
and what is no file is refused at plan time.

Debian 12's containerd is 1.6: it replaces a plugin table from an import wholesale, so the
drop-in carries the whole CRI table of config.toml, registry credentials included.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from standins.debian_host import DebianHost, start_debian_host
from standins.toolkit_packages import DEFAULT_VERSION, build_toolkit_packages

from e2e.bootstrap_harness import DRIVER, RESTART_CONTAINERD, bootstrap, gpunode, target_args
from e2e.host_gpus import nvidia_gpus, set_pci_functions

CONFIG = "/etc/containerd/config.toml"
DROPIN = "/etc/containerd/conf.d/99-nvidia.toml"
SECRET = "hunter2-registry-s3cret"
TOKEN = "eyJhbGciOiJSUzI1NiJ9.identity-token"
WITH_CREDENTIALS = f"""version = 2

[plugins."io.containerd.grpc.v1.cri".registry.configs."registry.example:5000".auth]
  username = "robot"
  password = "{SECRET}"
  identitytoken = "{TOKEN}"
"""


@pytest.fixture(scope="module")
def toolkit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("toolkit")
    build_toolkit_packages(out, version=DEFAULT_VERSION)
    return out


@pytest.fixture(scope="module")
def node(cache_dir: Path, toolkit_dir: Path) -> Iterator[DebianHost]:
    """A GPU host bootstrapped once (driver, toolkit); the tests then set its containerd config."""
    host = start_debian_host(cache_dir, name="gpu-files")
    try:
        set_pci_functions(host, nvidia_gpus(1))
        host.set_loaded_nvidia_module(DRIVER)
        host.start_containerd()
        run = bootstrap(host, toolkit_dir=toolkit_dir)
        assert run.result.returncode == 0, run.explain()
        yield host
    finally:
        host.stop()


def dry_run_text(host: DebianHost, toolkit_dir: Path) -> subprocess.CompletedProcess[str]:
    """The dry run as a person reads it: the summary and the plan with file diffs."""
    return gpunode(
        "bootstrap",
        *target_args(host),
        "--dry-run",
        "--skip-cluster",
        "--kernel-module",
        "none",
        "--driver-version",
        DRIVER,
        "--toolkit-packages",
        str(toolkit_dir),
        "--containerd-restart-command",
        RESTART_CONTAINERD,
    )


def stat(host: DebianHost, path: str) -> str:
    """`<mode> <uid>:<gid> <type>` of a path, not following a link."""
    return host.exec(f"stat -c '%a %u:%g %F' {path}").stdout.strip()


def reset(host: DebianHost) -> None:
    host.exec(f"rm -rf /etc/containerd/conf.d /srv/containerd {CONFIG}")


def test_credentials_keep_their_permissions_and_are_never_shown(node: DebianHost, toolkit_dir: Path) -> None:
    reset(node)
    node.put_file(CONFIG, WITH_CREDENTIALS, mode=0o600)
    node.exec(f"chown 0:4 {CONFIG}")  # group adm, as a site may have it

    dry = bootstrap(node, "--dry-run", toolkit_dir=toolkit_dir)
    text = dry_run_text(node, toolkit_dir)
    for shown in (dry.result.stdout, dry.result.stderr, text.stdout, text.stderr):
        assert SECRET not in shown and TOKEN not in shown
    assert 'password = "***"' in text.stdout, text.stdout  # the diff shows the key, masked
    assert stat(node, CONFIG) == "600 0:4 regular file" and node.exec(f"test -e {DROPIN}", check=False).returncode

    run = bootstrap(node, toolkit_dir=toolkit_dir)
    assert run.result.returncode == 0, run.explain()
    assert SECRET not in run.result.stdout + run.result.stderr
    assert stat(node, CONFIG) == "600 0:4 regular file", "config.toml keeps its mode and owner"
    dropin = node.exec(f"cat {DROPIN}").stdout
    assert SECRET in dropin, "containerd 1.6 needs the whole CRI table in the drop-in"
    assert stat(node, DROPIN) == "600 0:4 regular file", "the drop-in is no more readable than config.toml"
    assert SECRET in node.exec(f"containerd --config {CONFIG} config dump").stdout, "nothing lost"
    record = json.loads(node.exec("cat /var/lib/gpunode/state.json").stdout)
    assert record["containerd_files"] == [CONFIG, DROPIN], "the record names exactly the files gpunode manages here"
    backups = node.exec("find /var/lib/gpunode/backups -type f -name 0 -newer /etc/hostname").stdout.split()
    assert backups and all(stat(node, b).startswith("600 0:4") for b in backups)


def test_a_symlinked_config_is_edited_through_the_link(node: DebianHost, toolkit_dir: Path) -> None:
    reset(node)
    node.put_file("/srv/containerd/config.toml", "version = 2\n", mode=0o640)
    node.exec(f"ln -s ../../srv/containerd/config.toml {CONFIG}")
    run = bootstrap(node, toolkit_dir=toolkit_dir)
    assert run.result.returncode == 0, run.explain()
    assert node.exec(f"readlink {CONFIG}").stdout.strip() == "../../srv/containerd/config.toml"
    assert stat(node, "/srv/containerd/config.toml") == "640 0:0 regular file"
    assert "conf.d" in node.exec("cat /srv/containerd/config.toml").stdout, "the imports line went into the target"


def test_a_rollback_restores_the_target_and_leaves_the_link(node: DebianHost, toolkit_dir: Path) -> None:
    reset(node)
    original = "version = 2\n# kept byte for byte\n"
    node.put_file("/srv/containerd/config.toml", original, mode=0o600)
    node.exec(f"ln -s /srv/containerd/config.toml {CONFIG}")
    # The service manager refuses to restart containerd: gpunode puts the old files back.
    run = bootstrap(node, "--containerd-restart-command", "exit 1", toolkit_dir=toolkit_dir)
    assert run.step("containerd")["status"] == "failed", run.explain()
    assert "previous config is back" in run.said("containerd"), run.explain()
    assert node.exec(f"readlink {CONFIG}").stdout.strip() == "/srv/containerd/config.toml"
    assert node.exec("cat /srv/containerd/config.toml").stdout == original
    assert stat(node, "/srv/containerd/config.toml") == "600 0:0 regular file"
    assert node.exec(f"test -e {DROPIN}", check=False).returncode != 0, "the new drop-in is gone again"
    if node.containerd_pid() is None:
        node.start_containerd()


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (f"ln -s /srv/containerd/missing.toml {CONFIG}", "leads nowhere"),
        (f"ln -s {CONFIG} {CONFIG}", "leads nowhere"),
        (f"mkdir -p {CONFIG}", "is a directory"),
        (f"mkdir -p /etc/containerd/conf.d && ln -s /srv {DROPIN}", "is a directory"),
    ],
    ids=["dangling", "loop", "directory", "dropin-link-to-directory"],
)
def test_what_is_no_file_is_refused_at_plan_time(node: DebianHost, toolkit_dir: Path, make: str, words: str) -> None:
    reset(node)
    node.exec(f"mkdir -p /etc/containerd && {make}")
    before = node.exec("find /etc/containerd /srv -printf '%p %y %l\\n' 2>/dev/null | sort").stdout
    for extra in (("--dry-run",), ()):
        run = bootstrap(node, *extra, toolkit_dir=toolkit_dir)
        step = run.step("containerd")
        assert step["status"] == "failed" and words in step["detail"] and "Fix:" in step["detail"], run.explain()
        assert "Nothing was written" in step["detail"]
        after = node.exec("find /etc/containerd /srv -printf '%p %y %l\\n' 2>/dev/null | sort").stdout
        assert after == before, "nothing written"
