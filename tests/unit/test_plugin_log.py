"""The one plugin-log reader of verify and doctor, against every line it maps, verbatim.

NVIDIA's lines are written as k8s-device-plugin's code prints them (klog's header, then the
format string filled in); each says where it comes from (file:line at the tag named). The
bundled plugin's lines come from its own formatter, so they cannot drift from it.
"""

from __future__ import annotations

import pytest

from gpunode.bootstrap.core.plugin_log import INIT_REASONS, klog_message, read_plugin_log
from gpunode.plugin.log import format_event


def klog(severity: str, where: str, message: str) -> str:
    return f"{severity}1207 02:00:00.000000       1 {where}] {message}"


# (where it is printed, the line, the reason it means)
NVIDIA_INIT_LINES = (
    # internal/plugin/factory.go:99 (v0.20.0; :93 at v0.17.0) `Failed to initialize NVML: %v.`:
    # go-nvml prints the constant's name when no library could be loaded, NVML's own text
    # when one was.
    ("factory.go:99", "Failed to initialize NVML: ERROR_LIBRARY_NOT_FOUND.", "library_not_found"),
    ("factory.go:99", "Failed to initialize NVML: Driver/library version mismatch.", "driver_library_mismatch"),
    ("factory.go:99", "Failed to initialize NVML: Driver Not Loaded.", "driver_not_loaded"),
    ("factory.go:99", "Failed to initialize NVML: Insufficient Permissions.", "no_permission"),
    ("factory.go:99", "Failed to initialize NVML: Unknown Error.", "nvml_unknown_error"),
    ("factory.go:99", "Failed to initialize NVML: ERROR_UNINITIALIZED.", "nvml_error"),
    # factory.go:107 `nvml init failed: %v` (a warning when FAIL_ON_INIT_ERROR=false).
    ("factory.go:107", "nvml init failed: ERROR_LIBRARY_NOT_FOUND", "library_not_found"),
    # factory.go:112 (v0.16.0 to v0.19.x) `Incompatible strategy detected %v`: the "auto"
    # strategy resolved to neither nvml nor tegra, so no libnvidia-ml.so.1 could be loaded in
    # the container. Not MIG (issue 17.14).
    ("factory.go:112", "Incompatible strategy detected auto", "library_not_found"),
    # internal/rm/rm.go:67 (up to v0.15.0): the same, before strategies.
    ("rm.go:67", "Incompatible platform detected", "library_not_found"),
    # go-nvlib info/resolver.go (at -v=4): the platform check's reason.
    (
        "resolver.go:49",
        "Is NVML-based system? false: could not load NVML library: error opening libnvidia-ml.so.1: "
        "libnvidia-ml.so.1: cannot open shared object file: No such file or directory",
        "library_not_found",
    ),
    # cmd/nvidia-device-plugin/main.go:173 `klog.Error(err)` of what startPlugins returned,
    # the MIG strategy and the GPUs disagreeing (internal/rm/device_map.go:95 and :99) ...
    (
        "main.go:173",
        "error starting plugins: error getting plugins: unable to create plugins: failed to construct resource "
        "managers: error building device map: invalid MIG configuration: more than one MIG device type present "
        "on node",
        "mig_strategy_mismatch",
    ),
    (
        "main.go:173",
        "error starting plugins: error getting plugins: unable to create plugins: failed to construct resource "
        "managers: error building device map: all devices on the node must be configured with the same "
        "migEnabled value",
        "mig_strategy_mismatch",
    ),
    # ... a MIG strategy it does not know (main.go:215) ...
    (
        "main.go:173",
        "error starting plugins: unable to validate flags: unknown MIG strategy: mixd",
        "mig_strategy_mismatch",
    ),
    # ... and NVML refusing the MIG queries (device_map.go:142).
    (
        "main.go:173",
        "error starting plugins: error getting plugins: unable to create plugins: failed to construct resource "
        "managers: error building device map: error building MIG device map: error getting MIG profile for MIG "
        "device at index '(0, 0)': Insufficient Permissions",
        "mig_no_permission",
    ),
)


@pytest.mark.parametrize(("where", "message", "reason"), NVIDIA_INIT_LINES, ids=[m for _, m, _ in NVIDIA_INIT_LINES])
def test_nvidias_nvml_failures_are_named_by_what_they_mean(where: str, message: str, reason: str) -> None:
    line = klog("E", where, message)
    log = read_plugin_log(line + "\n")
    assert log.plugin == "nvidia"
    assert log.init_failure is not None and log.init_failure.reason == reason
    assert log.init_failure.error == message and log.init_failure.line == line
    assert reason in INIT_REASONS


def test_incompatible_strategy_is_a_missing_library_not_a_mig_problem() -> None:
    """v0.17.0 under plain runc: every line it prints, in order (factory.go:112-116, main.go:173)."""
    text = "\n".join(
        [
            klog("I", "main.go:245", "Starting OS watcher."),
            klog("I", "main.go:260", "Starting Plugins."),
            klog("I", "main.go:317", "Loading configuration."),
            klog("I", "main.go:356", "Retrieving plugins."),
            klog("E", "factory.go:112", "Incompatible strategy detected auto"),
            klog("E", "factory.go:113", "If this is a GPU node, did you configure the NVIDIA Container Toolkit?"),
            klog(
                "E",
                "factory.go:114",
                "You can check the prerequisites at: https://github.com/NVIDIA/k8s-device-plugin#prerequisites",
            ),
            klog(
                "E",
                "main.go:173",
                "error starting plugins: error getting plugins: unable to create plugins: failed to construct "
                "resource managers: invalid device discovery strategy",
            ),
        ]
    )
    failure = read_plugin_log(text).init_failure
    assert failure is not None and failure.reason == "library_not_found"
    assert failure.error == "Incompatible strategy detected auto"


def test_no_devices_after_a_failure_keeps_the_failure_as_the_cause() -> None:
    """FAIL_ON_INIT_ERROR=false (v0.20.0): the warning, then main.go:416's line."""
    text = "\n".join(
        [
            klog("W", "plugin-manager.go:108", "Unsupported platform detected; defaulting to nvml"),
            klog("E", "factory.go:99", "Failed to initialize NVML: ERROR_LIBRARY_NOT_FOUND."),
            klog("W", "factory.go:107", "nvml init failed: ERROR_LIBRARY_NOT_FOUND"),
            klog("I", "main.go:416", "No devices found. Waiting indefinitely."),
        ]
    )
    failure = read_plugin_log(text).init_failure
    assert failure is not None and failure.reason == "library_not_found"
    alone = read_plugin_log(klog("I", "main.go:416", "No devices found. Waiting indefinitely.")).init_failure
    assert alone is not None and alone.reason == "no_devices"


def test_registration_restarts_health_and_register_failures_of_nvidias_plugin() -> None:
    uuid = "GPU-fa4e0000-0000-4000-8000-000000000000"
    text = "\n".join(
        [
            # internal/plugin/server.go:149
            klog("I", "server.go:149", "Registered device plugin for 'nvidia.com/gpu' with Kubelet"),
            # cmd/nvidia-device-plugin/main.go:319
            klog("I", "main.go:319", "inotify: /var/lib/kubelet/device-plugins/kubelet.sock created, restarting."),
            # internal/rm/health.go:169 and internal/plugin/server.go:279
            klog("I", "health.go:169", f"XidCriticalError: Xid=79 on Device={uuid}; marking device as unhealthy."),
            klog("I", "server.go:279", f"'nvidia.com/gpu' device marked unhealthy: {uuid}"),
            # internal/rm/health.go:109 and :126
            klog("I", "health.go:109", f"Marking device {uuid} as unhealthy: Not Supported"),
            klog("I", "health.go:126", "Error waiting for event: Unknown Error; Marking all devices as unhealthy"),
            # internal/plugin/server.go:146
            klog(
                "E",
                "server.go:146",
                "Could not register device plugin: rpc error: code = Unavailable desc = connection error",
            ),
        ]
    )
    log = read_plugin_log(text)
    assert log.plugin == "nvidia" and log.init_failure is None
    assert log.registered == (text.splitlines()[0],)
    assert log.kubelet_restart_seen
    assert log.health_lines == tuple(text.splitlines()[2:6])
    assert log.register_failures == (text.splitlines()[6],)


def test_the_bundled_plugins_lines_from_its_own_formatter() -> None:
    uuid = "GPU-fa4e0000-0000-4000-8000-000000000000"
    text = "\n".join(
        [
            format_event("plugin_starting", driver="535.261.03", gpus=1, resources="nvidia.com/gpu:1"),
            format_event("device", id=uuid, uuid=uuid, gpu=0, pci="00000000:3B:00.0", name="NVIDIA A100 80GB PCIe"),
            format_event("registered", resource="nvidia.com/gpu", socket="gpunode-nvidia.com-gpu.sock", attempt=1),
            format_event("device_unhealthy", device=uuid, xid=48, fatal="true"),
            format_event("kubelet_back", socket="/var/lib/kubelet/device-plugins/kubelet.sock"),
        ]
    )
    log = read_plugin_log(text)
    assert log.plugin == "bundled" and log.driver == "535.261.03"
    assert [(d.id, d.pci, d.name) for d in log.devices] == [(uuid, "0000:3b:00.0", "NVIDIA A100 80GB PCIe")]
    assert log.unhealthy_devices == {uuid: "XID 48 (fatal)"} and log.health_lines == (text.splitlines()[3],)
    assert log.registered and log.kubelet_restart_seen and log.init_failure is None
    failed = read_plugin_log(
        format_event("nvml_init_failed", reason="library_not_found", error="libnvidia-ml.so.1: x", fix="mount it")
    ).init_failure
    assert failed is not None and (failed.reason, failed.error, failed.fix) == (
        "library_not_found",
        "libnvidia-ml.so.1: x",
        "mount it",
    )


def test_a_restarted_bundled_plugin_starts_over() -> None:
    failed = format_event("nvml_init_failed", reason="driver_not_loaded", error="Driver Not Loaded", fix="x")
    started = format_event("plugin_starting", driver="535.261.03", gpus=1, resources="nvidia.com/gpu:1")
    log = read_plugin_log("\n".join([started, failed, started]))
    assert log.init_failure is None and log.lines == 3


def test_klog_message() -> None:
    assert klog_message(klog("E", "factory.go:99", "Failed to initialize NVML: x.")) == "Failed to initialize NVML: x."
    assert klog_message("  not klog  ") == "not klog"
