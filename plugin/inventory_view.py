"""`gpunode plugin list` output: the devices as the plugin would advertise them."""

from __future__ import annotations

from typing import Any

from gpunode.plugin.devices import Resource
from gpunode.plugin.nvml import TOPOLOGY_NAMES, Inventory

HEALTHY = "Healthy"


def _link(inventory: Inventory, a: int, b: int) -> str:
    if a == b:
        return "X"
    links = inventory.topology.links(a, b)
    if links:
        return f"NV{links}"
    level = inventory.topology.level(a, b)
    return TOPOLOGY_NAMES.get(level, "?") if level is not None else "?"


def render_json(inventory: Inventory, resources: list[Resource]) -> dict[str, Any]:
    gpus = [gpu.index for gpu in inventory.gpus]
    return {
        "driver_version": inventory.driver_version,
        "nvml_version": inventory.nvml_version,
        "resources": [
            {
                "name": resource.name,
                "socket": resource.socket_name,
                "devices": [
                    {
                        "id": device.id,
                        "uuid": device.uuid,
                        "health": HEALTHY,
                        "gpu": device.gpu.index,
                        "gpu_uuid": device.gpu.uuid,
                        "name": device.gpu.name,
                        "pci_bus_id": device.gpu.pci_bus_id,
                        "numa_node": device.numa_node,
                        "mig_profile": device.mig.profile if device.mig else None,
                    }
                    for device in resource.devices
                ],
            }
            for resource in resources
        ],
        "lost_gpus": list(inventory.lost_indices),
        "topology": [
            {
                "gpus": [a, b],
                "nvlinks": inventory.topology.links(a, b),
                "common_ancestor": TOPOLOGY_NAMES.get(level)
                if (level := inventory.topology.level(a, b)) is not None
                else None,
            }
            for i, a in enumerate(gpus)
            for b in gpus[i + 1 :]
        ],
    }


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[col]) for row in rows) for col in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def render_text(inventory: Inventory, resources: list[Resource]) -> str:
    out = [f"driver {inventory.driver_version}, NVML {inventory.nvml_version or 'unknown'}, {len(inventory.gpus)} GPUs"]
    rows = [["RESOURCE", "ID", "HEALTH", "GPU", "NUMA", "MIG", "NAME", "PCI"]]
    for resource in resources:
        for device in resource.devices:
            rows.append(
                [
                    resource.name,
                    device.id,
                    HEALTHY,
                    str(device.gpu.index),
                    "-" if device.numa_node is None else str(device.numa_node),
                    device.mig.profile if device.mig else "-",
                    device.gpu.name,
                    device.gpu.pci_bus_id,
                ]
            )
    out += _table(rows)
    for index in inventory.lost_indices:
        out.append(f"GPU {index}: lost (NVML reports GPU_IS_LOST); not advertised")
    if len(inventory.gpus) > 1:
        out.append("")
        out.append(
            "topology (NV<n>: n NVLinks; PIX one PCIe switch, PXB several, PHB host bridge, "
            "NODE same NUMA node, SYS across CPUs)"
        )
        indices = [gpu.index for gpu in inventory.gpus]
        matrix = [[""] + [f"GPU{b}" for b in indices]]
        matrix += [[f"GPU{a}"] + [_link(inventory, a, b) for b in indices] for a in indices]
        out += _table(matrix)
    return "\n".join(out) + "\n"
