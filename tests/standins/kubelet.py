"""A kubelet stand-in for device plugin tests: the kubelet's half of the device plugin API
(v1beta1), over real gRPC on real unix sockets, and nothing else.

It behaves as the kubelet's device manager does:
- serves `Registration` on `<dir>/kubelet.sock`; Register checks the API version and the
  resource name, then (before answering) dials the plugin's socket named in the request,
  calls GetDevicePluginOptions and opens ListAndWatch, which it then holds;
- a plugin registering a resource again replaces the previous endpoint (whose stream is
  closed);
- when a ListAndWatch stream ends, the resource's devices all count as Unhealthy (the
  kubelet's "PluginDisconnected") until the plugin registers again;
- `hold_registrations()` makes it a slow kubelet: Register requests wait before dialing
  the plugin back until `release_registrations()`;
- `restart()` is a kubelet restart: the server goes, every file in the directory is
  deleted (the kubelet's checkpoint and subdirectories excepted), and a new kubelet.sock
  is served; `stop()` leaves the kubelet gone (socket removed) until `start()`.

    with KubeletStandIn(tmp_dir, on_update=publish) as kubelet:
        start the plugin with --kubelet-dir tmp_dir
        kubelet.wait_registered("nvidia.com/gpu", timeout=5)
        kubelet.healthy_count("nvidia.com/gpu")              -> 8
        kubelet.allocate("nvidia.com/gpu", ["GPU-..."])      -> AllocateResponse
        kubelet.preferred_allocation("nvidia.com/gpu", available, must_include, size)

`on_update(resource, devices)` is called (from a stand-in thread) on every ListAndWatch
update and when a stream ends; `devices` is the full list as the kubelet now sees it.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import grpc

from gpunode.plugin.v1beta1 import api_pb2, api_pb2_grpc

API_VERSION = "v1beta1"
KUBELET_SOCKET = "kubelet.sock"
CHECKPOINT = "kubelet_internal_checkpoint"
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"
DIAL_TIMEOUT_SECONDS = 10.0  # the kubelet's own dial timeout
_EXTENDED_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


@dataclass(frozen=True)
class DeviceState:
    id: str
    health: str
    topology: tuple[int, ...] = ()  # the device's TopologyInfo


@dataclass(frozen=True)
class Registration:
    resource: str
    endpoint: str  # socket file name, as given in RegisterRequest
    version: str
    pre_start_required: bool
    get_preferred_allocation_available: bool
    number: int  # 1 for the first registration of this resource, ...
    at: float  # time.monotonic() when Register arrived


@dataclass(frozen=True)
class Update:
    resource: str
    devices: tuple[DeviceState, ...]
    at: float  # time.monotonic() when the stand-in received it
    disconnected: bool = False  # True: the stream ended, devices marked Unhealthy


class _Endpoint:
    """The kubelet's connection to one registered plugin."""

    def __init__(self, owner: KubeletStandIn, registration: Registration, socket: Path) -> None:
        self.owner = owner
        self.registration = registration
        # A connection of its own, as each of the kubelet's Go gRPC dials has: gRPC's C core
        # would otherwise share one connection attempt per socket path between channels, and
        # a dial of a socket that was just re-created would wait out an earlier dial's backoff.
        self.channel = grpc.insecure_channel(f"unix:{socket}", options=[("grpc.use_local_subchannel_pool", 1)])
        self.stub = api_pb2_grpc.DevicePluginStub(self.channel)
        self.stream: grpc.Future | None = None  # the ListAndWatch call, for end_stream()
        self.closed = False

    def connect(self) -> api_pb2.DevicePluginOptions:
        grpc.channel_ready_future(self.channel).result(timeout=DIAL_TIMEOUT_SECONDS)
        return self.stub.GetDevicePluginOptions(api_pb2.Empty(), timeout=DIAL_TIMEOUT_SECONDS)

    def watch(self) -> None:
        call = self.stub.ListAndWatch(api_pb2.Empty())
        self.stream = call
        try:
            for response in call:
                devices = tuple(
                    DeviceState(
                        id=d.ID,
                        health=d.health,
                        topology=tuple(n.ID for n in d.topology.nodes) if d.HasField("topology") else (),
                    )
                    for d in response.devices
                )
                self.owner._received(self, devices)
        except grpc.RpcError:
            pass
        finally:
            self.owner._stream_ended(self)

    def close(self) -> None:
        self.closed = True
        if self.stream is not None:
            self.stream.cancel()
        self.channel.close()


class _RegistrationService(api_pb2_grpc.RegistrationServicer):
    def __init__(self, owner: KubeletStandIn) -> None:
        self.owner = owner

    def Register(self, request: api_pb2.RegisterRequest, context: grpc.ServicerContext) -> api_pb2.Empty:
        error = self.owner._register(request)
        if error:
            context.abort(grpc.StatusCode.UNKNOWN, error)
        return api_pb2.Empty()


class KubeletStandIn:
    def __init__(
        self, device_plugins_dir: Path, on_update: Callable[[str, list[DeviceState]], None] | None = None
    ) -> None:
        self.dir = Path(device_plugins_dir)
        self.on_update = on_update
        self._cond = threading.Condition()
        self._server: grpc.Server | None = None
        self._endpoints: dict[str, _Endpoint] = {}
        self._devices: dict[str, tuple[DeviceState, ...]] = {}
        self._registrations: list[Registration] = []
        self._updates: list[Update] = []
        self._rejections: list[str] = []
        # A slow kubelet, for tests: while the gate is closed, Register requests wait (valid,
        # not yet dialing the plugin back); `held` counts the ones waiting.
        self._gate = threading.Event()
        self._gate.set()
        self._held = 0

    # -- lifecycle --

    @property
    def socket(self) -> Path:
        return self.dir / KUBELET_SOCKET

    def start(self) -> None:
        """Serve Registration on kubelet.sock (creating the directory if needed)."""
        if self._server is not None:
            raise RuntimeError("the kubelet stand-in is already running")
        self.dir.mkdir(parents=True, exist_ok=True)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="kubelet"))
        api_pb2_grpc.add_RegistrationServicer_to_server(_RegistrationService(self), server)
        try:
            self.socket.unlink()
        except FileNotFoundError:
            pass
        if server.add_insecure_port(f"unix:{self.socket}") == 0:
            raise RuntimeError(f"cannot listen on {self.socket}")
        server.start()
        self._server = server

    def stop(self) -> None:
        """The kubelet is gone: its socket removed, its connections to plugins closed."""
        server, self._server = self._server, None
        if server is not None:
            server.stop(0).wait()
        try:
            self.socket.unlink()
        except FileNotFoundError:
            pass
        with self._cond:
            endpoints = list(self._endpoints.values())
        for endpoint in endpoints:
            endpoint.close()

    def restart(self) -> None:
        """A kubelet restart: stop, delete every file in the directory, serve a new kubelet.sock."""
        self.stop()
        for entry in self.dir.iterdir():
            if entry.name != CHECKPOINT and not entry.is_dir():
                try:
                    entry.unlink()
                except FileNotFoundError:
                    pass
        self.start()

    def hold_registrations(self) -> None:
        """From now on Register waits before dialing the plugin back, until released."""
        self._gate.clear()

    def release_registrations(self) -> None:
        self._gate.set()

    def wait_held_registration(self, timeout: float = 5.0) -> None:
        """Until a Register request is waiting at the closed gate."""
        self.wait_for(lambda: self._held > 0, timeout, "a held Register request")

    def end_stream(self, resource: str) -> None:
        """End the resource's ListAndWatch stream from the kubelet's side."""
        with self._cond:
            endpoint = self._endpoints.get(resource)
        if endpoint is None or endpoint.stream is None:
            raise KeyError(f"no open ListAndWatch stream for {resource}")
        endpoint.stream.cancel()

    def __enter__(self) -> KubeletStandIn:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- the kubelet's side of registration and ListAndWatch --

    def _register(self, request: api_pb2.RegisterRequest) -> str | None:
        if request.version != API_VERSION:
            return self._reject(
                f"requested device plugin API version {request.version!r} is not supported (supported: {API_VERSION})"
            )
        if not _EXTENDED_NAME.match(request.resource_name) or request.resource_name.startswith("kubernetes.io/"):
            return self._reject(f"invalid extended resource name {request.resource_name!r}")
        if "/" in request.endpoint or not request.endpoint:
            return self._reject(f"endpoint {request.endpoint!r} is not a socket file name")
        if not self._gate.is_set():
            with self._cond:
                self._held += 1
                self._cond.notify_all()
            self._gate.wait()
            with self._cond:
                self._held -= 1
        with self._cond:
            number = 1 + sum(1 for r in self._registrations if r.resource == request.resource_name)
        registration = Registration(
            resource=request.resource_name,
            endpoint=request.endpoint,
            version=request.version,
            pre_start_required=request.options.pre_start_required,
            get_preferred_allocation_available=request.options.get_preferred_allocation_available,
            number=number,
            at=time.monotonic(),
        )
        endpoint = _Endpoint(self, registration, self.dir / request.endpoint)
        try:
            endpoint.connect()
        except (grpc.FutureTimeoutError, grpc.RpcError) as exc:
            endpoint.close()
            return self._reject(f"cannot connect to the plugin at {request.endpoint}: {exc!r}")
        with self._cond:
            old = self._endpoints.get(request.resource_name)
            self._endpoints[request.resource_name] = endpoint
            self._registrations.append(registration)
            self._cond.notify_all()
        if old is not None:
            old.close()
        threading.Thread(target=endpoint.watch, name=f"listandwatch-{request.resource_name}", daemon=True).start()
        return None

    def _reject(self, error: str) -> str:
        with self._cond:
            self._rejections.append(error)
            self._cond.notify_all()
        return error

    def _publish(self, resource: str, devices: tuple[DeviceState, ...], disconnected: bool) -> None:
        # Called with the lock held; the callback runs after it is released.
        self._devices[resource] = devices
        self._updates.append(Update(resource, devices, time.monotonic(), disconnected))
        self._cond.notify_all()

    def _received(self, endpoint: _Endpoint, devices: tuple[DeviceState, ...]) -> None:
        with self._cond:
            if self._endpoints.get(endpoint.registration.resource) is not endpoint:
                return
            self._publish(endpoint.registration.resource, devices, False)
        if self.on_update:
            self.on_update(endpoint.registration.resource, list(devices))

    def _stream_ended(self, endpoint: _Endpoint) -> None:
        resource = endpoint.registration.resource
        with self._cond:
            if self._endpoints.get(resource) is not endpoint:
                return  # replaced by a newer registration: nothing changes
            del self._endpoints[resource]
            devices = tuple(DeviceState(d.id, UNHEALTHY, d.topology) for d in self._devices.get(resource, ()))
            self._publish(resource, devices, True)
        endpoint.channel.close()
        if self.on_update:
            self.on_update(resource, list(devices))

    # -- what tests look at --

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"kubelet stand-in: no {what} within {timeout:g}s; "
                        f"registrations={self._registrations} rejections={self._rejections}"
                    )
                self._cond.wait(left)

    def wait_registered(self, resource: str, timeout: float = 5.0, after: int = 0) -> Registration:
        """The first registration of `resource` numbered above `after`, once its first
        ListAndWatch answer has arrived (as the kubelet then knows the devices)."""

        def done() -> bool:
            endpoint = self._endpoints.get(resource)
            return (
                endpoint is not None
                and endpoint.registration.number > after
                and any(
                    u.resource == resource and u.at >= endpoint.registration.at and not u.disconnected
                    for u in self._updates
                )
            )

        self.wait_for(done, timeout, f"registration of {resource} after #{after}")
        with self._cond:
            return self._endpoints[resource].registration

    def wait_devices(
        self, resource: str, predicate: Callable[[list[DeviceState]], bool], timeout: float = 5.0
    ) -> list[DeviceState]:
        self.wait_for(lambda: predicate(list(self._devices.get(resource, ()))), timeout, f"device state of {resource}")
        return self.devices(resource)

    def registered(self, resource: str) -> bool:
        with self._cond:
            return resource in self._endpoints

    def devices(self, resource: str) -> list[DeviceState]:
        with self._cond:
            return list(self._devices.get(resource, ()))

    def healthy_count(self, resource: str) -> int:
        return sum(1 for d in self.devices(resource) if d.health == HEALTHY)

    def registration_count(self, resource: str | None = None) -> int:
        with self._cond:
            return sum(1 for r in self._registrations if resource is None or r.resource == resource)

    @property
    def registrations(self) -> list[Registration]:
        with self._cond:
            return list(self._registrations)

    @property
    def updates(self) -> list[Update]:
        with self._cond:
            return list(self._updates)

    @property
    def rejections(self) -> list[str]:
        with self._cond:
            return list(self._rejections)

    def _stub(self, resource: str) -> tuple[_Endpoint, api_pb2_grpc.DevicePluginStub]:
        with self._cond:
            endpoint = self._endpoints.get(resource)
        if endpoint is None:
            raise KeyError(f"{resource} is not registered with the kubelet stand-in")
        return endpoint, endpoint.stub

    def allocate(self, resource: str, ids: list[str], timeout: float = 5.0) -> api_pb2.AllocateResponse:
        """Allocate for one container; raises grpc.RpcError as the plugin answers."""
        return self.allocate_containers(resource, [ids], timeout)

    def allocate_containers(
        self, resource: str, containers: list[list[str]], timeout: float = 5.0
    ) -> api_pb2.AllocateResponse:
        _, stub = self._stub(resource)
        request = api_pb2.AllocateRequest(
            container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=ids) for ids in containers]
        )
        return stub.Allocate(request, timeout=timeout)

    def preferred_allocation(
        self, resource: str, available: list[str], must_include: list[str], size: int, timeout: float = 5.0
    ) -> list[str]:
        endpoint, stub = self._stub(resource)
        if not endpoint.registration.get_preferred_allocation_available:
            raise RuntimeError(f"{resource} did not offer GetPreferredAllocation; the kubelet would not call it")
        response = stub.GetPreferredAllocation(
            api_pb2.PreferredAllocationRequest(
                container_requests=[
                    api_pb2.ContainerPreferredAllocationRequest(
                        available_deviceIDs=available, must_include_deviceIDs=must_include, allocation_size=size
                    )
                ]
            ),
            timeout=timeout,
        )
        return list(response.container_responses[0].deviceIDs)

    def pre_start_container(self, resource: str, ids: list[str], timeout: float = 5.0) -> None:
        _, stub = self._stub(resource)
        stub.PreStartContainer(api_pb2.PreStartContainerRequest(devices_ids=ids), timeout=timeout)


_GO_CODE_NAMES = {
    grpc.StatusCode.OK: "OK",
    grpc.StatusCode.CANCELLED: "Canceled",
    grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.INTERNAL: "Internal",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
}


def admission_event(error: grpc.RpcError) -> tuple[str, str]:
    """The (reason, message) of the pod event the kubelet writes when a plugin's Allocate
    fails: its admission handler wraps the gRPC error (printed as Go's grpc-go prints a
    status: `rpc error: code = <Code> desc = <details>`) as an unexpected admission error."""
    code = _GO_CODE_NAMES.get(error.code(), str(error.code()))  # type: ignore[attr-defined]
    details = error.details()  # type: ignore[attr-defined]
    return (
        "UnexpectedAdmissionError",
        f"Allocate failed due to rpc error: code = {code} desc = {details}, which is unexpected",
    )


def plugin_sockets(device_plugins_dir: Path) -> list[str]:
    """Names of the sockets other than kubelet.sock in the directory."""
    return sorted(
        e.name
        for e in Path(device_plugins_dir).iterdir()
        if e.name != KUBELET_SOCKET and not e.is_dir() and os.path.exists(e)
    )
