"""Regenerate the Python modules of the kubelet APIs the plugin speaks: the device plugin
API (plugin/v1beta1/api.proto) and the PodResources API (plugin/podresources/api.proto).

    .venv/bin/python tests/plugin/plugin_generate_api.py

The generated code depends on the generator's version: grpcio-tools writes the oldest
grpcio and protobuf it works with into the modules (a runtime check), so the tools are
pinned (the `test` extra pins the same versions) and pyproject's runtime floors follow
them. tests/plugin/test_plugin_api.py fails when the committed modules differ from
what this script writes.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
API_DIR = REPO_ROOT / "plugin" / "v1beta1"
PODRESOURCES_DIR = REPO_ROOT / "plugin" / "podresources"
# Each API's directory in the repository -> its package path under the include root.
API_PACKAGES = {API_DIR: "gpunode/plugin/v1beta1", PODRESOURCES_DIR: "gpunode/plugin/podresources"}
PINNED_TOOLS = {"grpcio-tools": "1.66.2", "mypy-protobuf": "3.6.0"}
GENERATED_FILES = ("api_pb2.py", "api_pb2.pyi", "api_pb2_grpc.py", "api_pb2_grpc.pyi")


def check_tool_versions() -> None:
    wrong = {name: version(name) for name, pin in PINNED_TOOLS.items() if version(name) != pin}
    if wrong:
        raise SystemExit(
            f"generate_api: need {PINNED_TOOLS}, found {wrong}; "
            "install the pinned versions (pip install -e '.[test]') and run again"
        )


def generate(out_dir: Path, api_dir: Path = API_DIR) -> None:
    """Write the generated modules for api_dir's api.proto into out_dir."""
    from grpc_tools import protoc

    check_tool_versions()
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        # The proto's path under the include root becomes the import path of the
        # generated modules: gpunode/plugin/v1beta1/api.proto -> gpunode.plugin.v1beta1.api_pb2.
        root = Path(tmp) / "src"
        package = API_PACKAGES[api_dir]
        proto_dir = root / package
        proto_dir.mkdir(parents=True)
        shutil.copy(api_dir / "api.proto", proto_dir / "api.proto")
        gen = Path(tmp) / "gen"
        gen.mkdir()
        args = [
            "grpc_tools.protoc",
            f"-I{root}",
            f"--python_out={gen}",
            f"--grpc_python_out={gen}",
            f"--mypy_out={gen}",
            f"--mypy_grpc_out={gen}",
            f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
            f"{package}/api.proto",
        ]
        if protoc.main(args) != 0:
            raise SystemExit("generate_api: protoc failed")
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in GENERATED_FILES:
            shutil.copy(gen / package / name, out_dir / name)


if __name__ == "__main__":
    for directory in API_PACKAGES:
        generate(directory, directory)
        print(f"generated {', '.join(GENERATED_FILES)} in {directory.relative_to(REPO_ROOT)}")
