"""A stand-in for the kubelet's PodResources API v1, over real gRPC on a real unix socket
(`<kubelet root>/pod-resources/kubelet.sock`), as the kubelet serves it.

The kubelet answers from its device manager's record of which container got which device
IDs at Allocate; here the test says so:

    with PodResourcesStandIn(root / "pod-resources" / "kubelet.sock") as kubelet:
        kubelet.assign("ml", "trainer-0", "main", "nvidia.com/gpu", ["GPU-..."])
        kubelet.remove_pod("ml", "trainer-0")

`List` returns every pod with its containers (containers without devices included, as the
kubelet lists them), `Get` one pod (NOT_FOUND when the kubelet does not know it; the
kubelet's own message), `GetAllocatableResources` the devices given with `allocatable()`.
`fail_with(code)` makes every call fail with a gRPC status (a kubelet that refuses).
"""

from __future__ import annotations

import os
import threading
from concurrent import futures
from pathlib import Path
from types import TracebackType

import grpc

from gpunode.plugin.podresources import api_pb2, api_pb2_grpc


class _Lister(api_pb2_grpc.PodResourcesListerServicer):
    def __init__(self, owner: PodResourcesStandIn) -> None:
        self.owner = owner

    def _check(self, context: grpc.ServicerContext) -> None:
        self.owner.calls += 1
        if self.owner.failure is not None:
            context.abort(self.owner.failure, "pod resources unavailable (stand-in told to refuse)")

    def List(
        self, request: api_pb2.ListPodResourcesRequest, context: grpc.ServicerContext
    ) -> api_pb2.ListPodResourcesResponse:
        self._check(context)
        return api_pb2.ListPodResourcesResponse(pod_resources=self.owner.pods())

    def Get(
        self, request: api_pb2.GetPodResourcesRequest, context: grpc.ServicerContext
    ) -> api_pb2.GetPodResourcesResponse:
        self._check(context)
        for pod in self.owner.pods():
            if (pod.namespace, pod.name) == (request.pod_namespace, request.pod_name):
                return api_pb2.GetPodResourcesResponse(pod_resources=pod)
        context.abort(grpc.StatusCode.NOT_FOUND, f"pod {request.pod_name} not found in {request.pod_namespace}")
        raise AssertionError("unreachable")

    def GetAllocatableResources(
        self, request: api_pb2.AllocatableResourcesRequest, context: grpc.ServicerContext
    ) -> api_pb2.AllocatableResourcesResponse:
        self._check(context)
        with self.owner.lock:
            devices = [
                api_pb2.ContainerDevices(resource_name=name, device_ids=ids)
                for name, ids in sorted(self.owner.allocatable_devices.items())
            ]
        return api_pb2.AllocatableResourcesResponse(devices=devices)


class PodResourcesStandIn:
    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self.lock = threading.Lock()
        # (namespace, pod) -> container -> resource -> device IDs
        self._pods: dict[tuple[str, str], dict[str, dict[str, list[str]]]] = {}
        self.allocatable_devices: dict[str, list[str]] = {}
        self.failure: grpc.StatusCode | None = None
        self.calls = 0
        self._server: grpc.Server | None = None

    def start(self) -> None:
        self.socket.parent.mkdir(parents=True, exist_ok=True)
        if self.socket.exists():
            os.unlink(self.socket)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="podresources"))
        api_pb2_grpc.add_PodResourcesListerServicer_to_server(_Lister(self), server)
        if server.add_insecure_port(f"unix:{self.socket}") == 0:
            raise RuntimeError(f"cannot serve PodResources on {self.socket}")
        server.start()
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None
        if self.socket.exists():
            os.unlink(self.socket)

    def __enter__(self) -> PodResourcesStandIn:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def assign(self, namespace: str, pod: str, container: str, resource: str | None, ids: list[str]) -> None:
        """Container `container` of pod `namespace/pod` holds `ids` of `resource` (None: no devices)."""
        with self.lock:
            containers = self._pods.setdefault((namespace, pod), {})
            devices = containers.setdefault(container, {})
            if resource is not None:
                devices.setdefault(resource, []).extend(ids)

    def remove_pod(self, namespace: str, pod: str) -> None:
        with self.lock:
            self._pods.pop((namespace, pod), None)

    def allocatable(self, resource: str, ids: list[str]) -> None:
        with self.lock:
            self.allocatable_devices[resource] = list(ids)

    def fail_with(self, code: grpc.StatusCode | None) -> None:
        self.failure = code

    def pods(self) -> list[api_pb2.PodResources]:
        with self.lock:
            return [
                api_pb2.PodResources(
                    name=pod,
                    namespace=namespace,
                    containers=[
                        api_pb2.ContainerResources(
                            name=container,
                            devices=[
                                api_pb2.ContainerDevices(resource_name=resource, device_ids=ids)
                                for resource, ids in sorted(devices.items())
                            ],
                        )
                        for container, devices in containers.items()
                    ],
                )
                for (namespace, pod), containers in self._pods.items()
            ]
