"""The plugin image installs gpunode without its dependencies plus the plugin's own four;
the plugin must run on exactly those."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from plugin_generate_api import REPO_ROOT

CONTAINERFILE = REPO_ROOT / "Containerfile"
# The four requirements' import names, and typing_extensions, which grpcio itself requires.
IMAGE_PACKAGES = {"gpunode", "click", "grpc", "google", "pynvml", "typing_extensions", "prometheus_client", "yaml"}
# Present here but not needed: grpc imports grpc_tools only if it happens to be installed
# (here: the test extra); Cython's runtime modules and the venv's editable-install hooks.
NOT_PACKAGES = ("grpc_tools", "cython_runtime", "_cython_", "__main__", "__editable__", "_distutils_hack")


def test_containerfile_selects_the_plugin_requirements_from_pyproject(tmp_path: Path) -> None:
    text = CONTAINERFILE.read_text()
    script = re.search(r'python -c "(.*?)" > /wheels/plugin-requirements.txt', text, re.S)
    assert script, "the Containerfile's requirement selection moved; update this test"
    (tmp_path / "pyproject.toml").write_text((REPO_ROOT / "pyproject.toml").read_text())
    result = subprocess.run(
        [sys.executable, "-c", script.group(1).replace("\\n", "\n").replace("'\n'", "'\\n'")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    names = [re.split(r"[<>=]", line)[0] for line in result.stdout.split()]
    assert sorted(names) == ["click", "grpcio", "nvidia-ml-py", "prometheus_client", "protobuf", "pyyaml"]
    assert 'ENTRYPOINT ["python", "-m", "gpunode.plugin"]' in text and 'CMD ["serve"]' in text
    for source in re.findall(r"^COPY (?!--)(\S+)", text, re.M):
        assert (REPO_ROOT / source).exists(), source


def test_plugin_imports_only_what_the_image_installs() -> None:
    probe = (
        "import sys\n"
        "import gpunode.plugin.cli, gpunode.plugin.serve, gpunode.plugin.server, gpunode.plugin.health, "
        "gpunode.plugin.inventory_view, gpunode.plugin.telemetry, gpunode.plugin.pod_attribution, "
        "gpunode.plugin.nvidia_config, gpunode.plugin.config_source, gpunode.plugin.kube_client\n"
        "outside = sorted({m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names) - set(sys.builtin_module_names))\n"
        "print(' '.join(outside))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    outside = {name for name in result.stdout.split() if not name.startswith(NOT_PACKAGES)}
    assert outside <= IMAGE_PACKAGES, outside - IMAGE_PACKAGES


def test_containerfile_base_is_a_build_arg_and_entry_point_matches_image_build() -> None:
    # People with a registry build the Containerfile, with --build-arg BASE=<their mirror>;
    # `gpunode image build` must give the image the same entry point.
    from gpunode.bootstrap.core.image.kinds import PLUGIN

    text = CONTAINERFILE.read_text()
    assert re.search(r"^ARG BASE=python:3\.\d+-slim$", text, re.M)
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert froms and all(base == "${BASE}" for base in froms), froms
    assert f"ENTRYPOINT {json.dumps(list(PLUGIN.entrypoint))}" in text
    assert f"CMD {json.dumps(list(PLUGIN.cmd))}" in text
