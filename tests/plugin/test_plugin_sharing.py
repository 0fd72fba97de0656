"""GPU sharing through NVIDIA's config file: the plugin as a real process, the kubelet
stand-in over real gRPC, the fake NVML.

The expected device lists follow NVIDIA's plugin (internal/rm/device_map.go): every shared
GPU becomes `replicas` devices `<uuid>::0` .. `<uuid>::<replicas-1>` under the resource's
name (or `<name>.shared` with renameByDefault), each Healthy while its GPU is.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import pytest
from plugin_harness import GPU, PluginHarness, fake_nvml_lib, harness, short_dir  # noqa: F401 (fixtures)
from standins.fake_nvml import FakeGpu, FakeMig, FakeNvmlConfig
from standins.kubelet import HEALTHY, UNHEALTHY, admission_event

SHARED = "nvidia.com/gpu.shared"


def uuid(index: int) -> str:
    return FakeGpu(index=index).resolved_uuid()


def replicas(gpus: int, count: int) -> list[str]:
    """NVIDIA's device list for `gpus` GPUs shared `count` ways."""
    return [f"{uuid(g)}::{n}" for g in range(gpus) for n in range(count)]


def mps_daemon(mps_root: Path, resource: str) -> Path:
    """What NVIDIA's MPS control daemon leaves for its clients: its control pipe (a FIFO) in
    <mpsRoot>/<resource>/pipe. (The daemon itself needs a GPU and CUDA: not here.)"""
    pipe = mps_root / resource / "pipe"
    pipe.mkdir(parents=True, exist_ok=True)
    os.mkfifo(pipe / "control")
    return pipe


def write(harness: PluginHarness, text: str, name: str = "config.yaml") -> Path:
    path = harness.root / name
    path.write_text(textwrap.dedent(text))
    return path


def ids(harness: PluginHarness, resource: str = GPU) -> list[str]:
    return [d.id for d in harness.kubelet.devices(resource)]


# NVIDIA's documented examples (the device plugin's README, "Shared Access to GPUs" and
# "As a configuration file"), each on the 8 GPUs the README's text assumes.
README_FLAGS = """\
    version: v1
    flags:
      migStrategy: "none"
      failOnInitError: true
      nvidiaDriverRoot: "/"
      plugin:
        passDeviceSpecs: false
        deviceListStrategy: "envvar"
        deviceIDStrategy: "uuid"
"""
README_TIME_SLICING = """\
    version: v1
    sharing:
      timeSlicing:
        resources:
        - name: nvidia.com/gpu
          replicas: 10
"""
README_TIME_SLICING_RENAMED = """\
    version: v1
    sharing:
      timeSlicing:
        renameByDefault: true
        resources:
        - name: nvidia.com/gpu
          replicas: 10
"""
README_MPS = """\
    version: v1
    sharing:
      mps:
        resources:
        - name: nvidia.com/gpu
          replicas: 10
"""
README_MPS_RENAMED = """\
    version: v1
    sharing:
      mps:
        renameByDefault: true
        resources:
        - name: nvidia.com/gpu
          replicas: 10
"""


@pytest.mark.parametrize(
    ("text", "resource", "expected"),
    [
        (README_FLAGS, GPU, [uuid(g) for g in range(8)]),
        (README_TIME_SLICING, GPU, replicas(8, 10)),
        (README_TIME_SLICING_RENAMED, SHARED, replicas(8, 10)),
        (README_MPS, GPU, replicas(8, 10)),
        (README_MPS_RENAMED, SHARED, replicas(8, 10)),
    ],
    ids=["flags", "time-slicing", "time-slicing-renamed", "mps", "mps-renamed"],
)
def test_nvidias_documented_configs_give_nvidias_device_lists(
    harness: PluginHarness, text: str, resource: str, expected: list[str]
) -> None:
    harness.configure(FakeNvmlConfig.uniform(8))
    mps_root = harness.root / "mps"
    if "mps" in text:
        mps_daemon(mps_root, resource)
    harness.serve("--config-file", str(write(harness, text)), "--mps-root", str(mps_root), resource=resource)
    assert sorted(ids(harness, resource)) == sorted(expected)
    assert harness.kubelet.healthy_count(resource) == len(expected) == (80 if "sharing" in text else 8)
    # A renamed resource replaces nvidia.com/gpu: nothing is left under the old name.
    assert {r.resource for r in harness.kubelet.registrations} == {resource}


def test_four_gpus_four_replicas_are_sixteen_devices_mapped_back_to_their_gpu(harness: PluginHarness) -> None:
    harness.configure(FakeNvmlConfig.uniform(4))
    config = write(
        harness,
        """\
        version: v1
        sharing:
          timeSlicing:
            resources:
            - name: nvidia.com/gpu
              replicas: 4
        """,
    )
    process = harness.serve("--config-file", str(config))
    assert ids(harness) == replicas(4, 4)
    assert harness.kubelet.healthy_count(GPU) == 16
    one = harness.kubelet.allocate(GPU, [f"{uuid(2)}::3"]).container_responses[0]
    assert dict(one.envs) == {"NVIDIA_VISIBLE_DEVICES": uuid(2)}
    # Two replicas of one GPU are that GPU once; replicas of two GPUs are both GPUs.
    same = harness.kubelet.allocate(GPU, [f"{uuid(1)}::0", f"{uuid(1)}::2"]).container_responses[0]
    assert dict(same.envs) == {"NVIDIA_VISIBLE_DEVICES": uuid(1)}
    two = harness.kubelet.allocate(GPU, [f"{uuid(3)}::1", f"{uuid(0)}::0"]).container_responses[0]
    assert dict(two.envs) == {"NVIDIA_VISIBLE_DEVICES": f"{uuid(3)},{uuid(0)}"}
    assert "sharing=time-slicing" in process.log() and "replicas=nvidia.com/gpu:4" in process.log()


def test_preferred_allocation_spreads_replicas_over_the_least_used_gpus(harness: PluginHarness) -> None:
    harness.configure(FakeNvmlConfig.uniform(4))
    config = write(
        harness,
        """\
        version: v1
        sharing:
          timeSlicing:
            resources:
            - name: nvidia.com/gpu
              replicas: 4
        """,
    )
    harness.serve("--config-file", str(config))
    every = replicas(4, 4)
    picked = harness.kubelet.preferred_allocation(GPU, every, [], 4)
    assert sorted(p.split("::")[0] for p in picked) == sorted(uuid(g) for g in range(4))
    # GPU 0 has three replicas in use and GPU 1 one: the next goes to GPU 2 or 3, then 1.
    in_use = {f"{uuid(0)}::0", f"{uuid(0)}::1", f"{uuid(0)}::2", f"{uuid(1)}::0"}
    free = [i for i in every if i not in in_use]
    picked = harness.kubelet.preferred_allocation(GPU, free, [], 3)
    assert [p.split("::")[0] for p in picked] == [uuid(2), uuid(3), uuid(1)]
    # must_include is always kept.
    picked = harness.kubelet.preferred_allocation(GPU, free, [f"{uuid(0)}::3"], 2)
    assert picked[0] == f"{uuid(0)}::3" and picked[1].split("::")[0] == uuid(2)


def test_fail_requests_greater_than_one_refuses_with_the_reason_the_kubelet_shows(harness: PluginHarness) -> None:
    harness.configure(FakeNvmlConfig.uniform(2))
    config = write(
        harness,
        """\
        version: v1
        sharing:
          timeSlicing:
            failRequestsGreaterThanOne: true
            resources:
            - name: nvidia.com/gpu
              replicas: 3
        """,
    )
    process = harness.serve("--config-file", str(config))
    with pytest.raises(grpc.RpcError) as refused:
        harness.kubelet.allocate(GPU, [f"{uuid(0)}::0", f"{uuid(1)}::0"])
    reason, message = admission_event(refused.value)
    assert reason == "UnexpectedAdmissionError"
    assert message == (
        "Allocate failed due to rpc error: code = Unknown desc = invalid allocation request for "
        '"nvidia.com/gpu": invalid request: maximum request size for shared resources is 1; found 2, '
        "which is unexpected"
    )
    assert "allocate_rejected" in process.log() and "shared_request_too_large" in process.log()
    # One replica per container is fine, in several containers of one pod too.
    ok = harness.kubelet.allocate_containers(GPU, [[f"{uuid(0)}::1"], [f"{uuid(1)}::2"]])
    assert [dict(c.envs)["NVIDIA_VISIBLE_DEVICES"] for c in ok.container_responses] == [uuid(0), uuid(1)]


def test_without_fail_requests_greater_than_one_two_replicas_are_given(harness: PluginHarness) -> None:
    harness.configure(FakeNvmlConfig.uniform(2))
    harness.serve("--config-file", str(write(harness, README_TIME_SLICING)))
    answer = harness.kubelet.allocate(GPU, [f"{uuid(0)}::0", f"{uuid(0)}::1"]).container_responses[0]
    assert dict(answer.envs) == {"NVIDIA_VISIBLE_DEVICES": uuid(0)}


def test_rename_and_partial_sharing_give_two_resources(harness: PluginHarness) -> None:
    harness.configure(FakeNvmlConfig.uniform(4))
    config = write(
        harness,
        f"""\
        version: v1
        sharing:
          timeSlicing:
            resources:
            - name: gpu
              rename: gpu.small
              devices: [1, "{uuid(3)}"]
              replicas: 2
        """,
    )
    harness.start("--config-file", str(config))
    harness.kubelet.wait_registered("nvidia.com/gpu.small", timeout=10)
    harness.kubelet.wait_registered(GPU, timeout=10)
    assert ids(harness, "nvidia.com/gpu.small") == [f"{uuid(1)}::0", f"{uuid(1)}::1", f"{uuid(3)}::0", f"{uuid(3)}::1"]
    assert ids(harness) == [uuid(0), uuid(2)]


def test_an_unhealthy_gpu_takes_all_its_replicas_out(harness: PluginHarness) -> None:
    harness.configure(FakeNvmlConfig.uniform(4))
    config = write(
        harness,
        """\
        version: v1
        sharing:
          timeSlicing:
            renameByDefault: true
            resources:
            - name: nvidia.com/gpu
              replicas: 4
        """,
    )
    harness.serve("--config-file", str(config), resource=SHARED)
    harness.nvml.inject_xid(1, 79)
    devices = harness.kubelet.wait_devices(SHARED, lambda ds: sum(d.health == UNHEALTHY for d in ds) == 4, timeout=5)
    assert {d.id for d in devices if d.health == UNHEALTHY} == {f"{uuid(1)}::{n}" for n in range(4)}
    assert harness.kubelet.healthy_count(SHARED) == 12
    assert all(d.health == HEALTHY for d in devices if not d.id.startswith(uuid(1)))


def test_command_line_flags_override_the_file(harness: PluginHarness) -> None:
    harness.configure(FakeNvmlConfig.uniform(2))
    config = write(
        harness,
        """\
        version: v1
        flags:
          plugin:
            deviceIDStrategy: index
        sharing:
          timeSlicing:
            resources:
            - name: nvidia.com/gpu
              replicas: 2
        """,
    )
    harness.serve("--config-file", str(config))
    assert ids(harness) == ["0::0", "0::1", "1::0", "1::1"]
    answer = harness.kubelet.allocate(GPU, ["1::1"]).container_responses[0]
    assert dict(answer.envs) == {"NVIDIA_VISIBLE_DEVICES": "1"}
    harness.processes[-1].terminate()
    harness.serve("--config-file", str(config), "--device-id-strategy", "uuid")
    harness.kubelet.wait_registered(GPU, after=1)
    assert ids(harness) == replicas(2, 2)


def test_nvidias_env_var_names_the_config_file(harness: PluginHarness) -> None:
    harness.configure(FakeNvmlConfig.uniform(2))
    harness.serve(env={"CONFIG_FILE": str(write(harness, README_TIME_SLICING_RENAMED))}, resource=SHARED)
    assert ids(harness, SHARED) == replicas(2, 10)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "version: v1\nsharing:\n  timeSlicing:\n    resources:\n    - name: nvidia.com/gpu\n      replica: 4\n",
            "line 6: sharing.timeSlicing.resources[0].replica: is not a key of NVIDIA's config v1",
        ),
        (
            "version: v1\nsharing:\n  timeSlicing:\n    resources:\n    - name: nvidia.com/gpu\n      replicas: 1\n",
            "line 6: sharing.timeSlicing.resources[0].replicas: 1 replicas: the number must be >= 2",
        ),
        (
            "version: v1\nflags:\n  plugin:\n    deviceListStrategy: volume-mounts\n",
            "line 4: flags.plugin.deviceListStrategy: 'volume-mounts' is not supported",
        ),
        ("version: v1\nsharing:\n  mps:\n    resources:\n    - name: gpu\n      replicas: 2\n", "needs flags.mpsRoot"),
    ],
    ids=["unknown-key", "one-replica", "volume-mounts", "mps-without-root"],
)
def test_a_config_it_cannot_honour_is_refused_with_key_and_line(
    harness: PluginHarness, text: str, expected: str
) -> None:
    config = write(harness, text)
    process = harness.start("--config-file", str(config))
    assert process.proc.wait(timeout=20) == 2
    log = process.log()
    assert expected in log and "Fix:" in log and str(config) in log
    assert not harness.kubelet.registrations


def test_list_shows_the_replicas_a_config_gives(harness: PluginHarness) -> None:
    harness.configure(FakeNvmlConfig.uniform(2))
    config = write(harness, README_TIME_SLICING_RENAMED)
    result = subprocess.run(
        [sys.executable, "-m", "gpunode.plugin", "list", "--config-file", str(config), "-o", "json"],
        env=_list_env(harness),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert f'"id": "{uuid(1)}::9"' in result.stdout and '"name": "nvidia.com/gpu.shared"' in result.stdout


def _list_env(harness: PluginHarness) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUNODE_", "FAKE_NVML_"))}
    env.pop("LD_LIBRARY_PATH", None)
    env.update(harness.nvml.env())
    return env


def test_mps_waits_for_its_control_daemon_then_points_clients_at_it(harness: PluginHarness) -> None:
    harness.configure(FakeNvmlConfig.uniform(2))
    mps_root = harness.root / "mps"
    config = write(
        harness,
        f"""\
        version: v1
        flags:
          mpsRoot: {mps_root}
        sharing:
          mps:
            resources:
            - name: nvidia.com/gpu
              replicas: 2
        """,
    )
    process = harness.start("--config-file", str(config))
    process.wait_log("mps_daemon_not_running", timeout=10)
    assert not harness.kubelet.registrations
    mps_daemon(mps_root, GPU)
    harness.kubelet.wait_registered(GPU, timeout=10)
    assert "mps_daemon_running" in process.log()
    answer = harness.kubelet.allocate(GPU, [f"{uuid(1)}::1"]).container_responses[0]
    assert dict(answer.envs) == {
        "NVIDIA_VISIBLE_DEVICES": uuid(1),
        "CUDA_MPS_PIPE_DIRECTORY": "/mps/nvidia.com/gpu/pipe",
    }
    assert [(m.container_path, m.host_path) for m in answer.mounts] == [
        ("/mps/nvidia.com/gpu/pipe", str(mps_root / "nvidia.com/gpu/pipe")),
        ("/dev/shm", str(mps_root / "shm")),
    ]
    # MPS refuses more than one replica per container unless the config says otherwise.
    with pytest.raises(grpc.RpcError) as refused:
        harness.kubelet.allocate(GPU, [f"{uuid(0)}::0", f"{uuid(0)}::1"])
    assert "maximum request size for shared resources is 1; found 2" in refused.value.details()


def test_mig_devices_are_time_sliced_under_the_mixed_strategy(harness: PluginHarness) -> None:
    harness.configure(
        FakeNvmlConfig(
            gpus=(FakeGpu(0, mig="1"), FakeGpu(1)),
            migs=(FakeMig(0, gi=1, gi_slices=1, memory_mib=4864), FakeMig(0, gi=2, gi_slices=1, memory_mib=4864)),
        )
    )
    config = write(
        harness,
        """\
        version: v1
        flags:
          migStrategy: mixed
        sharing:
          timeSlicing:
            resources:
            - name: nvidia.com/mig-1g.5gb
              replicas: 3
        """,
    )
    harness.serve("--config-file", str(config), resource="nvidia.com/mig-1g.5gb")
    harness.kubelet.wait_registered(GPU)
    migs = [FakeMig(0, gi=g).resolved_uuid() for g in (1, 2)]
    assert ids(harness, "nvidia.com/mig-1g.5gb") == [f"{m}::{n}" for m in migs for n in range(3)]
    assert ids(harness) == [uuid(1)]  # the full GPU is not shared: the config names only the MIG resource
    answer = harness.kubelet.allocate("nvidia.com/mig-1g.5gb", [f"{migs[1]}::2"]).container_responses[0]
    assert dict(answer.envs) == {"NVIDIA_VISIBLE_DEVICES": migs[1]}
    # An XID on one GPU instance takes that MIG device's replicas out, not the other's.
    harness.nvml.inject_xid(0, 8, gi=2, ci=0)
    devices = harness.kubelet.wait_devices(
        "nvidia.com/mig-1g.5gb", lambda ds: sum(d.health == UNHEALTHY for d in ds) == 3, timeout=5
    )
    assert {d.id for d in devices if d.health == UNHEALTHY} == {f"{migs[1]}::{n}" for n in range(3)}
