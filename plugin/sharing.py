"""Sharing GPUs among pods (time-slicing, MPS) as NVIDIA's config v1 describes it: the
data, and the node labels gpu-feature-discovery derives from it. Pure: no I/O, no NVML."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

SharingStrategy = Literal["none", "time-slicing", "mps"]
SHARED_SUFFIX = ".shared"
REPLICA_SEPARATOR = "::"


@dataclass(frozen=True)
class ResourcePattern:
    """`resources.gpus[]` / `resources.mig[]`: devices whose GPU name (or MIG profile)
    matches `pattern` (`*` is any text) are advertised as `name`."""

    pattern: str
    name: str

    def matches(self, text: str) -> bool:
        regex = "^" + ".*".join(re.escape(part) for part in self.pattern.split("*")) + "$"
        return re.match(regex, text) is not None


DeviceSelection = Literal["all"] | int | tuple[str, ...]


@dataclass(frozen=True)
class ReplicatedResource:
    name: str  # the resource whose devices are shared
    replicas: int
    rename: str | None = None  # advertise the replicas under this name instead
    devices: DeviceSelection = "all"

    @property
    def advertised_name(self) -> str:
        return self.rename or self.name


@dataclass(frozen=True)
class Sharing:
    strategy: SharingStrategy = "none"
    fail_requests_greater_than_one: bool = False
    resources: tuple[ReplicatedResource, ...] = ()

    def replicas_of(self, resource: str) -> int:
        """Replicas per device of `resource` (1: not shared)."""
        for replicated in self.resources:
            if replicated.name == resource:
                return replicated.replicas
        return 1

    def replicated(self, resource: str) -> ReplicatedResource | None:
        return next((r for r in self.resources if r.name == resource), None)


NO_SHARING = Sharing()


def sharing_labels(sharing: Sharing, resource: str = "nvidia.com/gpu") -> dict[str, str]:
    """The node labels gpu-feature-discovery gives a resource for a loaded config:
    `<resource>.replicas` (replicas per device, 1 when not shared) and
    `<resource>.sharing-strategy` (`none` unless that resource has more than one replica).
    For the full-GPU resource: nvidia.com/gpu.replicas and nvidia.com/gpu.sharing-strategy."""
    replicas = sharing.replicas_of(resource)
    strategy = sharing.strategy if replicas > 1 else "none"
    return {f"{resource}.replicas": str(replicas), f"{resource}.sharing-strategy": strategy}


def replica_id(device_id: str, replica: int) -> str:
    """NVIDIA's annotated ID of one replica: `<device id>::<n>`, n from 0."""
    return f"{device_id}{REPLICA_SEPARATOR}{replica}"


def base_id(device_id: str) -> str:
    """The device ID a replica ID stands for (an ID without `::` is its own)."""
    return device_id.split(REPLICA_SEPARATOR, 1)[0]


def is_replica(device_id: str) -> bool:
    return REPLICA_SEPARATOR in device_id
