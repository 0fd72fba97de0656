"""The installable package: layout, command, layering, types."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import tomlkit
from conftest import REPO_ROOT


def run_gpunode(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpunode.bootstrap.cli.main", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def test_version_and_help() -> None:
    result = run_gpunode("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("gpunode, version ")
    result = run_gpunode("--help")
    assert result.returncode == 0
    assert "Kubernetes GPU node" in result.stdout


def test_every_command_has_help() -> None:
    import click

    from gpunode.bootstrap.cli.main import cli

    def walk(cmd: click.Command, path: list[str]) -> list[list[str]]:
        found = [path]
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                found += walk(sub, path + [name])
        return found

    for path in walk(cli, []):
        result = run_gpunode(*path, "--help")
        assert result.returncode == 0, (path, result.stderr)
        assert "Usage:" in result.stdout


def test_every_package_directory_is_listed_in_pyproject() -> None:
    config = tomlkit.parse((REPO_ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])  # type: ignore[index]
    roots = {"bootstrap": "gpunode.bootstrap", "plugin": "gpunode.plugin", "templates": "gpunode.templates"}
    on_disk = set()
    for top, name in roots.items():
        for init in (REPO_ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO_ROOT / top)
            on_disk.add(".".join([name, *rel.parts]))
    assert on_disk == listed


def test_nothing_installs_a_top_level_bootstrap_or_plugin(tmp_path: Path) -> None:
    # Run from an empty directory so the checkout itself is not on sys.path.
    probe = "import importlib.util as u; print(u.find_spec('bootstrap'), u.find_spec('plugin'))"
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert result.stdout.strip() == "None None"


def test_plugin_never_loads_pyinfra_gevent_or_bootstrap() -> None:
    probe = (
        "import sys, gpunode.plugin, gpunode.plugin.cli, gpunode.plugin.server, gpunode.plugin.serve; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('pyinfra', 'gevent') "
        "or m.startswith('gpunode.bootstrap')]; print(bad)"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_mypy_strict_on_bootstrap_and_plugin(tmp_path: Path) -> None:
    # mypy cannot follow setuptools' editable-install finder, so give it the installed
    # layout as a tree of links: gpunode/bootstrap -> bootstrap/, gpunode/plugin -> plugin/.
    tree = tmp_path / "gpunode"
    tree.mkdir()
    for top in ("bootstrap", "plugin"):
        (tree / top).symlink_to(REPO_ROOT / top, target_is_directory=True)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--config-file",
            str(REPO_ROOT / "pyproject.toml"),
            "--cache-dir",
            str(tmp_path / ".mypy_cache"),
            "-p",
            "gpunode.bootstrap",
            "-p",
            "gpunode.plugin",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
