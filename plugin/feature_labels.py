"""The node labels GPU Feature Discovery (GFD) gives a GPU node, with GFD's names and value
formats, computed from the plugin's NVML inventory and settings. Pure: no I/O, no NVML.

Workloads select nodes with them (`nvidia.com/gpu.product: NVIDIA-A100-SXM4-80GB`), so a
node labelled here looks to them exactly as one labelled by GFD:

- per full-GPU product: nvidia.com/gpu.{product,count,memory,family,compute.major,
  compute.minor,replicas,sharing-strategy}; `-SHARED` on the product when time-sliced
  replicas are advertised under the GPU's own name;
- MIG: nvidia.com/mig.strategy; single: nvidia.com/gpu.* describe the MIG devices
  (`<model>-MIG-<profile>`, `-MIG-INVALID` for a layout single cannot serve); mixed:
  nvidia.com/mig-<profile>.{count,product,memory,replicas,multiprocessors,slices.*,engines.*};
- nvidia.com/cuda.driver.* and cuda.driver-version.*, cuda.runtime.* and
  cuda.runtime-version.*, mig.capable, mps.capable, gpu.machine, gpu.present;
- gpunode's own: gpunode.io/nvml.driver-version and gpunode.io/nvml.version (what the
  running plugin's NVML reports; `gpunode doctor` compares them with the node's
  gpunode.io/driver-version, which bootstrap sets).

`OWNED` is the closed list of keys this plugin may ever write or remove: the labeller
checks every key against it, so it can never touch a label it does not own (the GPU
Operator's nvidia.com/gpu.deploy.*, a user's own).
"""

from __future__ import annotations

import re
from collections import Counter

from gpunode.plugin.config import PluginConfig
from gpunode.plugin.devices import mig_resource_name
from gpunode.plugin.nvml import GpuInfo, Inventory, MigInfo
from gpunode.plugin.sharing import sharing_labels

GPU = "nvidia.com/gpu"
# The annotation that lists the labels this plugin set (as NFD's feature-labels annotation
# does), so that a label no longer true is removed, and only such a label.
LABELS_ANNOTATION = "gpunode.io/feature-labels"

_RESOURCE_ATTRS = (
    r"(count|product|memory|replicas|sharing-strategy|family|compute\.major|compute\.minor|multiprocessors"
    r"|slices\.gi|slices\.ci|engines\.copy|engines\.decoder|engines\.encoder|engines\.jpeg|engines\.ofa)"
)
OWNED = re.compile(
    r"^(nvidia\.com/gpu\." + _RESOURCE_ATTRS + r"|nvidia\.com/gpu\.(present|machine)"
    r"|nvidia\.com/mig-[a-z0-9][a-z0-9.]*\."
    + _RESOURCE_ATTRS
    + r"|nvidia\.com/cuda\.(driver|runtime)\.(major|minor|rev)"
    r"|nvidia\.com/cuda\.(driver|runtime)-version\.(major|minor|revision|full)"
    r"|nvidia\.com/(mig\.capable|mig\.strategy|mps\.capable)|gpunode\.io/nvml\.(driver-version|version))$"
)

_INVALID_VALUE_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


def label_value(text: str) -> str:
    """A Kubernetes label value: GFD's dashes for spaces, anything else invalid to a dash,
    at most 63 characters, starting and ending with a letter or digit."""
    value = _INVALID_VALUE_CHARS.sub("-", text.strip().replace(" ", "-"))[:63]
    return value.strip("-_.")


def arch_family(major: int, minor: int) -> str:
    """GFD's architecture family for a CUDA compute capability."""
    if major == 7:
        return "volta" if minor < 5 else "turing"
    names = {1: "tesla", 2: "fermi", 3: "kepler", 5: "maxwell", 6: "pascal", 8: "ampere", 9: "hopper", 10: "blackwell"}
    return names.get(major, "undefined")


def _product(*parts: str) -> str:
    return label_value("-".join(p.replace(" ", "-") for p in parts if p))


def _full_gpu_labels(gpus: list[GpuInfo], config: PluginConfig, sharing: bool) -> dict[str, str]:
    """nvidia.com/gpu.* for the most common product among `gpus` (GFD labels one product)."""
    counts = Counter(gpu.name for gpu in gpus)
    name = max(counts, key=lambda n: (counts[n], -min(g.index for g in gpus if g.name == n)))
    gpu = next(g for g in gpus if g.name == name)
    if sharing:
        share = sharing_labels(config.sharing, GPU)
        replicated = config.sharing.replicated(GPU)
        shared = replicated is not None and replicated.replicas > 1 and not replicated.rename
    else:  # MIG-enabled GPUs: GFD labels them without sharing
        share = {f"{GPU}.replicas": "0", f"{GPU}.sharing-strategy": "none"}
        shared = False
    labels = {
        f"{GPU}.product": _product(name, "SHARED" if shared else ""),
        f"{GPU}.count": str(counts[name]),
        **share,
    }
    if gpu.memory_bytes:
        labels[f"{GPU}.memory"] = str(gpu.memory_bytes >> 20)
    if gpu.compute_capability and gpu.compute_capability[0]:
        major, minor = gpu.compute_capability
        labels.update(
            {
                f"{GPU}.family": arch_family(major, minor),
                f"{GPU}.compute.major": str(major),
                f"{GPU}.compute.minor": str(minor),
            }
        )
    return labels


def _mig_labels(resource: str, model: str, mig: MigInfo, count: int, config: PluginConfig) -> dict[str, str]:
    return {
        f"{resource}.product": _product(model, "MIG", mig.profile),
        f"{resource}.count": str(count),
        **sharing_labels(config.sharing, resource),
        f"{resource}.memory": str(mig.memory_mib),
        f"{resource}.multiprocessors": str(mig.multiprocessors),
        f"{resource}.slices.gi": str(mig.gi_slices),
        f"{resource}.slices.ci": str(mig.ci_slices),
        f"{resource}.engines.copy": str(mig.copy_engines),
        f"{resource}.engines.decoder": str(mig.decoders),
        f"{resource}.engines.encoder": str(mig.encoders),
        f"{resource}.engines.jpeg": str(mig.jpegs),
        f"{resource}.engines.ofa": str(mig.ofas),
    }


def _mig_strategy_labels(gpus: list[GpuInfo], config: PluginConfig) -> dict[str, str]:
    labels: dict[str, str] = {"nvidia.com/mig.strategy": config.mig_strategy}
    enabled = [g for g in gpus if g.mig_enabled]
    by_profile: dict[str, list[tuple[GpuInfo, MigInfo]]] = {}
    for gpu in enabled:
        for mig in gpu.migs:
            by_profile.setdefault(mig.profile, []).append((gpu, mig))
    if config.mig_strategy == "mixed":
        for profile, devices in sorted(by_profile.items()):
            resource = mig_resource_name("nvidia.com", profile)
            labels.update(_mig_labels(resource, devices[0][0].name, devices[0][1], len(devices), config))
        return labels
    if not enabled:
        return labels  # single without MIG devices: the full GPU labels stand
    if len(enabled) != len(gpus) or len(by_profile) != 1 or any(not g.migs for g in enabled):
        labels.update(
            {
                f"{GPU}.product": _product(enabled[0].name, "MIG", "INVALID"),
                f"{GPU}.count": "0",
                f"{GPU}.replicas": "0",
                f"{GPU}.memory": "0",
            }
        )
        return labels
    (profile, devices), *_ = by_profile.items()
    labels.update(_mig_labels(GPU, devices[0][0].name, devices[0][1], len(devices), config))
    return labels


def _version_labels(driver: str, cuda_version: int | None) -> dict[str, str]:
    parts = driver.split(".")
    labels: dict[str, str] = {}
    if 2 <= len(parts) <= 3:
        major, minor, rev = parts[0], parts[1], parts[2] if len(parts) > 2 else ""
        labels.update(
            {
                "nvidia.com/cuda.driver.major": major,
                "nvidia.com/cuda.driver.minor": minor,
                "nvidia.com/cuda.driver.rev": rev,
                "nvidia.com/cuda.driver-version.major": major,
                "nvidia.com/cuda.driver-version.minor": minor,
                "nvidia.com/cuda.driver-version.revision": rev,
                "nvidia.com/cuda.driver-version.full": label_value(driver),
            }
        )
    if cuda_version:
        major_c, minor_c = str(cuda_version // 1000), str(cuda_version % 1000 // 10)
        labels.update(
            {
                "nvidia.com/cuda.runtime.major": major_c,
                "nvidia.com/cuda.runtime.minor": minor_c,
                "nvidia.com/cuda.runtime-version.major": major_c,
                "nvidia.com/cuda.runtime-version.minor": minor_c,
                "nvidia.com/cuda.runtime-version.full": f"{major_c}.{minor_c}",
            }
        )
    return labels


def feature_labels(
    inventory: Inventory, config: PluginConfig, machine: str, lost: frozenset[str] = frozenset()
) -> dict[str, str]:
    """Every label this node should carry now. `lost`: UUIDs of GPUs NVML no longer answers
    for (not counted). No GPU at all: no labels (every one this plugin set is then removed)."""
    gpus = [g for g in inventory.gpus if g.uuid not in lost]
    if not gpus:
        return {}
    labels = {"nvidia.com/gpu.present": "true", "nvidia.com/gpu.machine": label_value(machine) or "unknown"}
    labels.update(_version_labels(inventory.driver_version, inventory.cuda_version))
    full = [g for g in gpus if not g.mig_enabled]
    labels.update(_full_gpu_labels(full or gpus, config, sharing=bool(full)))
    if config.mig_strategy != "none":
        labels.update(_mig_strategy_labels(gpus, config))
    labels["nvidia.com/mig.capable"] = str(any(g.mig_enabled is not None for g in gpus)).lower()
    mps = config.sharing.strategy == "mps" and not any(g.mig_enabled for g in gpus)
    labels["nvidia.com/mps.capable"] = str(mps).lower()
    labels["gpunode.io/nvml.driver-version"] = label_value(inventory.driver_version)
    if inventory.nvml_version:
        labels["gpunode.io/nvml.version"] = label_value(inventory.nvml_version)
    stray = sorted(k for k in labels if not OWNED.match(k))
    if stray:  # a bug here, never a node's state: say so rather than write it
        raise ValueError(f"feature labels outside the owned set: {stray}")
    return labels


def node_patch(
    current: dict[str, str], annotations: dict[str, str], wanted: dict[str, str]
) -> dict[str, object] | None:
    """The JSON merge patch that moves a Node's labels from `current` to `wanted`: sets what
    differs, removes (null) what this plugin set before (the annotation's list) and no
    longer wants, and records the new list. None: nothing to change. Every key it touches
    is checked against OWNED (ValueError otherwise)."""
    before = [k for k in annotations.get(LABELS_ANNOTATION, "").split(",") if k]
    stale = [k for k in before if k not in wanted and k in current and OWNED.match(k)]
    changes: dict[str, str | None] = {k: v for k, v in wanted.items() if current.get(k) != v}
    changes.update(dict.fromkeys(stale))
    listed = ",".join(sorted(wanted))
    for key in changes:
        if not OWNED.match(key):
            raise ValueError(f"refusing to write label {key!r}: not one this plugin owns")
    if not changes and annotations.get(LABELS_ANNOTATION, "") == listed:
        return None
    metadata: dict[str, object] = {"annotations": {LABELS_ANNOTATION: listed or None}}
    if changes:
        metadata["labels"] = changes
    return {"metadata": metadata}


def nfd_features_file(wanted: dict[str, str]) -> str:
    """NFD's local feature file (features.d): one `name=value` a line; NFD labels the node."""
    return "".join(f"{k}={v}\n" for k, v in sorted(wanted.items()))
