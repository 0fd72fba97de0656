"""Allocate and GetPreferredAllocation answers. Pure: devices and settings in, answers out.

Preferred allocation scores a set of devices by the links between every pair of them
and picks the best set that holds the must-include devices:

    pair score = 100 per NVLink between the two GPUs
               + 50 same PCIe switch, 40 behind several switches, 30 same host bridge,
                 20 same NUMA node (CPU), 10 across CPUs
    two MIG devices on the same GPU score above any pair of GPUs.

Small cases (the usual: up to 8 GPUs) are solved exactly by trying every set; larger
ones grow the set greedily. Ties go to the lower device positions, so the same request
always gets the same answer.

Replicas of shared GPUs (`<id>::<n>`) are placed as NVIDIA's plugin places them: one at a
time on the GPU with the fewest replicas in use (policy `distributed`, the default) or the
most (`packed`), ties to the GPU this request has taken least from, then device order.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gpunode.plugin.config import PluginConfig
from gpunode.plugin.devices import PluginDevice
from gpunode.plugin.nvml import Topology
from gpunode.plugin.sharing import base_id

EXHAUSTIVE_LIMIT = 5000  # sets to try before falling back to greedy growth
SAME_GPU_SCORE = 1000
CDI_KIND = "nvidia.com/gpu"
VISIBLE_DEVICES = "NVIDIA_VISIBLE_DEVICES"
MPS_PIPE_ENV = "CUDA_MPS_PIPE_DIRECTORY"
MPS_CONTAINER_ROOT = "/mps"  # where NVIDIA's MPS control daemon sees the MPS root
# Control devices every CUDA container needs besides its GPUs, if the driver made them.
CONTROL_DEVICES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools")

_LEVEL_SCORE = {0: 60, 10: 50, 20: 40, 30: 30, 40: 20, 50: 10}


def pair_score(a: PluginDevice, b: PluginDevice, topology: Topology) -> int:
    if a.gpu.index == b.gpu.index:
        return SAME_GPU_SCORE
    score = 100 * topology.links(a.gpu.index, b.gpu.index)
    level = topology.level(a.gpu.index, b.gpu.index)
    if level is not None:
        score += _LEVEL_SCORE.get(level, 0)
    elif a.numa_node is not None and a.numa_node == b.numa_node:
        score += _LEVEL_SCORE[40]
    return score


def preferred_allocation(
    available: Sequence[str],
    must_include: Sequence[str],
    size: int,
    devices: dict[str, PluginDevice],
    order: dict[str, int],
    topology: Topology,
) -> list[str]:
    """The best `size` IDs from `available`, always holding `must_include`.

    Never fails: the answer is only a hint to the kubelet, and an error here would fail
    the pod's admission. IDs the plugin does not know score nothing."""

    def position(device_id: str) -> tuple[int, str]:
        return order.get(device_id, len(order)), device_id

    chosen = sorted(dict.fromkeys(must_include), key=position)
    pool = sorted((i for i in dict.fromkeys(available) if i not in set(chosen)), key=position)
    if size <= len(chosen):
        return chosen[: max(size, 0)]
    need = min(size - len(chosen), len(pool))

    scores: dict[tuple[str, str], int] = {}

    def score(x: str, y: str) -> int:
        key = (x, y) if x < y else (y, x)
        if key not in scores:
            dx, dy = devices.get(x), devices.get(y)
            scores[key] = pair_score(dx, dy, topology) if dx and dy else 0
        return scores[key]

    def set_score(ids: Sequence[str]) -> int:
        return sum(score(x, y) for x, y in itertools.combinations(ids, 2))

    if math.comb(len(pool), need) <= EXHAUSTIVE_LIMIT:
        # combinations() runs in position order, and max() keeps the first best: deterministic.
        best = max(itertools.combinations(pool, need), key=lambda extra: set_score(chosen + list(extra)))
        picked = list(best)
    else:
        picked = []
        candidates = list(pool)
        for _ in range(need):
            base = chosen + picked
            pick = max(
                candidates,
                key=lambda c: (
                    sum(score(c, x) for x in base)
                    if base
                    else max((score(c, y) for y in candidates if y != c), default=0),
                    -position(c)[0],
                ),
            )
            picked.append(pick)
            candidates.remove(pick)
    return sorted(chosen + picked, key=position)


def replica_preferred_allocation(
    available: Sequence[str],
    must_include: Sequence[str],
    size: int,
    order: dict[str, int],
    policy: str = "distributed",
) -> list[str]:
    """`size` replica IDs holding `must_include`, spread over GPUs (distributed) or packed
    onto the busiest ones; `order` holds every device the plugin advertises (all replicas),
    from which the replicas in use per GPU follow: those not in `available`."""
    chosen = list(dict.fromkeys(must_include))
    taken = set(chosen)
    candidates = [i for i in dict.fromkeys(available) if i not in taken]
    candidates.sort(key=lambda i: order.get(i, len(order)))
    total: dict[str, int] = {}
    for device_id in order:
        total[base_id(device_id)] = total.get(base_id(device_id), 0) + 1
    free: dict[str, int] = {}
    for device_id in candidates:
        free[base_id(device_id)] = free.get(base_id(device_id), 0) + 1
    picked_from: dict[str, int] = {}
    sign = 1 if policy == "distributed" else -1
    for _ in range(max(0, min(size - len(chosen), len(candidates)))):
        best = min(
            range(len(candidates)),
            key=lambda k: (
                sign * (total.get(base_id(candidates[k]), 0) - free[base_id(candidates[k])]),
                picked_from.get(base_id(candidates[k]), 0),
                k,
            ),
        )
        pick = candidates.pop(best)
        gpu = base_id(pick)
        free[gpu] -= 1
        picked_from[gpu] = picked_from.get(gpu, 0) + 1
        chosen.append(pick)
    return chosen[: max(size, 0)]


@dataclass(frozen=True)
class DeviceNode:
    container_path: str
    host_path: str


@dataclass(frozen=True)
class Mount:
    container_path: str
    host_path: str


@dataclass(frozen=True)
class ContainerAllocation:
    envs: dict[str, str]
    cdi_devices: tuple[str, ...]
    device_nodes: tuple[DeviceNode, ...]
    mounts: tuple[Mount, ...] = ()


def _mig_caps(dev_root: Path, device: PluginDevice) -> list[str]:
    """/dev/nvidia-caps/nvidia-capN nodes granting access to a MIG device's instances."""
    if device.mig is None:
        return []
    base = dev_root / f"proc/driver/nvidia/capabilities/gpu{device.gpu.minor}/mig/gi{device.mig.gpu_instance}"
    nodes = []
    for access in (base / "access", base / f"ci{device.mig.compute_instance}" / "access"):
        try:
            for line in access.read_text().splitlines():
                key, _, value = line.partition(":")
                if key.strip() == "DeviceFileMinor":
                    nodes.append(f"/dev/nvidia-caps/nvidia-cap{int(value)}")
        except (OSError, ValueError):
            continue
    return nodes


def device_nodes(devices: Sequence[PluginDevice], dev_root: Path) -> tuple[DeviceNode, ...]:
    """Device nodes for the container: each GPU's /dev/nvidiaN (a MIG device's parent and its
    capability nodes), then the control devices; only those that exist under dev_root."""
    wanted: list[str] = []
    for device in devices:
        wanted.append(f"/dev/nvidia{device.gpu.minor}")
        wanted.extend(_mig_caps(dev_root, device))
    wanted.extend(f"/dev/{name}" for name in CONTROL_DEVICES)
    nodes = []
    for path in dict.fromkeys(wanted):
        host = os.path.join(str(dev_root), path.lstrip("/"))
        if os.path.exists(host):
            nodes.append(DeviceNode(container_path=path, host_path=host))
    return tuple(nodes)


def mps_allocation(resource: str, mps_root: Path) -> tuple[dict[str, str], tuple[Mount, ...]]:
    """What NVIDIA's plugin gives an MPS client: the control daemon's pipe directory for the
    resource (at /mps/<resource>/pipe, from <mpsRoot>/<resource>/pipe on the host) and the
    daemon's shared memory (<mpsRoot>/shm on the host) as the container's /dev/shm."""
    pipe = f"{MPS_CONTAINER_ROOT}/{resource}/pipe"
    mounts = (
        Mount(container_path=pipe, host_path=str(mps_root / resource / "pipe")),
        Mount(container_path="/dev/shm", host_path=str(mps_root / "shm")),
    )
    return {MPS_PIPE_ENV: pipe}, mounts


def container_allocation(
    devices: Sequence[PluginDevice], config: PluginConfig, resource: str | None = None
) -> ContainerAllocation:
    """The answer for one container. Replicas of one GPU give that GPU once."""
    unique = list({device.visible_id: device for device in devices}.values())
    envs: dict[str, str] = {}
    if config.device_list_strategy == "cdi":
        cdi = tuple(dict.fromkeys(f"{CDI_KIND}={device.uuid}" for device in unique))
    else:
        envs[VISIBLE_DEVICES] = ",".join(device.visible_id for device in unique)
        cdi = ()
    for enabled, name in (
        (config.gdrcopy_enabled, "NVIDIA_GDRCOPY"),
        (config.gds_enabled, "NVIDIA_GDS"),
        (config.mofed_enabled, "NVIDIA_MOFED"),
    ):
        if enabled:
            envs[name] = "enabled"
    mounts: tuple[Mount, ...] = ()
    if config.sharing.strategy == "mps" and config.mps_root is not None and resource is not None:
        mps_envs, mounts = mps_allocation(resource, config.mps_root)
        envs.update(mps_envs)
    nodes = device_nodes(unique, config.dev_root) if config.pass_device_specs else ()
    return ContainerAllocation(envs=envs, cdi_devices=cdi, device_nodes=nodes, mounts=mounts)
