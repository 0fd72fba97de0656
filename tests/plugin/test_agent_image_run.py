"""The agent image, built from this checkout with `gpunode image build --kind agent` (no
registry), imported into a private containerd with runc from Debian and run for real: the
tools the agent needs (gpunode with its pyinfra side, kubectl, nsenter) answer inside the
container, the image's default command is `gpunode agent`, and the command and arguments
`gpunode render agent` puts in the DaemonSet parse in the image.

What is not run here: the DaemonSet itself (hostPID and a ServiceAccount need a kubelet;
pod_translation.py refuses hostPID rather than run without it). The agent's behaviour is
proved against real hosts by tests/e2e/test_agent.py, as a process.

The Debian base and the kubectl layer are cached in the test cache (the plugin image's
`plugin-image` directory: the same base); only the Python layer is built every session.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import test_cache_dir
from image_world import CONSOLE_SCRIPT, containerd_with_image, gpunode_version, run_image_build, wait_exit
from standins.containerd_instance import ContainerdInstance

from gpunode.bootstrap.core.image.recipe import DEFAULT_BASE

pytestmark = pytest.mark.slow


def _reference() -> str:
    return f"ghcr.io/gpunode/gpunode-agent:{gpunode_version()}"


@pytest.fixture(scope="module")
def agent_build() -> Iterator[tuple[Path, dict]]:
    if os.geteuid() != 0:
        pytest.fail("the image tests need root (mmdebstrap, containerd): run them as tests/run does")
    out = Path(tempfile.mkdtemp(prefix="gpn-agent-image-"))
    archive = out / "gpunode-agent.tar"
    result = run_image_build("--kind", "agent", "--archive", str(archive), "--output", "json")
    assert result.returncode == 0, result.stdout + result.stderr
    yield archive, json.loads(result.stdout)
    shutil.rmtree(out, ignore_errors=True)


@pytest.fixture(scope="module")
def containerd(agent_build: tuple[Path, dict]) -> Iterator[ContainerdInstance]:
    with containerd_with_image(agent_build[0]) as instance:
        yield instance


def run_in_image(containerd: ContainerdInstance, tmp_path: Path, name: str, argv: list[str]) -> tuple[int, str]:
    log = tmp_path / f"{name}.log"
    proc = containerd.run(_reference(), name, [], argv, log)
    return wait_exit(proc, log, timeout=60), log.read_text()


def test_build_reports_every_dependency_kubectl_and_keeps_the_contract(agent_build: tuple[Path, dict]) -> None:
    import jsonschema

    from gpunode.bootstrap.cli.contract import SCHEMA_PATH

    archive, document = agent_build
    jsonschema.validate(document, json.loads(SCHEMA_PATH.read_text()))
    assert document["kind"] == "agent" and document["reference"] == _reference()
    # The plugin image's base, shared: the agent build made (or found) the base under the
    # plugin recipe's key. Built here when this test runs first on a fresh machine.
    assert (test_cache_dir() / "plugin-image" / f"base-{DEFAULT_BASE.key()}" / "layer.tar.gz").is_file()
    # All of gpunode's runtime dependencies, the operator side included (the agent runs
    # bootstrap's node steps through pyinfra).
    for name in ("gpunode", "pyinfra", "gevent", "Jinja2", "tomlkit", "google-re2", "grpcio", "PyYAML"):
        assert name in document["python_packages"], name
    assert "pytest" not in document["python_packages"]  # never the test extra
    assert document["foreign_packages"]["kubectl"].startswith("1.")
    assert "util-linux" in document["debian_packages"]  # nsenter
    assert len(document["layers"]) == 3  # base, kubectl, python
    with tarfile.open(archive) as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        docker = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        config = json.load(tar.extractfile(docker[0]["Config"]))  # type: ignore[arg-type]
    assert index["manifests"][0]["annotations"]["io.containerd.image.name"] == _reference()
    assert config["config"]["Entrypoint"] == ["gpunode"] and config["config"]["Cmd"] == ["agent"]


def test_gpunode_kubectl_and_nsenter_run_inside_the_container(containerd: ContainerdInstance, tmp_path: Path) -> None:
    code, out = run_in_image(containerd, tmp_path, "version", ["gpunode", "--version"])
    assert code == 0 and gpunode_version() in out, out
    code, out = run_in_image(containerd, tmp_path, "kubectl", ["kubectl", "version", "--client", "--output", "json"])
    assert code == 0, out
    assert json.loads(out)["clientVersion"]["major"] == "1", out
    code, out = run_in_image(containerd, tmp_path, "nsenter", ["nsenter", "--version"])
    assert code == 0 and "util-linux" in out, out
    # pyinfra and the agent's own connector load in the image's python (entry point registered).
    probe = (
        "from importlib.metadata import entry_points; import pyinfra, gevent; "
        "print([e.name for e in entry_points(group='pyinfra.connectors') if e.name == 'nsenter'])"
    )
    code, out = run_in_image(containerd, tmp_path, "probe", ["python3", "-c", probe])
    assert code == 0 and "['nsenter']" in out, out


def test_rendered_daemonset_command_parses_and_default_command_is_the_agent(
    containerd: ContainerdInstance, tmp_path: Path
) -> None:
    rendered = subprocess.run(
        [str(CONSOLE_SCRIPT), "render", "agent", "--mode", "apply"], capture_output=True, text=True, check=True
    )
    # Until a release pushed it, render agent says the default image is not published.
    assert "is not published" in rendered.stderr and "gpunode image build --kind agent" in rendered.stderr
    (daemonset,) = [d for d in yaml.safe_load_all(rendered.stdout) if d and d["kind"] == "DaemonSet"]
    (container,) = daemonset["spec"]["template"]["spec"]["containers"]
    assert container["image"] == _reference()  # the image just built and imported
    # The DaemonSet's own command and arguments, with --help: every option it passes exists.
    code, out = run_in_image(containerd, tmp_path, "help", [*container["command"], *container["args"], "--help"])
    assert code == 0 and "Usage: gpunode agent" in out, out
    # No command: the image's ENTRYPOINT and CMD run `gpunode agent`, which without the
    # downward API's NODE_NAME refuses with the contract's exit 2 and a fix.
    code, out = run_in_image(containerd, tmp_path, "default", [])
    assert code == 2 and "Fix:" in out, out
