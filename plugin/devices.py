"""What the plugin advertises: resources and their devices, from NVML's inventory and the
MIG and device ID strategies. Pure: no NVML, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

from gpunode.plugin.config import PluginConfig, socket_name
from gpunode.plugin.nvml import GpuInfo, Inventory, MigInfo, NvmlInitError


@dataclass(frozen=True)
class PluginDevice:
    id: str  # the ID the kubelet sees (UUID or index, per strategy)
    uuid: str  # the GPU's or the MIG device's own UUID
    gpu: GpuInfo  # the physical GPU (the parent, for a MIG device)
    mig: MigInfo | None = None

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


def plan_resources(inventory: Inventory, config: PluginConfig) -> list[Resource]:
    """The resources to serve, each with its devices in GPU order; raises NvmlInitError
    (reasons no_devices, mig_strategy_mismatch) when there is nothing sensible to serve."""
    gpus = inventory.gpus
    groups: dict[str, list[PluginDevice]] = {}

    if config.mig_strategy == "none":
        groups[config.resource_name] = [_device(gpu, None, config) for gpu in gpus]
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
            groups[config.resource_name] = [_device(gpu, None, config) for gpu in gpus]
        else:
            profiles = sorted({mig.profile for gpu in gpus for mig in gpu.migs})
            if len(profiles) > 1:
                raise NvmlInitError(
                    "mig_strategy_mismatch",
                    f"MIG strategy single, but the node has MIG profiles {', '.join(profiles)}",
                    "give every GPU the same MIG layout, or use --mig-strategy mixed",
                )
            groups[config.resource_name] = [_device(gpu, mig, config) for gpu in gpus for mig in gpu.migs]
    else:
        for gpu in gpus:
            if gpu.mig_enabled:
                for mig in gpu.migs:
                    name = mig_resource_name(config.resource_domain, mig.profile)
                    groups.setdefault(name, []).append(_device(gpu, mig, config))
            else:
                groups.setdefault(config.resource_name, []).append(_device(gpu, None, config))

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
