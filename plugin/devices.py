"""What the plugin advertises: resources and their devices, from NVML's inventory, the MIG
and device ID strategies, the config file's resource patterns and its sharing (replicas
`<id>::<n>` of each shared device, as NVIDIA's plugin forms them). Pure: no NVML, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, replace

from gpunode.plugin.config import ConfigError, PluginConfig, socket_name
from gpunode.plugin.nvml import GpuInfo, Inventory, MigInfo, NvmlInitError
from gpunode.plugin.sharing import ReplicatedResource, ResourcePattern, Sharing, base_id, replica_id


@dataclass(frozen=True)
class PluginDevice:
    id: str  # the ID the kubelet sees (UUID or index, per strategy)
    uuid: str  # the GPU's or the MIG device's own UUID
    gpu: GpuInfo  # the physical GPU (the parent, for a MIG device)
    mig: MigInfo | None = None
    replica: int | None = None  # which replica of a shared device (None: not shared)
    replicas: int = 1  # how many replicas its device has

    @property
    def visible_id(self) -> str:
        """The device the container is given: a replica's own device (UUID or index)."""
        return base_id(self.id)

    @property
    def numa_node(self) -> int | None:
        return self.gpu.numa_node

    @property
    def index_id(self) -> str:
        return str(self.gpu.index) if self.mig is None else f"{self.gpu.index}:{self.mig.slot}"


@dataclass(frozen=True)
class Resource:
    name: str
    devices: tuple[PluginDevice, ...]

    @property
    def socket_name(self) -> str:
        return socket_name(self.name)

    def by_id(self) -> dict[str, PluginDevice]:
        return {device.id: device for device in self.devices}


def _device(gpu: GpuInfo, mig: MigInfo | None, config: PluginConfig) -> PluginDevice:
    uuid = gpu.uuid if mig is None else mig.uuid
    probe = PluginDevice(id="", uuid=uuid, gpu=gpu, mig=mig)
    return PluginDevice(id=uuid if config.device_id_strategy == "uuid" else probe.index_id, uuid=uuid, gpu=gpu, mig=mig)


def mig_resource_name(domain: str, profile: str) -> str:
    # '+' (as in 1g.10gb+me) is not allowed in a resource name.
    return f"{domain}/mig-{profile.replace('+', '.')}"


def _named(patterns: tuple[ResourcePattern, ...], text: str, default: str) -> str:
    return next((p.name for p in patterns if p.matches(text)), default)


def _group(inventory: Inventory, config: PluginConfig) -> dict[str, list[PluginDevice]]:
    """Devices per resource name before sharing; raises NvmlInitError for a MIG layout the
    strategy cannot serve."""
    gpus = inventory.gpus
    groups: dict[str, list[PluginDevice]] = {}

    def add(name: str, gpu: GpuInfo, mig: MigInfo | None) -> None:
        groups.setdefault(name, []).append(_device(gpu, mig, config))

    def add_gpu(gpu: GpuInfo) -> None:
        add(_named(config.gpu_resources, gpu.name, config.resource_name), gpu, None)

    if config.mig_strategy == "none":
        for gpu in gpus:
            add_gpu(gpu)
    elif config.mig_strategy == "single":
        enabled = [gpu for gpu in gpus if gpu.mig_enabled]
        if enabled and len(enabled) != len(gpus):
            plain = ", ".join(str(gpu.index) for gpu in gpus if not gpu.mig_enabled)
            raise NvmlInitError(
                "mig_strategy_mismatch",
                f"MIG strategy single, but GPUs {plain} have MIG disabled",
                "enable MIG on every GPU of the node, or use --mig-strategy mixed",
            )
        if not enabled:
            for gpu in gpus:
                add_gpu(gpu)
        else:
            profiles = sorted({mig.profile for gpu in gpus for mig in gpu.migs})
            if len(profiles) > 1:
                raise NvmlInitError(
                    "mig_strategy_mismatch",
                    f"MIG strategy single, but the node has MIG profiles {', '.join(profiles)}",
                    "give every GPU the same MIG layout, or use --mig-strategy mixed",
                )
            for gpu in gpus:
                for mig in gpu.migs:
                    add(_named(config.mig_resources, mig.profile, config.resource_name), gpu, mig)
    else:
        for gpu in gpus:
            if not gpu.mig_enabled:
                add_gpu(gpu)
                continue
            for mig in gpu.migs:
                default = mig_resource_name(config.resource_domain, mig.profile)
                add(_named(config.mig_resources, mig.profile, default), gpu, mig)
    return groups


def _selected(devices: list[PluginDevice], shared: ReplicatedResource, key: str) -> list[PluginDevice]:
    """The devices of a resource that `devices:` selects for sharing (all, the first N, or a list)."""
    if shared.devices == "all":
        return list(devices)
    if isinstance(shared.devices, int):
        if shared.devices > len(devices):
            raise ConfigError(
                f"{key}.devices asks for {shared.devices} devices of {shared.name} to be shared, but the node has "
                f"{len(devices)}. Fix: lower the count, or use devices: all"
            )
        return list(devices[: shared.devices])
    chosen: list[PluginDevice] = []
    for ref in shared.devices:
        match = next((d for d in devices if ref in (d.uuid, d.index_id)), None)
        if match is None:
            raise ConfigError(
                f"{key}.devices names {ref}, which is not a device of {shared.name} on this node. "
                "Fix: list GPU indices, MIG indices or UUIDs that `gpunode plugin list` shows"
            )
        if match not in chosen:
            chosen.append(match)
    return [d for d in devices if d in chosen]  # in device order


def share(groups: dict[str, list[PluginDevice]], sharing: Sharing) -> dict[str, list[PluginDevice]]:
    """NVIDIA's replication: each selected device of a shared resource becomes `replicas`
    devices `<id>::0` .. `<id>::<replicas-1>` under the resource's (new) name; the devices
    not selected stay as they were. Raises ConfigError for a selection that cannot be met."""
    if not sharing.resources:
        return groups
    key = "sharing.mps" if sharing.strategy == "mps" else "sharing.timeSlicing"
    out: dict[str, list[PluginDevice]] = {
        name: list(devices) for name, devices in groups.items() if sharing.replicated(name) is None
    }
    for shared in sharing.resources:
        devices = groups.get(shared.name, [])
        if not devices:
            continue  # NVIDIA's rule: a shared resource the node does not have is skipped
        selected = _selected(devices, shared, key)
        if sharing.strategy == "mps" and any(d.mig is not None for d in selected):
            raise ConfigError(
                f"{key}: {shared.name} holds MIG devices, and MPS cannot share MIG devices. "
                "Fix: use sharing.timeSlicing for MIG resources, or disable MIG"
            )
        rest = [d for d in devices if d not in selected]
        if rest:
            out.setdefault(shared.name, []).extend(rest)
        target = out.setdefault(shared.advertised_name, [])
        for device in selected:
            for n in range(shared.replicas):
                target.append(replace(device, id=replica_id(device.id, n), replica=n, replicas=shared.replicas))
    for devices in out.values():
        devices.sort(key=_position)
    return out


def _position(device: PluginDevice) -> tuple[int, int, int]:
    """GPU order, a GPU's MIG devices in slot order, a device's replicas in order."""
    return (
        device.gpu.index,
        -1 if device.mig is None else device.mig.slot,
        -1 if device.replica is None else device.replica,
    )


def plan_resources(inventory: Inventory, config: PluginConfig) -> list[Resource]:
    """The resources to serve, each with its devices in GPU order (a shared device's replicas
    together); raises NvmlInitError (reasons no_devices, mig_strategy_mismatch) when there is
    nothing sensible to serve, ConfigError when the config's sharing cannot be applied."""
    groups = share(_group(inventory, config), config.sharing)
    resources = [Resource(name=name, devices=tuple(devices)) for name, devices in sorted(groups.items()) if devices]
    if not resources:
        lost = f" ({len(inventory.lost_indices)} GPUs lost)" if inventory.lost_indices else ""
        raise NvmlInitError(
            "no_devices",
            f"NVML started (driver {inventory.driver_version}) but found no devices to advertise "
            f"with MIG strategy {config.mig_strategy}{lost}",
            "check `nvidia-smi -L` on the host; with MIG enabled, create MIG devices or use --mig-strategy none",
        )
    return resources
