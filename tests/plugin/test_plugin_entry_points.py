"""The plugin's commands exit with the same code through every way they are started: the
installed `gpunode` console script (what users and the host-mode systemd unit run),
`python -m gpunode.plugin` (the image's ENTRYPOINT) and `python -m gpunode.bootstrap.cli.main`.

The console script once dropped the code click returns without standalone mode, so
`gpunode plugin serve` and `gpunode plugin list` exited 0 when NVML could not start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from plugin_harness import PluginHarness, fake_nvml_lib, harness, short_dir  # noqa: F401  (fixtures)

CONSOLE_SCRIPT = Path(sys.executable).parent / "gpunode"


def entry_points() -> dict[str, list[str]]:
    return {
        "console script": [str(CONSOLE_SCRIPT), "plugin"],
        "python -m gpunode.plugin": [sys.executable, "-m", "gpunode.plugin"],
        "python -m gpunode.bootstrap.cli.main": [sys.executable, "-m", "gpunode.bootstrap.cli.main", "plugin"],
    }


def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUNODE_", "FAKE_NVML_"))}
    env.pop("LD_LIBRARY_PATH", None)
    env.update(extra)
    return env


def test_the_console_script_is_installed() -> None:
    # The checks below mean nothing if the script is not the one pip installed from pyproject.
    assert CONSOLE_SCRIPT.is_file(), f"no installed console script at {CONSOLE_SCRIPT}: pip install -e '.[test]'"
    assert "gpunode.bootstrap.cli.main" in CONSOLE_SCRIPT.read_text()


@pytest.mark.parametrize("name", list(entry_points()))
def test_nvml_failure_exits_1_through_every_entry_point(name: str, harness: PluginHarness) -> None:
    command = entry_points()[name]
    no_library = clean_env()  # no LD_LIBRARY_PATH: libnvidia-ml.so.1 is not found (F1)
    listed = run([*command, "list"], no_library)
    assert listed.returncode == 1, (name, listed.stdout, listed.stderr)
    assert "nvml_init_failed reason=library_not_found" in listed.stderr
    served = run([*command, "serve", "--kubelet-dir", str(harness.kubelet_dir)], no_library)
    assert served.returncode == 1, (name, served.stderr)
    assert "nvml_init_failed" in served.stderr
    refused = clean_env(**harness.nvml.env(), FAKE_NVML_INIT_ERROR="NO_PERMISSION")
    listed = run([*command, "list"], refused)
    assert listed.returncode == 1, (name, listed.stderr)
    assert "nvml_init_failed" in listed.stderr


@pytest.mark.parametrize("name", list(entry_points()))
def test_success_and_bad_input_codes_are_the_same_everywhere(name: str, harness: PluginHarness) -> None:
    command = entry_points()[name]
    env = clean_env(**harness.nvml.env())
    listed = run([*command, "list"], env)
    assert listed.returncode == 0, (name, listed.stderr)
    assert "GPU-" in listed.stdout
    bad = run([*command, "serve", "--resource-name", "nogpu", "--kubelet-dir", str(harness.kubelet_dir)], env)
    assert bad.returncode == 2, (name, bad.stderr)
    assert "domain prefix" in bad.stderr
