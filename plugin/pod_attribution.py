"""Which pod, namespace and container hold each GPU: the kubelet's PodResources API v1 `List`
over <kubelet root>/pod-resources/kubelet.sock, asked at scrape time (as dcgm-exporter's
Kubernetes mapping does), so the labels follow pods as they come and go."""

from __future__ import annotations

from pathlib import Path

import grpc

from gpunode.plugin.devices import Resource
from gpunode.plugin.log import log_event
from gpunode.plugin.podresources import api_pb2, api_pb2_grpc

Owner = tuple[str, str, str]  # (namespace, pod, container)

# The kubelet answers List from memory; a scrape must not hang on a stuck kubelet.
LIST_TIMEOUT_SECONDS = 1.0


def device_uuids(resources: list[Resource]) -> dict[str, str]:
    """Advertised device ID -> the UUID telemetry is labelled with (the GPU's, or the MIG device's)."""
    out: dict[str, str] = {}
    for resource in resources:
        for device in resource.devices:
            out[device.id] = device.uuid
            out[device.uuid] = device.uuid
    return out


def owners_from(response: api_pb2.ListPodResourcesResponse, uuids: dict[str, str]) -> dict[str, list[Owner]]:
    """UUID -> the containers holding it. A shared replica `<id>::<n>` counts for its GPU."""
    owners: dict[str, list[Owner]] = {}
    for pod in response.pod_resources:
        for container in pod.containers:
            for devices in container.devices:
                for device_id in devices.device_ids:
                    uuid = uuids.get(device_id.split("::", 1)[0])
                    if uuid is None:
                        continue
                    owner = (pod.namespace, pod.name, container.name)
                    held = owners.setdefault(uuid, [])
                    if owner not in held:
                        held.append(owner)
    return owners


class PodAttribution:
    """Asks the kubelet's PodResources socket; None when it cannot (no socket, an error)."""

    def __init__(self, socket_path: Path, uuids: dict[str, str]) -> None:
        self._path = socket_path
        self._uuids = uuids
        self._channel: grpc.Channel | None = None
        self._stub: api_pb2_grpc.PodResourcesListerStub | None = None
        self._failing: str | None = None

    def _report(self, problem: str | None) -> None:
        # One log line per change of state, not one per scrape.
        if problem != self._failing:
            if problem is None:
                log_event("pod_resources", state="answering", socket=self._path)
            else:
                log_event("pod_resources", state="unavailable", socket=self._path, error=problem)
            self._failing = problem

    def __call__(self) -> dict[str, list[Owner]] | None:
        if not self._path.is_socket():
            self._report("no socket (pod attribution off until the kubelet creates it)")
            return None
        if self._stub is None:
            self._channel = grpc.insecure_channel(f"unix://{self._path}")
            self._stub = api_pb2_grpc.PodResourcesListerStub(self._channel)
        try:
            response = self._stub.List(api_pb2.ListPodResourcesRequest(), timeout=LIST_TIMEOUT_SECONDS)
        except grpc.RpcError as exc:
            self._report(f"{exc.code().name}: {exc.details()}")
            return None
        self._report(None)
        return owners_from(response, self._uuids)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
