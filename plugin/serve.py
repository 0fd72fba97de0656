"""`gpunode plugin serve`: start NVML, plan the resources, then serve them until stopped."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from gpunode.plugin.config import ConfigError, PluginConfig, check_socket_paths
from gpunode.plugin.devices import Resource, plan_resources
from gpunode.plugin.log import log_event
from gpunode.plugin.metrics import Metrics, serve_metrics
from gpunode.plugin.nvml import Inventory, NvmlInitError, discover, start_nvml

# How often a plugin that could not start NVML (and was told not to fail) says so again,
# so that the reason is still in the last lines of its log when someone looks.
INIT_FAILURE_REPEAT_SECONDS = 600


def process_age() -> float | None:
    """Seconds since this process started (from /proc; None where that is unavailable)."""
    try:
        started = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - started / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def _ready() -> None:
    age = process_age()
    log_event("plugin_ready", version=package_version(), seconds_since_start=None if age is None else f"{age:.2f}")


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # slow to import: not on the way to Register

    try:
        return version("gpunode")
    except PackageNotFoundError:
        return "unknown"


def load_devices(config: PluginConfig) -> tuple[Inventory, list[Resource]]:
    """NVML up, GPUs read, resources planned; NvmlInitError when any of it fails."""
    start_nvml()
    inventory = discover(with_migs=config.mig_strategy != "none")
    return inventory, plan_resources(inventory, config)


def _start_telemetry(
    config: PluginConfig, inventory: Inventory, resources: list[Resource], metrics: Metrics, registry: Any
) -> None:
    """GPU telemetry on the metrics endpoint, with pod attribution when the kubelet offers it."""
    import socket

    from gpunode.plugin.pod_attribution import PodAttribution, device_uuids
    from gpunode.plugin.telemetry import GpuTelemetry

    owners = None
    if config.pod_resources_socket is not None:
        owners = PodAttribution(config.pod_resources_socket, device_uuids(resources))
    hostname = config.node_name or socket.gethostname()
    registry.register(GpuTelemetry(inventory, hostname, metrics.xids, owners))
    log_event(
        "telemetry",
        gpus=len(inventory.gpus),
        hostname=hostname,
        pod_resources=config.pod_resources_socket or "off",
    )


def _start_node_labels(config: PluginConfig, inventory: Inventory) -> None:
    """GFD's labels, kept current by a thread: NFD's feature file, or a patch of the own Node."""
    from gpunode.plugin.feature_labels import feature_labels
    from gpunode.plugin.node_labeller import NodeLabeller, OwnNodeClient
    from gpunode.plugin.nvml import gpu_is_lost

    mode = config.node_labels
    if mode == "auto":
        in_pod = bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and bool(config.node_name)
        mode = "nfd" if config.nfd_features_dir.is_dir() else ("node" if in_pod else "off")
    if mode == "off":
        log_event("node_labels", state="off", reason="asked" if config.node_labels == "off" else "no NFD, not in a pod")
        return
    try:
        machine = config.machine_type_file.read_text(errors="replace").strip()
    except OSError:
        machine = "unknown"
    client = None
    if mode == "node":
        try:
            client = OwnNodeClient.in_cluster(config.node_name, config.service_account_dir)
        except (ValueError, OSError) as exc:
            log_event("node_labels", state="off", reason=str(exc))
            return

    def wanted() -> dict[str, str]:
        lost = frozenset(gpu.uuid for gpu in inventory.gpus if gpu_is_lost(gpu.uuid))
        return feature_labels(inventory, config, machine, lost)

    nfd_dir = config.nfd_features_dir if mode == "nfd" else None
    log_event("node_labels", via=mode, node=config.node_name or None, interval=f"{config.node_labels_interval:g}")
    NodeLabeller(wanted, client, nfd_dir, config.node_labels_interval).start()


def _idle_after_init_failure(line: str) -> int:
    # No handlers: block the signals and wait for one, waking only to repeat the line.
    stop = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    while signal.sigtimedwait(stop, INIT_FAILURE_REPEAT_SECONDS) is None:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    log_event("plugin_stopped")
    return 0


def serve(config: PluginConfig) -> int:
    """Run the plugin; returns the process exit code."""
    metrics = Metrics()
    metrics_server = None
    if config.metrics_addr is not None:
        host, port = config.metrics_addr
        try:
            metrics_server = serve_metrics(config.metrics_addr, metrics)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {host}:{port} ({exc.strerror or exc}); "
                "choose a free --metrics-addr, or leave it empty"
            ) from exc
    try:
        inventory, resources = load_devices(config)
    except NvmlInitError as exc:
        metrics.nvml_up(False)
        line = exc.line()
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
        if config.fail_on_init_error:
            return 1
        return _idle_after_init_failure(line)
    check_socket_paths(config.kubelet_dir, [resource.name for resource in resources])
    metrics.nvml_up(True)

    # grpc is imported only now: a plugin that fails above stays small and quick.
    import pynvml

    from gpunode.plugin.health import HealthMonitor, HealthTracker
    from gpunode.plugin.nvml import XidEventSet
    from gpunode.plugin.server import PluginManager

    log_event(
        "plugin_starting",
        driver=inventory.driver_version,
        nvml=inventory.nvml_version or None,
        gpus=len(inventory.gpus),
        resources=",".join(f"{r.name}:{len(r.devices)}" for r in resources),
        mig_strategy=config.mig_strategy,
        device_id_strategy=config.device_id_strategy,
        device_list_strategy=config.device_list_strategy,
        kubelet_dir=config.kubelet_dir,
        config=config.config_source,
        sharing=config.sharing.strategy,
        replicas=",".join(f"{r.advertised_name}:{r.replicas}" for r in config.sharing.resources) or None,
    )
    for index in inventory.lost_indices:
        log_event("gpu_lost", gpu=index, at="start")
    for resource in resources:
        for device in resource.devices:
            log_event(
                "device",
                id=device.id,
                resource=resource.name,
                uuid=device.uuid,
                gpu=device.gpu.index,
                mig=device.mig.profile if device.mig else None,
                numa=device.numa_node,
                pci=device.gpu.pci_bus_id,
                name=device.gpu.name,
            )

    tracker = HealthTracker(
        resources, config.health_ignore_xids, config.health_fatal_xids, config.health_recovery_seconds, metrics
    )
    if config.health_checks:
        gpu_uuids = list(dict.fromkeys(d.gpu.uuid for r in resources for d in r.devices))
        # Registered before the kubelet hears of us: no XID after registration is missed.
        try:
            events = XidEventSet(gpu_uuids)
        except pynvml.NVMLError as exc:
            # Devices work without XID events (some virtualised GPUs have none): serve them,
            # and say loudly that their health is not watched.
            log_event("health_checks", enabled="false", reason="nvml_events_unavailable", error=str(exc))
        else:
            log_event(
                "health_checks",
                watched=len(events.watched),
                unsupported=",".join(events.unsupported) or None,
                ignored_xids=",".join(map(str, sorted(config.health_ignore_xids))) or None,
                fatal_xids=",".join(map(str, sorted(config.health_fatal_xids))) or None,
                recovery_seconds=f"{config.health_recovery_seconds:g}",
            )
            HealthMonitor(tracker, events).start()
    else:
        log_event("health_checks", enabled="false")

    _start_node_labels(config, inventory)
    if metrics_server is not None:
        _start_telemetry(config, inventory, resources, metrics, metrics_server.registry)

    manager = PluginManager(config, resources, tracker, inventory.topology, metrics, on_ready=_ready)
    manager.install_signal_handlers()
    manager.run()
    return 0


__all__ = ["ConfigError", "serve", "load_devices"]
