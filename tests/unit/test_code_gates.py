"""Gates on the code itself: ruff's lint and format, and the layers import-linter enforces.

Each runs the real tool on the checkout, so CI fails on a violation as it would on a failed test.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT


def _run(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, check=False)


def test_ruff_lint_is_clean() -> None:
    result = _run("ruff", "check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_clean() -> None:
    result = _run("ruff", "format", "--no-cache", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_layers_hold(tmp_path: Path) -> None:
    # import-linter (grimp) cannot follow setuptools' editable-install finder: give it the
    # installed layout as links, gpunode/bootstrap -> bootstrap/ and gpunode/plugin -> plugin/.
    tree = tmp_path / "gpunode"
    tree.mkdir()
    (tree / "__init__.py").write_text("")
    for top in ("bootstrap", "plugin", "templates"):
        (tree / top).symlink_to(REPO_ROOT / top, target_is_directory=True)
    result = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache", str(REPO_ROOT / "pyproject.toml")],
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 3 kept, 0 broken." in result.stdout
