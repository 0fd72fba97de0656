"""The generated v1beta1 modules: not stale, runtime floors in step, the kubelet's wire names."""

from __future__ import annotations

import re
from pathlib import Path

import tomlkit
from plugin_generate_api import API_DIR, API_PACKAGES, GENERATED_FILES, REPO_ROOT, generate


def test_committed_generated_code_matches_api_proto(tmp_path: Path) -> None:
    stale = []
    for directory in API_PACKAGES:
        out = tmp_path / directory.name
        generate(out, directory)
        stale += [
            directory.name + "/" + n for n in GENERATED_FILES if (out / n).read_bytes() != (directory / n).read_bytes()
        ]
    assert not stale, f"{stale} differ from what api.proto generates: run python tests/plugin/plugin_generate_api.py"


def _floor(requirement: str) -> tuple[int, ...]:
    version = re.match(r"[\d.]+", requirement.split(">=")[1].strip())
    assert version, requirement
    return tuple(int(x) for x in version.group(0).split("."))


def test_runtime_floors_match_what_the_generated_code_requires() -> None:
    deps = tomlkit.parse((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]  # type: ignore[index]
    floors = {d.split(">=")[0].strip(): _floor(d) for d in deps if ">=" in d}  # type: ignore[union-attr]
    grpc_needs = re.search(r"GRPC_GENERATED_VERSION = '([\d.]+)'", (API_DIR / "api_pb2_grpc.py").read_text())
    pb = (API_DIR / "api_pb2.py").read_text()
    pb_needs = re.search(
        r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+),", pb
    )
    assert grpc_needs and pb_needs
    assert floors["grpcio"] == tuple(int(x) for x in grpc_needs.group(1).split("."))
    assert floors["protobuf"] == tuple(int(x) for x in pb_needs.groups())


def test_services_and_fields_are_the_kubelets() -> None:
    from gpunode.plugin.v1beta1 import api_pb2

    file = api_pb2.DESCRIPTOR
    assert file.package == "v1beta1"
    services = {
        s.full_name: {m.name: (m.input_type.name, m.output_type.name, m.server_streaming) for m in s.methods}
        for s in file.services_by_name.values()
    }
    assert services == {
        "v1beta1.Registration": {"Register": ("RegisterRequest", "Empty", False)},
        "v1beta1.DevicePlugin": {
            "GetDevicePluginOptions": ("Empty", "DevicePluginOptions", False),
            "ListAndWatch": ("Empty", "ListAndWatchResponse", True),
            "GetPreferredAllocation": ("PreferredAllocationRequest", "PreferredAllocationResponse", False),
            "Allocate": ("AllocateRequest", "AllocateResponse", False),
            "PreStartContainer": ("PreStartContainerRequest", "PreStartContainerResponse", False),
        },
    }
    fields = {m.name: {f.name: f.number for f in m.fields} for m in file.message_types_by_name.values()}
    assert fields == {
        "DevicePluginOptions": {"pre_start_required": 1, "get_preferred_allocation_available": 2},
        "RegisterRequest": {"version": 1, "endpoint": 2, "resource_name": 3, "options": 4},
        "Empty": {},
        "ListAndWatchResponse": {"devices": 1},
        "TopologyInfo": {"nodes": 1},
        "NUMANode": {"ID": 1},
        "Device": {"ID": 1, "health": 2, "topology": 3},
        "PreStartContainerRequest": {"devices_ids": 1},
        "PreStartContainerResponse": {},
        "PreferredAllocationRequest": {"container_requests": 1},
        "ContainerPreferredAllocationRequest": {
            "available_deviceIDs": 1,
            "must_include_deviceIDs": 2,
            "allocation_size": 3,
        },
        "PreferredAllocationResponse": {"container_responses": 1},
        "ContainerPreferredAllocationResponse": {"deviceIDs": 1},
        "AllocateRequest": {"container_requests": 1},
        "ContainerAllocateRequest": {"devices_ids": 1},
        "CDIDevice": {"name": 1},
        "AllocateResponse": {"container_responses": 1},
        "ContainerAllocateResponse": {"envs": 1, "mounts": 2, "devices": 3, "annotations": 4, "cdi_devices": 5},
        "Mount": {"container_path": 1, "host_path": 2, "read_only": 3},
        "DeviceSpec": {"container_path": 1, "host_path": 2, "permissions": 3},
    }


def test_the_plugin_overrides_every_rpc_the_generated_base_leaves_unimplemented() -> None:
    # The generated DevicePluginServicer answers each RPC with NotImplementedError (gRPC's
    # UNIMPLEMENTED); the served class must replace every one of them.
    from gpunode.plugin.server import DevicePluginService
    from gpunode.plugin.v1beta1 import api_pb2_grpc

    base = api_pb2_grpc.DevicePluginServicer
    rpcs = [name for name in vars(base) if not name.startswith("_")]
    assert set(rpcs) == {
        "GetDevicePluginOptions",
        "ListAndWatch",
        "GetPreferredAllocation",
        "Allocate",
        "PreStartContainer",
    }
    inherited = [name for name in rpcs if getattr(DevicePluginService, name) is getattr(base, name)]
    assert inherited == [], f"served by the generated placeholder: {inherited}"
