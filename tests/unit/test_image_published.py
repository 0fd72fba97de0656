"""Until a release has pushed it, bootstrap says the default plugin image does not exist and
what to do instead; a wheel from the release (the workflow writes the marker) says nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from gpunode.bootstrap.cli.main import cli
from gpunode.bootstrap.core.kube.plugin_deployment import bundled_image
from gpunode.bootstrap.image import published
from gpunode.bootstrap.image.published import default_image_published, unpublished_image_notice


def test_notice_names_the_image_and_every_way_out() -> None:
    notice = unpublished_image_notice("bundled", None, None, published=False)
    assert notice is not None
    assert bundled_image() in notice and "not published" in notice
    for way in ("gpunode image build", "--image", "--plugin-mode host", "ctr -n k8s.io images import"):
        assert way in notice
    # Nothing to say when the user chose another image, NVIDIA's plugin, host mode, or the release's wheel.
    assert unpublished_image_notice("bundled", "registry.local/gpunode:0.1.0", None, published=False) is None
    assert unpublished_image_notice("nvidia", None, None, published=False) is None
    assert unpublished_image_notice("bundled", None, "host", published=False) is None
    assert unpublished_image_notice("bundled", None, "daemonset", published=True) is None


def test_the_release_marker_decides(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    assert not files("gpunode.bootstrap.image").joinpath(published.MARKER).is_file()
    assert default_image_published() is False
    (tmp_path / published.MARKER).write_text(bundled_image() + "\n")
    monkeypatch.setattr(published, "files", lambda _package: tmp_path)
    assert default_image_published() is True
    (tmp_path / published.MARKER).write_text("ghcr.io/gpunode/gpunode:0.0.9\n")
    assert default_image_published() is False


def test_bootstrap_prints_it_before_touching_a_host(tmp_path: Path) -> None:
    # A process of its own: bootstrap loads pyinfra, whose gevent patching must stay out of
    # the test process. Port 1 refuses at once: the run ends at the connection, after the notice.
    gpunode = Path(sys.executable).parent / "gpunode"
    env = {**os.environ, "HOME": str(tmp_path)}
    base = [str(gpunode), "bootstrap", "127.0.0.1", "--ssh-port", "1", "--dry-run"]
    result = subprocess.run(base, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert f"warning: The default plugin image {bundled_image()} is not published" in result.stderr
    assert result.stderr.index("not published") < result.stderr.index("connecting to")
    quiet = subprocess.run(
        [*base, "--plugin-mode", "host"], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path
    )
    assert "connecting to" in quiet.stderr and "not published" not in quiet.stderr


def test_render_agent_says_the_default_agent_image_is_not_published(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    from gpunode.bootstrap.core.kube.agent_manifests import agent_image

    result = CliRunner().invoke(cli, ["render", "agent"])
    assert result.exit_code == 0, result.output
    notice = f"warning: The default agent image {agent_image()} is not published"
    assert notice in result.stderr and notice not in result.stdout  # the YAML stays clean
    for way in ("gpunode image build --kind agent", "--image REF", "ctr -n k8s.io images import"):
        assert way in result.stderr
    # Another image, or a release's wheel that pushed both images: nothing to say.
    assert "not published" not in CliRunner().invoke(cli, ["render", "agent", "--image", "r.local/a:1"]).stderr
    (tmp_path / published.MARKER).write_text(f"{bundled_image()}\n{agent_image()}\n")
    monkeypatch.setattr(published, "files", lambda _package: tmp_path)
    assert published.default_image_published() and published.default_agent_image_published()
    assert "not published" not in CliRunner().invoke(cli, ["render", "agent"]).stderr
