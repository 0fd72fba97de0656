"""The plugin as a real process, driven through the kubelet stand-in and the fake NVML."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from plugin_harness import GPU, PluginHarness, fake_nvml_lib, harness, short_dir  # noqa: F401 (fixtures)
from standins.fake_nvml import FakeGpu, FakeMig, FakeNvmlConfig
from standins.kubelet import HEALTHY, UNHEALTHY, plugin_sockets


def uuid(index: int) -> str:
    return FakeGpu(index=index).resolved_uuid()


def health(harness: PluginHarness, resource: str = GPU) -> dict[str, str]:
    return {d.id: d.health for d in harness.kubelet.devices(resource)}


def test_registers_and_lists_every_gpu_healthy(harness: PluginHarness) -> None:
    harness.configure(FakeNvmlConfig.uniform(4))
    harness.serve()
    registration = harness.kubelet.registrations[0]
    assert registration.version == "v1beta1"
    assert registration.endpoint == "gpunode-nvidia.com-gpu.sock"
    assert registration.get_preferred_allocation_available
    assert health(harness) == {uuid(i): HEALTHY for i in range(4)}
    assert plugin_sockets(harness.kubelet_dir) == ["gpunode-nvidia.com-gpu.sock"]


def test_device_ids_are_stable_across_plugin_restarts(harness: PluginHarness) -> None:
    harness.configure(FakeNvmlConfig.dgx_like())
    first = harness.serve("--device-id-strategy", "index")
    ids = [d.id for d in harness.kubelet.devices(GPU)]
    assert ids == [str(i) for i in range(8)]
    assert first.terminate() == 0
    harness.serve("--device-id-strategy", "index")
    harness.kubelet.wait_registered(GPU, after=1)
    assert [d.id for d in harness.kubelet.devices(GPU)] == ids


def test_allocate_envvar_by_uuid_one_and_many(harness: PluginHarness) -> None:
    harness.configure(FakeNvmlConfig.uniform(4))
    harness.serve()
    one = harness.kubelet.allocate(GPU, [uuid(2)]).container_responses[0]
    assert dict(one.envs) == {"NVIDIA_VISIBLE_DEVICES": uuid(2)}
    assert not one.cdi_devices and not one.devices
    many = harness.kubelet.allocate_containers(GPU, [[uuid(0), uuid(3)], [uuid(1)]])
    assert [dict(c.envs)["NVIDIA_VISIBLE_DEVICES"] for c in many.container_responses] == [
        f"{uuid(0)},{uuid(3)}",
        uuid(1),
    ]


def test_allocate_envvar_by_index(harness: PluginHarness) -> None:
    harness.configure(FakeNvmlConfig.uniform(4))
    harness.serve("--device-id-strategy", "index")
    response = harness.kubelet.allocate(GPU, ["1", "3"]).container_responses[0]
    assert dict(response.envs) == {"NVIDIA_VISIBLE_DEVICES": "1,3"}


def test_allocate_cdi_names_devices_by_uuid(harness: PluginHarness) -> None:
    harness.configure(FakeNvmlConfig.uniform(3))
    harness.serve("--device-list-strategy", "cdi", "--device-id-strategy", "index")
    response = harness.kubelet.allocate(GPU, ["0", "2"]).container_responses[0]
    assert [d.name for d in response.cdi_devices] == [f"nvidia.com/gpu={uuid(0)}", f"nvidia.com/gpu={uuid(2)}"]
    assert "NVIDIA_VISIBLE_DEVICES" not in response.envs


def test_pass_device_specs_only_for_nodes_that_exist(harness: PluginHarness) -> None:
    harness.configure(FakeNvmlConfig.uniform(2))
    dev = harness.root / "host" / "dev"
    dev.mkdir(parents=True)
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm"):  # no nvidia-uvm-tools on this "host"
        (dev / name).touch()
    harness.serve("--pass-device-specs", "--dev-root", str(harness.root / "host"))
    specs = harness.kubelet.allocate(GPU, [uuid(1)]).container_responses[0].devices
    assert [(s.container_path, s.host_path, s.permissions) for s in specs] == [
        ("/dev/nvidia1", str(dev / "nvidia1"), "rw"),
        ("/dev/nvidiactl", str(dev / "nvidiactl"), "rw"),
        ("/dev/nvidia-uvm", str(dev / "nvidia-uvm"), "rw"),
    ]


def test_unknown_device_is_invalid_argument_and_nothing_is_allocated(harness: PluginHarness) -> None:
    harness.configure(FakeNvmlConfig.uniform(2))
    plugin = harness.serve()
    with pytest.raises(grpc.RpcError) as failure:
        harness.kubelet.allocate_containers(GPU, [[uuid(0)], [uuid(1), "GPU-not-here"]])
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "GPU-not-here" in failure.value.details()
    log = plugin.log()
    assert "allocate_rejected" in log and "\nallocate " not in log


def test_xid_marks_device_unhealthy_and_ignored_xid_changes_nothing(harness: PluginHarness) -> None:
    harness.configure(FakeNvmlConfig.uniform(3))
    plugin = harness.serve("--health-recovery-seconds", "0")
    harness.nvml.inject_xid(1, 31)  # application error: ignored by default
    harness.nvml.inject_xid(2, 43)
    plugin.wait_log("xid=43 action=ignored")
    assert health(harness) == {uuid(i): HEALTHY for i in range(3)}
    harness.nvml.inject_xid(1, 8)  # not ignored, not fatal
    devices = harness.kubelet.wait_devices(GPU, lambda ds: any(d.health == UNHEALTHY for d in ds))
    assert {d.id: d.health for d in devices} == {uuid(0): HEALTHY, uuid(1): UNHEALTHY, uuid(2): HEALTHY}
    assert harness.kubelet.healthy_count(GPU) == 2


def test_non_fatal_xid_recovers_after_quiet_period_fatal_never(harness: PluginHarness) -> None:
    harness.configure(FakeNvmlConfig.uniform(3))
    plugin = harness.serve("--health-recovery-seconds", "0.5")
    harness.nvml.inject_xid(0, 8)
    harness.nvml.inject_xid(1, 79)  # fallen off the bus: fatal
    harness.kubelet.wait_devices(GPU, lambda ds: sum(d.health == UNHEALTHY for d in ds) == 2)
    went_bad = time.monotonic()
    devices = harness.kubelet.wait_devices(GPU, lambda ds: sum(d.health == UNHEALTHY for d in ds) == 1, timeout=5)
    assert time.monotonic() - went_bad >= 0.4
    assert {d.id: d.health for d in devices}[uuid(1)] == UNHEALTHY
    assert "device_recovered device=" + uuid(0) in plugin.log()
    time.sleep(1.0)
    assert health(harness)[uuid(1)] == UNHEALTHY


def test_fatal_xid_is_remembered_across_kubelet_restart(harness: PluginHarness) -> None:
    harness.configure(FakeNvmlConfig.uniform(2))
    harness.serve()
    harness.nvml.inject_xid(1, 79)
    harness.kubelet.wait_devices(GPU, lambda ds: any(d.health == UNHEALTHY for d in ds))
    harness.kubelet.restart()
    harness.kubelet.wait_registered(GPU, after=1)
    assert health(harness) == {uuid(0): HEALTHY, uuid(1): UNHEALTHY}


def test_lost_gpu_is_unhealthy(harness: PluginHarness) -> None:
    harness.configure(FakeNvmlConfig.uniform(3))
    plugin = harness.serve()
    harness.nvml.lose_gpu(0)
    devices = harness.kubelet.wait_devices(GPU, lambda ds: any(d.health == UNHEALTHY for d in ds))
    assert {d.id: d.health for d in devices} == {uuid(0): UNHEALTHY, uuid(1): HEALTHY, uuid(2): HEALTHY}
    # XID 79 and the GPU gone at once: the event still names its GPU, whose queries now fail.
    harness.nvml.inject_xid(2, 79)
    harness.nvml.lose_gpu(2)
    harness.kubelet.wait_devices(GPU, lambda ds: [d.health for d in ds] == [UNHEALTHY, HEALTHY, UNHEALTHY])
    assert f"xid gpu={uuid(2)} xid=79 action=fatal" in plugin.log()


def test_gpu_without_event_support_is_served_and_named(harness: PluginHarness) -> None:
    harness.configure(FakeNvmlConfig(gpus=(FakeGpu(0), FakeGpu(1, events=False))))
    plugin = harness.serve()
    assert harness.kubelet.healthy_count(GPU) == 2
    assert f"health_checks watched=1 unsupported={uuid(1)}" in plugin.log()


def test_health_checks_can_be_disabled(harness: PluginHarness) -> None:
    harness.configure(FakeNvmlConfig.uniform(2))
    plugin = harness.serve(env={"GPUNODE_HEALTH_CHECKS": "false"})
    assert "health_checks enabled=false" in plugin.log()
    harness.nvml.inject_xid(0, 79)
    time.sleep(0.5)
    assert harness.kubelet.healthy_count(GPU) == 2


def test_kubelet_restart_means_registering_again_within_a_second(harness: PluginHarness) -> None:
    harness.configure(FakeNvmlConfig.uniform(2))
    harness.serve()
    for number in (2, 3):
        restarted = time.monotonic()
        harness.kubelet.restart()
        registration = harness.kubelet.wait_registered(GPU, timeout=5, after=number - 1)
        assert registration.at - restarted < 1.0
        assert harness.kubelet.healthy_count(GPU) == 2
    assert plugin_sockets(harness.kubelet_dir) == ["gpunode-nvidia.com-gpu.sock"]


def test_kubelet_absent_for_a_while_then_back(harness: PluginHarness) -> None:
    harness.configure(FakeNvmlConfig.uniform(1))
    plugin = harness.serve()
    harness.kubelet.stop()
    time.sleep(1.5)  # several failed attempts, with backoff
    assert plugin.proc.poll() is None
    back = time.monotonic()
    harness.kubelet.restart()
    registration = harness.kubelet.wait_registered(GPU, timeout=5, after=1)
    assert registration.at - back < 1.0


def test_stream_ended_by_kubelet_means_registering_again(harness: PluginHarness) -> None:
    harness.configure(FakeNvmlConfig.uniform(2))
    plugin = harness.serve()
    ended = time.monotonic()
    harness.kubelet.end_stream(GPU)
    registration = harness.kubelet.wait_registered(GPU, timeout=5, after=1)
    assert registration.at - ended < 1.0
    assert harness.kubelet.healthy_count(GPU) == 2
    assert "stream_ended resource=nvidia.com/gpu by=kubelet" in plugin.log()


def test_socket_removed_while_the_kubelet_dials_it_means_registering_again_at_once(harness: PluginHarness) -> None:
    # The kubelet answers Register only after dialing the plugin's socket back, for up to
    # 10 s. If the socket goes meanwhile, the plugin must not wait out its Register deadline.
    harness.configure(FakeNvmlConfig.uniform(2))
    plugin = harness.serve()
    harness.kubelet.hold_registrations()
    harness.kubelet.end_stream(GPU)  # the plugin restarts its server and registers again
    harness.kubelet.wait_held_registration()
    (harness.kubelet_dir / "gpunode-nvidia.com-gpu.sock").unlink()
    removed = time.monotonic()
    harness.kubelet.release_registrations()
    harness.kubelet.wait_registered(GPU, timeout=10, after=1)
    assert time.monotonic() - removed < 1.0
    assert "was removed while the kubelet was dialing it" in plugin.wait_log("was removed while")
    harness.kubelet.wait_devices(GPU, lambda ds: len(ds) == 2 and all(d.health == HEALTHY for d in ds), timeout=10)
    assert plugin_sockets(harness.kubelet_dir) == ["gpunode-nvidia.com-gpu.sock"]


def test_sigterm_stops_cleanly_and_removes_the_socket(harness: PluginHarness) -> None:
    plugin = harness.serve()
    assert plugin_sockets(harness.kubelet_dir) == ["gpunode-nvidia.com-gpu.sock"]
    assert plugin.terminate() == 0
    assert plugin_sockets(harness.kubelet_dir) == []
    assert plugin.log().rstrip().endswith("plugin_stopped")
    harness.kubelet.wait_for(lambda: not harness.kubelet.registered(GPU), 5, "disconnect")
    assert harness.kubelet.healthy_count(GPU) == 0


def test_library_not_found_fails_with_one_line_naming_the_fix(harness: PluginHarness) -> None:
    plugin = harness.start(nvml=False)
    assert plugin.proc.wait(10) == 1
    lines = plugin.log().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("nvml_init_failed reason=library_not_found ")
    assert "libnvidia-ml.so.1" in lines[0] and "runtimeClassName nvidia" in lines[0]
    assert "LD_LIBRARY_PATH=/usr/local/lib" in lines[0]
    assert harness.kubelet.registration_count() == 0


def test_no_permission_fails_naming_device_access(harness: PluginHarness) -> None:
    plugin = harness.start(env={"FAKE_NVML_INIT_ERROR": "NO_PERMISSION"})
    assert plugin.proc.wait(10) == 1
    (line,) = plugin.log().splitlines()
    assert line.startswith("nvml_init_failed reason=no_permission ")
    assert "Insufficient Permissions" in line and "privileged" in line


def test_init_failure_without_fail_on_init_error_stays_up_and_advertises_nothing(harness: PluginHarness) -> None:
    plugin = harness.start(env={"FAKE_NVML_INIT_ERROR": "DRIVER_NOT_LOADED", "GPUNODE_FAIL_ON_INIT_ERROR": "0"})
    plugin.wait_log("nvml_init_failed reason=driver_not_loaded ")
    time.sleep(0.5)
    assert plugin.proc.poll() is None
    assert harness.kubelet.registration_count() == 0
    assert plugin_sockets(harness.kubelet_dir) == []
    assert plugin.terminate() == 0


def test_mig_mixed_serves_one_resource_per_profile(harness: PluginHarness) -> None:
    harness.configure(
        FakeNvmlConfig(
            gpus=(FakeGpu(0, mig="1"), FakeGpu(1, mig="1"), FakeGpu(2)),
            migs=(
                FakeMig(0, gi=1, gi_slices=1, memory_mib=4864),
                FakeMig(0, gi=2, gi_slices=1, memory_mib=4864),
                FakeMig(0, gi=3, gi_slices=2, ci_slices=2, memory_mib=9728),
                FakeMig(1, gi=1, gi_slices=3, ci_slices=3, memory_mib=19968),
            ),
        )
    )
    plugin = harness.serve("--mig-strategy", "mixed", resource="nvidia.com/mig-1g.5gb")
    for resource in ("nvidia.com/mig-2g.10gb", "nvidia.com/mig-3g.20gb", GPU):
        harness.kubelet.wait_registered(resource)
    assert len(harness.kubelet.devices("nvidia.com/mig-1g.5gb")) == 2
    assert [d.id for d in harness.kubelet.devices(GPU)] == [uuid(2)]
    mig = FakeMig(0, gi=1).resolved_uuid()
    response = harness.kubelet.allocate("nvidia.com/mig-1g.5gb", [mig]).container_responses[0]
    assert dict(response.envs) == {"NVIDIA_VISIBLE_DEVICES": mig}
    # An XID on one GPU instance marks only that MIG device.
    harness.nvml.inject_xid(0, 8, gi=2, ci=0)
    devices = harness.kubelet.wait_devices("nvidia.com/mig-1g.5gb", lambda ds: any(d.health == UNHEALTHY for d in ds))
    assert {d.id: d.health for d in devices} == {mig: HEALTHY, FakeMig(0, gi=2).resolved_uuid(): UNHEALTHY}
    assert harness.kubelet.healthy_count("nvidia.com/mig-2g.10gb") == 1
    assert plugin.terminate() == 0
    assert plugin_sockets(harness.kubelet_dir) == []


def test_mig_single_serves_mig_devices_as_the_gpu_resource(harness: PluginHarness) -> None:
    harness.configure(
        FakeNvmlConfig(
            gpus=(FakeGpu(0, mig="1"), FakeGpu(1, mig="1")), migs=(FakeMig(0, gi=1), FakeMig(0, gi=2), FakeMig(1, gi=1))
        )
    )
    harness.serve("--mig-strategy", "single", "--device-id-strategy", "index")
    assert [d.id for d in harness.kubelet.devices(GPU)] == ["0:0", "0:1", "1:0"]
    response = harness.kubelet.allocate(GPU, ["0:1"]).container_responses[0]
    assert dict(response.envs) == {"NVIDIA_VISIBLE_DEVICES": "0:1"}


def test_mig_without_monitoring_rights_fails_naming_the_capability(harness: PluginHarness) -> None:
    harness.configure(FakeNvmlConfig(gpus=(FakeGpu(0, mig="1", mig_error="NO_PERMISSION"),), migs=(FakeMig(0, gi=1),)))
    plugin = harness.start("--mig-strategy", "mixed")
    assert plugin.proc.wait(10) == 1
    (line,) = plugin.log().splitlines()
    assert line.startswith("nvml_init_failed reason=mig_no_permission ")
    assert "NVIDIA_MIG_MONITOR_DEVICES=all" in line and "SYS_ADMIN" in line
    # The same node with MIG strategy none does not need MIG rights at all.
    harness.serve("--mig-strategy", "none")
    assert [d.id for d in harness.kubelet.devices(GPU)] == [uuid(0)]


def test_mig_single_with_mixed_layout_fails_naming_mixed(harness: PluginHarness) -> None:
    harness.configure(FakeNvmlConfig(gpus=(FakeGpu(0, mig="1"), FakeGpu(1)), migs=(FakeMig(0, gi=1),)))
    plugin = harness.start("--mig-strategy", "single")
    assert plugin.proc.wait(10) == 1
    (line,) = plugin.log().splitlines()
    assert "reason=mig_strategy_mismatch" in line and "--mig-strategy mixed" in line


def test_eight_gpus_preferred_allocation_follows_topology(harness: PluginHarness) -> None:
    harness.configure(FakeNvmlConfig.dgx_like())
    harness.serve()
    ids = [d.id for d in harness.kubelet.devices(GPU)]
    assert [d.topology for d in harness.kubelet.devices(GPU)] == [(0,)] * 4 + [(1,)] * 4
    prefer = harness.kubelet.preferred_allocation
    assert prefer(GPU, ids, [], 2) == [uuid(0), uuid(1)]  # an NVLink pair
    assert prefer(GPU, ids, [uuid(5)], 2) == [uuid(4), uuid(5)]  # its NVLink partner
    assert prefer(GPU, ids, [uuid(6)], 4) == [uuid(4), uuid(5), uuid(6), uuid(7)]  # same CPU, two pairs
    rest = [ids[i] for i in (0, 2, 3, 5, 6)]  # 1, 4, 7 taken
    assert prefer(GPU, rest, [], 2) == [uuid(2), uuid(3)]
    assert prefer(GPU, ids, [], 8) == ids
    assert prefer(GPU, ids, [], 2) == prefer(GPU, ids, [], 2)  # deterministic


def test_environment_variables_configure_everything(harness: PluginHarness) -> None:
    harness.configure(FakeNvmlConfig.uniform(2))
    env = {
        "GPUNODE_KUBELET_DIR": str(harness.kubelet_dir),
        "GPUNODE_DEVICE_ID_STRATEGY": "index",
        "GPUNODE_DEVICE_LIST_STRATEGY": "cdi",
        "GPUNODE_PASS_DEVICE_SPECS": "0",
        "GPUNODE_HEALTH_IGNORE_XIDS": "8",
        "GPUNODE_HEALTH_RECOVERY_SECONDS": "0",
    }
    plugin = harness.start(kubelet_dir=False, env=env)
    harness.kubelet.wait_registered(GPU, timeout=10)
    assert [d.id for d in harness.kubelet.devices(GPU)] == ["0", "1"]
    response = harness.kubelet.allocate(GPU, ["1"]).container_responses[0]
    assert [d.name for d in response.cdi_devices] == [f"nvidia.com/gpu={uuid(1)}"] and not response.devices
    harness.nvml.inject_xid(0, 8)
    plugin.wait_log("xid=8 action=ignored")
    assert harness.kubelet.healthy_count(GPU) == 2


def test_metrics_endpoint(harness: PluginHarness) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    harness.configure(FakeNvmlConfig.uniform(2))
    harness.serve("--metrics-addr", f"127.0.0.1:{port}")
    harness.kubelet.allocate(GPU, [uuid(0)])
    with pytest.raises(grpc.RpcError):
        harness.kubelet.allocate(GPU, ["nope"])
    harness.nvml.inject_xid(1, 79)
    harness.kubelet.wait_devices(GPU, lambda ds: any(d.health == UNHEALTHY for d in ds))
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("gpunode_plugin_devices", (("health", "Healthy"), ("resource", GPU)))] == 1
    assert samples[("gpunode_plugin_devices", (("health", "Unhealthy"), ("resource", GPU)))] == 1
    assert samples[("gpunode_plugin_xid_events_total", (("device", uuid(1)), ("xid", "79")))] == 1
    assert samples[("gpunode_plugin_registrations_total", (("resource", GPU),))] == 1
    assert samples[("gpunode_plugin_allocate_requests_total", (("code", "OK"), ("resource", GPU)))] == 1
    assert samples[("gpunode_plugin_allocate_requests_total", (("code", "INVALID_ARGUMENT"), ("resource", GPU)))] == 1
    assert samples[("gpunode_plugin_allocate_duration_seconds_count", ())] == 2
    assert samples[("gpunode_plugin_nvml_up", ())] == 1


def test_bad_flag_values_exit_2_naming_the_problem(harness: PluginHarness) -> None:
    for args, words in (
        (["--resource-name", "gpu"], "domain prefix"),
        (["--health-ignore-xids", "13,x"], "not an XID number"),
        (["--metrics-addr", "9400"], "host:port"),
        (["--mig-strategy", "some"], "'some' is not one of"),
    ):
        plugin = harness.start(*args)
        assert plugin.proc.wait(10) == 2, args
        assert words in plugin.log(), plugin.log()
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        plugin = harness.start("--metrics-addr", f"127.0.0.1:{busy.getsockname()[1]}")
        assert plugin.proc.wait(10) == 2
    assert "cannot serve metrics on 127.0.0.1:" in plugin.log()
    long_dir = harness.root / ("x" * 120)
    plugin = harness.start("--kubelet-dir", str(long_dir), kubelet_dir=False)
    assert plugin.proc.wait(10) == 2
    assert "shorter --kubelet-dir" in plugin.log()


def run_list(harness: PluginHarness, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUNODE_")}
    env.update(harness.nvml.env())
    return subprocess.run(
        [sys.executable, "-m", "gpunode.bootstrap.cli.main", "plugin", "list", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_plugin_list_text_and_json(harness: PluginHarness) -> None:
    harness.configure(FakeNvmlConfig.dgx_like())
    text = run_list(harness)
    assert text.returncode == 0, text.stderr
    assert "driver 535.261.03" in text.stdout and uuid(7) in text.stdout
    assert "NV12" in text.stdout and "SYS" in text.stdout and "PIX" in text.stdout
    result = run_list(harness, "--output", "json", "--device-id-strategy", "index")
    data = json.loads(result.stdout)
    devices = data["resources"][0]["devices"]
    assert [d["id"] for d in devices] == [str(i) for i in range(8)]
    assert {d["health"] for d in devices} == {HEALTHY}
    assert devices[5]["numa_node"] == 1 and devices[5]["uuid"] == uuid(5)
    pair = next(t for t in data["topology"] if t["gpus"] == [0, 1])
    assert pair == {"gpus": [0, 1], "nvlinks": 12, "common_ancestor": "PIX"}


def test_plugin_list_reports_init_failure(harness: PluginHarness) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUNODE_", "FAKE_NVML_"))}
    env.pop("LD_LIBRARY_PATH", None)
    result = subprocess.run(
        [sys.executable, "-m", "gpunode.plugin", "list"], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1
    assert result.stderr.startswith("nvml_init_failed reason=library_not_found")


def test_versioned_library_behind_a_symlink_reports_its_driver_version(harness: PluginHarness) -> None:
    # As on a real host: libnvidia-ml.so.1 -> libnvidia-ml.so.550.127.05 in a library directory.
    libdir = harness.root / "hostlib"
    libdir.mkdir()
    real = libdir / "libnvidia-ml.so.550.127.05"
    real.write_bytes((harness.library / "libnvidia-ml.so.1").read_bytes())
    (libdir / "libnvidia-ml.so.1").symlink_to(real.name)
    plugin = harness.start(env={"LD_LIBRARY_PATH": str(libdir), "FAKE_NVML_DRIVER_VERSION": "550.127.05"})
    harness.kubelet.wait_registered(GPU, timeout=10)
    assert "driver=550.127.05" in plugin.log()


def test_python_dash_m_and_gpunode_plugin_serve_are_the_same_command(short_dir: Path) -> None:
    for command in (
        [sys.executable, "-m", "gpunode.plugin", "serve", "--help"],
        [sys.executable, "-m", "gpunode.bootstrap.cli.main", "plugin", "serve", "--help"],
    ):
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0
        for env in (
            "GPUNODE_KUBELET_DIR",
            "GPUNODE_HEALTH_RECOVERY_SECONDS",
            "GPUNODE_METRICS_ADDR",
            "GPUNODE_FAIL_ON_INIT_ERROR",
        ):
            assert env in result.stdout


def test_gpunode_plugin_serve_runs_the_same_plugin(harness: PluginHarness) -> None:
    # As the DaemonSet may start it: the `gpunode` command line, configured by environment.
    plugin = harness.start(
        command=("-m", "gpunode.bootstrap.cli.main", "plugin", "serve"),
        kubelet_dir=False,
        env={"GPUNODE_KUBELET_DIR": str(harness.kubelet_dir)},
    )
    harness.kubelet.wait_registered(GPU, timeout=10)
    assert harness.kubelet.healthy_count(GPU) == 2
    assert plugin.terminate() == 0
    failed = harness.start("--resource-name", "nogpu", command=("-m", "gpunode.bootstrap.cli.main", "plugin", "serve"))
    assert failed.proc.wait(10) == 2
