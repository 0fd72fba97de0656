"""`gpunode plugin serve`: start NVML, plan the resources, then serve them until stopped."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpunode.plugin.config import ConfigError, PluginConfig, check_socket_paths
from gpunode.plugin.devices import Resource, plan_resources
from gpunode.plugin.log import log_event
from gpunode.plugin.metrics import Metrics, serve_metrics
from gpunode.plugin.nvml import Inventory, NvmlInitError, discover, start_nvml

if TYPE_CHECKING:  # per-node config (and its YAML and HTTPS) is imported only when used
    from gpunode.plugin.config_source import Choice

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
    config: PluginConfig, inventory: Inventory, resources: list[Resource], metrics: Metrics, text_sources: Any
) -> None:
    """GPU telemetry on the metrics endpoint, with pod attribution when the kubelet offers it."""
    import socket

    from gpunode.plugin.pod_attribution import PodAttribution, device_uuids
    from gpunode.plugin.telemetry import GpuTelemetry

    owners = None
    if config.pod_resources_socket is not None:
        owners = PodAttribution(config.pod_resources_socket, device_uuids(resources))
    hostname = config.node_name or socket.gethostname()
    text_sources.append(GpuTelemetry(inventory, hostname, metrics.xids, owners).render)
    log_event(
        "telemetry",
        gpus=len(inventory.gpus),
        hostname=hostname,
        pod_resources=config.pod_resources_socket or "off",
    )


MPS_WAIT_LOG_SECONDS = 60.0
MPS_POLL_SECONDS = 1.0


def mps_pipes_missing(config: PluginConfig, resources: list[Resource]) -> list[Path]:
    """With MPS sharing: the control pipes of the MPS control daemons that are not there
    (NVIDIA's layout: one daemon per resource, its pipe at <mpsRoot>/<resource>/pipe/control)."""
    if config.sharing.strategy != "mps" or config.mps_root is None:
        return []
    pipes = [
        config.mps_root / r.name / "pipe" / "control"
        for r in resources
        if any(d.replica is not None for d in r.devices)
    ]
    return [p for p in pipes if not p.exists()]


def _wait_for_mps(config: PluginConfig, resources: list[Resource]) -> None:
    """As NVIDIA's plugin: serve MPS replicas only once their control daemon runs (a client
    pointed at a missing daemon fails); say so, again every minute, while waiting."""
    last_log = -MPS_WAIT_LOG_SECONDS
    started = time.monotonic()
    while missing := mps_pipes_missing(config, resources):
        if time.monotonic() - last_log >= MPS_WAIT_LOG_SECONDS:
            log_event(
                "mps_daemon_not_running",
                pipes=",".join(str(p) for p in missing),
                waited=f"{time.monotonic() - started:.0f}s",
                fix="run NVIDIA's MPS control daemon DaemonSet on this node (gpunode render --sharing mps renders it)",
            )
            last_log = time.monotonic()
        time.sleep(MPS_POLL_SECONDS)
    if config.sharing.strategy == "mps":
        log_event("mps_daemon_running", root=config.mps_root)


def _start_node_labels(config: PluginConfig, in_force: dict[str, Any]) -> Any:
    """GFD's labels, kept current by a thread: NFD's feature file, or a patch of the own Node.
    `in_force` holds the config and inventory in force (a config switch replaces them);
    returns the labeller (None when off)."""
    from gpunode.plugin.feature_labels import feature_labels
    from gpunode.plugin.kube_client import find_credentials
    from gpunode.plugin.node_labeller import RBAC_FIX, NodeLabeller, OwnNodeClient
    from gpunode.plugin.nvml import gpu_is_lost

    mode = config.node_labels
    if mode == "auto":
        has_api = bool(os.environ.get("KUBERNETES_SERVICE_HOST") or os.environ.get("KUBECONFIG"))
        mode = "nfd" if config.nfd_features_dir.is_dir() else ("node" if has_api and config.node_name else "off")
    if mode == "off":
        log_event(
            "node_labels",
            state="off",
            reason="asked" if config.node_labels == "off" else "no NFD directory, no Kubernetes API or node name",
        )
        return None
    try:
        machine = config.machine_type_file.read_text(errors="replace").strip()
    except OSError:
        machine = "unknown"
    client = None
    if mode == "node":
        try:
            client = OwnNodeClient(config.node_name, find_credentials())
        except ConfigError:
            log_event("node_labels", state="off", reason="no KUBECONFIG and no service account token", fix=RBAC_FIX)
            return None
        except (ValueError, OSError) as exc:
            log_event("node_labels", state="off", reason=str(exc))
            return None

    def wanted() -> dict[str, str]:
        inventory: Inventory = in_force["inventory"]
        lost = frozenset(gpu.uuid for gpu in inventory.gpus if gpu_is_lost(gpu.uuid))
        return feature_labels(inventory, in_force["config"], machine, lost)

    nfd_dir = config.nfd_features_dir if mode == "nfd" else None
    log_event("node_labels", via=mode, node=config.node_name or None, interval=f"{config.node_labels_interval:g}")
    labeller = NodeLabeller(wanted, client, nfd_dir, config.node_labels_interval)
    labeller.start()
    return labeller


def _idle_after_init_failure(line: str) -> int:
    # No handlers: block the signals and wait for one, waking only to repeat the line.
    stop = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    while signal.sigtimedwait(stop, INIT_FAILURE_REPEAT_SECONDS) is None:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    log_event("plugin_stopped")
    return 0


@dataclass(frozen=True)
class NodeConfigs:
    """Per-node config: the mounted ConfigMap of named configs and how one is chosen."""

    directory: Path
    node_name: str
    label: str
    default: str | None = None


def _config_for(base: PluginConfig, choice: Choice, directory: Path, explicit: frozenset[str]) -> PluginConfig:
    from gpunode.plugin.nvidia_config import apply_file, parse_config_text

    if choice.name is None or choice.text is None:
        return base
    file = parse_config_text(choice.text, f"config {choice.name} ({directory / choice.name})")
    for note in file.notes:
        log_event("config_note", config=choice.name, note=note)
    return apply_file(base, file, explicit)


def _initial_node_config(
    base: PluginConfig, node_configs: NodeConfigs, explicit: frozenset[str], holder: list[Callable[[Choice], None]]
) -> tuple[Any, Choice, PluginConfig]:
    """Per-node config at start: the watcher (not started yet; it calls holder[0] once the
    plugin is up), the config the node's label chooses, and the settings with it. A choice
    that cannot be used stops the plugin (ConfigError), logged as config_rejected."""
    from gpunode.plugin.config_source import NodeConfigWatcher
    from gpunode.plugin.kube_client import KubeClient, find_credentials

    watcher = NodeConfigWatcher(
        KubeClient(find_credentials()),
        node_configs.node_name,
        node_configs.label,
        node_configs.directory,
        node_configs.default,
        lambda c: holder[0](c) if holder else None,
    )
    choice = watcher.initial()
    if choice.problem is not None:
        log_event("config_rejected", config=choice.label, reason="missing", error=choice.problem)
        raise ConfigError(f"{choice.problem}. Fix: label the node with a config the ConfigMap has, or remove the label")
    try:
        config = _config_for(base, choice, node_configs.directory, explicit)
    except ConfigError as exc:
        log_event("config_rejected", config=choice.name, reason="invalid", error=str(exc))
        raise
    log_event("config_selected", config=choice.name or "none", label=choice.label, node=node_configs.node_name)
    return watcher, choice, config


def _start_health(config: PluginConfig, inventory: Inventory, tracker: Any) -> Any:
    """The XID watch feeding `tracker`; None when health checks are off or NVML has no events."""
    import pynvml

    from gpunode.plugin.health import HealthMonitor
    from gpunode.plugin.nvml import XidEventSet

    if not config.health_checks:
        log_event("health_checks", enabled="false")
        return None
    gpu_uuids = list(dict.fromkeys(gpu.uuid for gpu in inventory.gpus))
    # Registered before the kubelet hears of us: no XID after registration is missed.
    try:
        events = XidEventSet(gpu_uuids)
    except pynvml.NVMLError as exc:
        # Devices work without XID events (some virtualised GPUs have none): serve them,
        # and say loudly that their health is not watched.
        log_event("health_checks", enabled="false", reason="nvml_events_unavailable", error=str(exc))
        return None
    log_event(
        "health_checks",
        watched=len(events.watched),
        unsupported=",".join(events.unsupported) or None,
        ignored_xids=",".join(map(str, sorted(config.health_ignore_xids))) or None,
        fatal_xids=",".join(map(str, sorted(config.health_fatal_xids))) or None,
        recovery_seconds=f"{config.health_recovery_seconds:g}",
    )
    monitor = HealthMonitor(tracker, events)
    monitor.start()
    return monitor


def serve(config: PluginConfig, node_configs: NodeConfigs | None = None, explicit: frozenset[str] = frozenset()) -> int:
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
    base = config
    watcher: Any = None
    choice: Choice | None = None
    holder: list[Callable[[Choice], None]] = []
    if node_configs is not None:
        watcher, choice, config = _initial_node_config(base, node_configs, explicit, holder)
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
    _wait_for_mps(config, resources)

    # grpc is imported only now: a plugin that fails above stays small and quick.
    from gpunode.plugin.health import HealthTracker
    from gpunode.plugin.server import PluginManager

    _log_start(config, inventory, resources)

    def new_tracker(resources: list[Resource]) -> HealthTracker:
        return HealthTracker(
            resources, config.health_ignore_xids, config.health_fatal_xids, config.health_recovery_seconds, metrics
        )

    tracker = new_tracker(resources)
    monitor = _start_health(config, inventory, tracker)

    from gpunode.plugin.gpu_conditions import ConditionWatch

    ConditionWatch(inventory, config.node_labels_interval).start()
    labels_in_force = {"config": config, "inventory": inventory}
    labeller = _start_node_labels(config, labels_in_force)
    if metrics_server is not None:
        _start_telemetry(config, inventory, resources, metrics, metrics_server.text_sources)

    manager = PluginManager(config, resources, tracker, inventory.topology, metrics, on_ready=_ready)
    if watcher is not None and node_configs is not None and choice is not None:
        state = {
            "in_force": (choice.name, choice.text),
            "rejected": None,
            "inventory": inventory,
            "tracker": tracker,
            "labels_in_force": labels_in_force,
            "labeller": labeller,
        }
        lock = threading.Lock()

        def switch(new: Choice) -> None:
            with lock:
                _switch(new, state, base, node_configs, explicit, manager, monitor, new_tracker)

        holder.append(switch)
        watcher.start()
    manager.install_signal_handlers()
    manager.run()
    if watcher is not None:
        watcher.stop()
    return 0


def _switch(
    choice: Choice,
    state: dict[str, Any],
    base: PluginConfig,
    node_configs: NodeConfigs,
    explicit: frozenset[str],
    manager: Any,
    monitor: Any,
    new_tracker: Callable[[list[Resource]], Any],
) -> None:
    """Move to the chosen config if it differs from the one in force and is usable; else
    log why not (once per distinct refusal) and keep the config in force."""
    in_force = state["in_force"][0] or "none"
    if choice.problem is not None:
        if state["rejected"] != (choice.label, choice.problem):
            state["rejected"] = (choice.label, choice.problem)
            log_event("config_rejected", config=choice.label, reason="missing", error=choice.problem, in_force=in_force)
        return
    if (choice.name, choice.text) == state["in_force"]:
        return
    try:
        config = _config_for(base, choice, node_configs.directory, explicit)
        inventory = state["inventory"]
        if (config.mig_strategy != "none") != any(gpu.migs for gpu in inventory.gpus) and config.mig_strategy != "none":
            inventory = discover(with_migs=True)
        resources = plan_resources(inventory, config)
        check_socket_paths(config.kubelet_dir, [resource.name for resource in resources])
        missing = mps_pipes_missing(config, resources)
        if missing:
            raise ConfigError(
                f"mps_daemon_not_running: no MPS control daemon at {', '.join(map(str, missing))}. "
                "Fix: run NVIDIA's MPS control daemon on this node before choosing an MPS config"
            )
    except (ConfigError, NvmlInitError) as exc:
        error = exc.line() if isinstance(exc, NvmlInitError) else str(exc)
        if state["rejected"] != (choice.name, choice.text):
            state["rejected"] = (choice.name, choice.text)
            log_event("config_rejected", config=choice.name, reason="invalid", error=error, in_force=in_force)
        return
    tracker = new_tracker(resources)
    tracker.inherit_fatal(state["tracker"].fatal_gpus())
    log_event("config_switching", config=choice.name or "none", label=choice.label, previous=in_force)
    _log_start(config, inventory, resources)
    if monitor is not None:
        monitor.use(tracker)
    manager.reconfigure(config, resources, tracker)
    state.update(in_force=(choice.name, choice.text), rejected=None, inventory=inventory, tracker=tracker)
    # The node labels follow the config in force (replicas, sharing strategy, MIG strategy).
    state["labels_in_force"].update(config=config, inventory=inventory)
    if state["labeller"] is not None:
        state["labeller"].wake()


def _log_start(config: PluginConfig, inventory: Inventory, resources: list[Resource]) -> None:
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
        if len(resource.devices) > 64:
            log_event("devices", resource=resource.name, count=len(resource.devices))
            continue
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


__all__ = ["ConfigError", "serve", "load_devices"]
