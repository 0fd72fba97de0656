"""The device plugin's gRPC side: one DevicePlugin server per resource, registration with
the kubelet, and the manager that keeps them registered.

The manager owns every server and is the only thread that starts, stops or registers
them, so there are never two servers for a resource. It restarts a resource's server and
registers it again when
- kubelet.sock is replaced (the kubelet restarted: a new inode), or
- the resource's own socket disappears while the kubelet stays, or
- the kubelet ends the resource's ListAndWatch stream (the kubelet then considers the
  plugin gone until it registers again),
and retries registration with backoff (0.1 s doubling to 2 s) while the kubelet is absent;
a new kubelet.sock is acted on as soon as inotify reports it.
"""

from __future__ import annotations

import os
import queue
import signal
import stat
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc

from gpunode.plugin.allocation import container_allocation, preferred_allocation, replica_preferred_allocation
from gpunode.plugin.config import PluginConfig
from gpunode.plugin.devices import Resource
from gpunode.plugin.health import HealthTracker
from gpunode.plugin.log import log_event
from gpunode.plugin.metrics import Metrics
from gpunode.plugin.nvml import Topology
from gpunode.plugin.sharing import is_replica
from gpunode.plugin.v1beta1 import VERSION, api_pb2, api_pb2_grpc
from gpunode.plugin.watch import DirectoryWatcher

REGISTER_TIMEOUT_SECONDS = 5.0
# While Register is in flight the kubelet dials our socket back before it answers; if that
# socket is deleted meanwhile the kubelet keeps dialing (10 s), so the socket is checked
# this often and a lost one ends the wait at once.
REGISTER_SOCKET_CHECK_SECONDS = 0.02
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 2.0
STOP_GRACE_SECONDS = 0.5
# One worker per concurrent RPC; the ListAndWatch stream holds one for its whole life.
WORKERS = 8


def _identity(path: Path) -> tuple[int, int] | None:
    """A socket file's identity (inode, change time): a re-created file has a new one."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISSOCK(st.st_mode):
        return None
    return st.st_ino, st.st_ctime_ns


class DevicePluginService(api_pb2_grpc.DevicePluginServicer):
    """The DevicePlugin service for one resource."""

    def __init__(
        self,
        resource: Resource,
        config: PluginConfig,
        tracker: HealthTracker,
        topology: Topology,
        metrics: Metrics,
        on_stream_end: Callable[[DevicePluginService], None],
    ) -> None:
        self.resource = resource
        self._config = config
        self._tracker = tracker
        self._topology = topology
        self._metrics = metrics
        self._on_stream_end = on_stream_end
        self._by_id = resource.by_id()
        self._order = {device.id: position for position, device in enumerate(resource.devices)}
        self._streams: set[threading.Event] = set()
        self._streams_lock = threading.Lock()
        self.stopping = False

    def stop(self) -> None:
        """End every open stream without reporting them as ended by the kubelet."""
        self.stopping = True
        with self._streams_lock:
            for done in self._streams:
                done.set()
        self._tracker.wake_all()

    def GetDevicePluginOptions(
        self, request: api_pb2.Empty, context: grpc.ServicerContext
    ) -> api_pb2.DevicePluginOptions:
        return api_pb2.DevicePluginOptions(pre_start_required=False, get_preferred_allocation_available=True)

    def device_list(self) -> api_pb2.ListAndWatchResponse:
        devices = []
        for device, health in self._tracker.snapshot(self.resource.name):
            topology = None
            if device.numa_node is not None:
                topology = api_pb2.TopologyInfo(nodes=[api_pb2.NUMANode(ID=device.numa_node)])
            devices.append(api_pb2.Device(ID=device.id, health=health, topology=topology))
        return api_pb2.ListAndWatchResponse(devices=devices)

    def ListAndWatch(
        self, request: api_pb2.Empty, context: grpc.ServicerContext
    ) -> Iterator[api_pb2.ListAndWatchResponse]:
        done = threading.Event()
        with self._streams_lock:
            self._streams.add(done)

        def finished() -> None:
            done.set()
            self._tracker.wake_all()

        context.add_callback(finished)
        log_event("stream_opened", resource=self.resource.name, devices=len(self.resource.devices))
        last: api_pb2.ListAndWatchResponse | None = None
        try:
            while not done.is_set() and not self.stopping:
                version = self._tracker.version
                response = self.device_list()
                if response != last:
                    yield response
                    last = response
                self._tracker.wait_for_change(version, done)
        finally:
            with self._streams_lock:
                self._streams.discard(done)
            if not self.stopping:
                log_event("stream_ended", resource=self.resource.name, by="kubelet")
                self._on_stream_end(self)

    def GetPreferredAllocation(
        self, request: api_pb2.PreferredAllocationRequest, context: grpc.ServicerContext
    ) -> api_pb2.PreferredAllocationResponse:
        responses = []
        for container in request.container_requests:
            available = list(container.available_deviceIDs)
            if any(is_replica(i) for i in available):
                ids = replica_preferred_allocation(
                    available,
                    list(container.must_include_deviceIDs),
                    container.allocation_size,
                    self._order,
                    self._config.allocation_policy,
                )
            else:
                ids = preferred_allocation(
                    available,
                    list(container.must_include_deviceIDs),
                    container.allocation_size,
                    self._by_id,
                    self._order,
                    self._topology,
                )
            responses.append(api_pb2.ContainerPreferredAllocationResponse(deviceIDs=ids))
        return api_pb2.PreferredAllocationResponse(container_responses=responses)

    def Allocate(self, request: api_pb2.AllocateRequest, context: grpc.ServicerContext) -> api_pb2.AllocateResponse:
        started = time.perf_counter()
        requested = [list(dict.fromkeys(container.devices_ids)) for container in request.container_requests]
        unknown = [i for ids in requested for i in ids if i not in self._by_id]
        if unknown or not requested or not all(requested):
            problem = f"unknown device IDs {', '.join(unknown)}" if unknown else "a container request names no device"
            log_event("allocate_rejected", resource=self.resource.name, problem=problem)
            self._metrics.allocate(self.resource.name, "INVALID_ARGUMENT", time.perf_counter() - started)
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{self.resource.name}: {problem}; this plugin advertises {len(self._by_id)} devices",
            )
        too_many = self._shared_request_too_large(requested)
        if too_many is not None:
            log_event(
                "allocate_rejected", resource=self.resource.name, problem="shared_request_too_large", found=too_many
            )
            self._metrics.allocate(self.resource.name, "UNKNOWN", time.perf_counter() - started)
            # NVIDIA's words and status code (a plain Go error is UNKNOWN): the kubelet shows
            # them in the pod's UnexpectedAdmissionError event, and doctor looks for them.
            context.abort(
                grpc.StatusCode.UNKNOWN,
                f'invalid allocation request for "{self.resource.name}": invalid request: '
                f"maximum request size for shared resources is 1; found {too_many}",
            )
        responses = []
        for ids in requested:
            allocation = container_allocation([self._by_id[i] for i in ids], self._config, self.resource.name)
            responses.append(
                api_pb2.ContainerAllocateResponse(
                    envs=allocation.envs,
                    cdi_devices=[api_pb2.CDIDevice(name=name) for name in allocation.cdi_devices],
                    devices=[
                        api_pb2.DeviceSpec(
                            container_path=node.container_path, host_path=node.host_path, permissions="rw"
                        )
                        for node in allocation.device_nodes
                    ],
                    mounts=[
                        api_pb2.Mount(container_path=m.container_path, host_path=m.host_path, read_only=False)
                        for m in allocation.mounts
                    ],
                )
            )
        self._metrics.allocate(self.resource.name, "OK", time.perf_counter() - started)
        log_event("allocate", resource=self.resource.name, devices=";".join(",".join(ids) for ids in requested))
        return api_pb2.AllocateResponse(container_responses=responses)

    def _shared_request_too_large(self, requested: list[list[str]]) -> int | None:
        """With failRequestsGreaterThanOne, a container asking for more than one replica is
        refused (NVIDIA's rule): the number it asked for, else None."""
        if not self._config.sharing.fail_requests_greater_than_one:
            return None
        for ids in requested:
            if len(ids) > 1 and any(is_replica(i) for i in ids):
                return len(ids)
        return None

    def PreStartContainer(
        self, request: api_pb2.PreStartContainerRequest, context: grpc.ServicerContext
    ) -> api_pb2.PreStartContainerResponse:
        return api_pb2.PreStartContainerResponse()


class ResourceServer:
    """One resource's gRPC server on its socket in the kubelet's directory."""

    def __init__(self, service: DevicePluginService, config: PluginConfig) -> None:
        self.service = service
        self.resource = service.resource
        self._config = config
        self.socket = config.kubelet_dir / self.resource.socket_name
        self._server: grpc.Server | None = None
        self.identity: tuple[int, int] | None = None

    def start(self) -> None:
        self._config.kubelet_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.socket.unlink()
        except FileNotFoundError:
            pass
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="grpc"))
        api_pb2_grpc.add_DevicePluginServicer_to_server(self.service, server)
        try:
            port = server.add_insecure_port(f"unix:{self.socket}")
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {self.socket}: {exc}") from exc
        if port == 0:
            raise OSError(f"cannot listen on {self.socket}")
        server.start()
        self._server = server
        self.identity = _identity(self.socket)
        log_event("server_started", resource=self.resource.name, socket=self.socket)

    def socket_intact(self) -> bool:
        return self.identity is not None and _identity(self.socket) == self.identity

    def stop(self) -> None:
        self.service.stop()
        if self._server is not None:
            self._server.stop(STOP_GRACE_SECONDS).wait()
            self._server = None
        if self.socket_intact():
            try:
                self.socket.unlink()
            except FileNotFoundError:
                pass
        self.identity = None
        log_event("server_stopped", resource=self.resource.name, socket=self.socket)

    def register(self) -> None:
        """Register with the kubelet; raises grpc.RpcError when it is absent or says no, and
        OSError when this server's socket disappears before the kubelet has answered."""
        # A connection of its own each time: gRPC's C core shares one connection attempt per
        # address between channels, and a kubelet.sock just re-created would otherwise wait
        # out the backoff of an attempt made while the kubelet was gone.
        with grpc.insecure_channel(
            f"unix:{self._config.kubelet_socket}", options=[("grpc.use_local_subchannel_pool", 1)]
        ) as channel:
            call = api_pb2_grpc.RegistrationStub(channel).Register.future(
                api_pb2.RegisterRequest(
                    version=VERSION,
                    endpoint=self.resource.socket_name,
                    resource_name=self.resource.name,
                    options=api_pb2.DevicePluginOptions(
                        pre_start_required=False, get_preferred_allocation_available=True
                    ),
                ),
                timeout=REGISTER_TIMEOUT_SECONDS,
            )
            while True:
                try:
                    call.result(timeout=REGISTER_SOCKET_CHECK_SECONDS)
                    return
                except grpc.FutureTimeoutError:
                    if not self.socket_intact():
                        call.cancel()
                        raise OSError(f"{self.socket} was removed while the kubelet was dialing it") from None


class PluginManager:
    def __init__(
        self,
        config: PluginConfig,
        resources: list[Resource],
        tracker: HealthTracker,
        topology: Topology,
        metrics: Metrics,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        self._on_ready = on_ready
        self._config = config
        self._resources = resources
        self._tracker = tracker
        self._topology = topology
        self._metrics = metrics
        self._events: queue.Queue[tuple[str, object]] = queue.Queue()
        self._servers: dict[str, ResourceServer] = {}
        # kubelet.sock's identity when each resource last registered; None: not registered.
        self._registered_with: dict[str, tuple[int, int] | None] = {}
        self._attempts = 0
        self._backoff = BACKOFF_FIRST
        self._retry_at: float | None = None
        self._last_failure_log = 0.0
        self._restarted_at = time.monotonic()
        self._kubelet_present = True

    # -- called from other threads --

    def request_stop(self, reason: str) -> None:
        self._events.put(("stop", reason))

    def _stream_ended(self, service: DevicePluginService) -> None:
        self._events.put(("stream_ended", service))

    def _dir_changed(self) -> None:
        self._events.put(("dir", None))

    def install_signal_handlers(self) -> None:
        def handler(signum: int, frame: object) -> None:
            # Queue.put from a handler could meet the queue's own lock held by this
            # thread; hand the request to a new thread instead.
            name = signal.Signals(signum).name
            threading.Thread(target=self.request_stop, args=(name,), daemon=True).start()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def reconfigure(self, config: PluginConfig, resources: list[Resource], tracker: HealthTracker) -> None:
        """Serve `resources` under `config` from now on: every server is replaced and
        registers again (called from the config watcher's thread)."""
        self._events.put(("reconfigure", (config, resources, tracker)))

    # -- the manager thread --

    def _reconfigure(self, config: PluginConfig, resources: list[Resource], tracker: HealthTracker) -> None:
        for name, server in self._servers.items():
            server.stop()
            self._metrics.unregistered(name)
        self._servers.clear()
        self._registered_with.clear()
        self._config, self._resources, self._tracker = config, resources, tracker
        for resource in resources:
            self._servers[resource.name] = self._new_server(resource)
            self._registered_with[resource.name] = None
        log_event(
            "reconfigured",
            config=config.config_source,
            resources=",".join(f"{r.name}:{len(r.devices)}" for r in resources),
        )
        self._restarted_at = time.monotonic()
        self._attempts = 0
        self._backoff = BACKOFF_FIRST
        self._retry_at = time.monotonic()

    def _new_server(self, resource: Resource) -> ResourceServer:
        service = DevicePluginService(
            resource, self._config, self._tracker, self._topology, self._metrics, self._stream_ended
        )
        server = ResourceServer(service, self._config)
        server.start()
        return server

    def _restart(self, names: list[str], why: str) -> None:
        log_event("restarting", resources=",".join(names), why=why)
        self._restarted_at = time.monotonic()
        for name in names:
            old = self._servers.pop(name, None)
            if old is not None:
                old.stop()
            self._registered_with[name] = None
            self._metrics.unregistered(name)
        for resource in self._resources:
            if resource.name in names:
                self._servers[resource.name] = self._new_server(resource)
        self._attempts = 0
        self._backoff = BACKOFF_FIRST
        self._retry_at = time.monotonic()

    def _check_directory(self) -> None:
        kubelet = _identity(self._config.kubelet_socket)
        if kubelet is None:
            if self._kubelet_present:
                log_event("kubelet_gone", socket=self._config.kubelet_socket)
            self._kubelet_present = False
            return  # our sockets may be wiped now; a new kubelet.sock will say when to restart
        if not self._kubelet_present:
            log_event("kubelet_back", socket=self._config.kubelet_socket)
            self._kubelet_present = True
        stale = [name for name, seen in self._registered_with.items() if seen is not None and seen != kubelet]
        if stale:
            self._restart(stale, why="kubelet_restarted")
        lost = [name for name, server in self._servers.items() if name not in stale and not server.socket_intact()]
        if lost:
            self._restart(lost, why="socket_removed")
        if any(seen is None for seen in self._registered_with.values()):
            self._retry_at = time.monotonic()  # the kubelet may just have come back: try now

    def _register_pending(self) -> None:
        pending = [name for name, seen in self._registered_with.items() if seen is None]
        if not pending:
            self._retry_at = None
            return
        self._attempts += 1
        for name in pending:
            kubelet = _identity(self._config.kubelet_socket)
            server = self._servers[name]
            try:
                if kubelet is None:
                    raise FileNotFoundError(f"{self._config.kubelet_socket} does not exist")
                server.register()
            except (grpc.RpcError, OSError) as exc:
                now = time.monotonic()
                if self._attempts <= 3 or now - self._last_failure_log >= 60:
                    detail = exc.details() if isinstance(exc, grpc.RpcError) else str(exc)
                    log_event(
                        "register_failed",
                        resource=name,
                        attempt=self._attempts,
                        error=detail,
                        retry_in=f"{self._backoff:g}s",
                    )
                    self._last_failure_log = now
                self._retry_at = now + self._backoff
                self._backoff = min(self._backoff * 2, BACKOFF_MAX)
                return
            self._registered_with[name] = kubelet
            self._metrics.registered(name)
            log_event(
                "registered",
                resource=name,
                socket=server.socket.name,
                attempt=self._attempts,
                seconds=f"{time.monotonic() - self._restarted_at:.3f}",
            )
        self._retry_at = None
        self._attempts = 0
        self._backoff = BACKOFF_FIRST
        if self._on_ready is not None:
            on_ready, self._on_ready = self._on_ready, None
            on_ready()

    def run(self) -> None:
        """Serve, register and keep registered until asked to stop (SIGTERM, SIGINT)."""
        for resource in self._resources:
            self._servers[resource.name] = self._new_server(resource)
            self._registered_with[resource.name] = None
        watcher = DirectoryWatcher(self._config.kubelet_dir, self._dir_changed)
        watcher.start()
        self._restarted_at = time.monotonic()
        self._retry_at = time.monotonic()
        reason = "unknown"
        try:
            while True:
                if self._retry_at is not None and self._retry_at <= time.monotonic():
                    self._register_pending()
                timeout = None if self._retry_at is None else max(0.0, self._retry_at - time.monotonic())
                try:
                    kind, arg = self._events.get(timeout=timeout)
                except queue.Empty:
                    continue
                if kind == "stop":
                    reason = str(arg)
                    break
                if kind == "dir":
                    self._check_directory()
                elif kind == "reconfigure":
                    assert isinstance(arg, tuple)
                    self._reconfigure(*arg)
                elif kind == "stream_ended":
                    assert isinstance(arg, DevicePluginService)
                    current = self._servers.get(arg.resource.name)
                    if current is not None and current.service is arg:
                        self._restart([arg.resource.name], why="stream_ended")
        finally:
            log_event("plugin_stopping", signal=reason)
            watcher.stop()
            for name, server in self._servers.items():
                server.stop()
                self._metrics.unregistered(name)
            self._servers.clear()
        log_event("plugin_stopped")
