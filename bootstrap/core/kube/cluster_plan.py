"""What gpunode wants in the cluster for a set of bootstrapped nodes (pure; no kubectl).

Per node: its labels and annotations, and the device plugin DaemonSet that serves it.
For the cluster: which of gpunode's DaemonSets no node selects any more (to delete).

Naming. One DaemonSet per (driver version, host layout): `gpunode-device-plugin-<version>-
<variant>`, where the variant digests what the DaemonSet takes from the host (the library
file in mount mode, the kubelet root) and where it lives (plugin, mode, namespace); see
`manifests.plugin_variant`. Each node is labelled `gpunode.io/driver-version=<version>` and
`gpunode.io/device-plugin=<the DaemonSet's name>`, and the DaemonSet selects both, so a
Debian and an Ubuntu node on one driver version (library in different directories) each
get a DaemonSet whose hostPath exists on them, and no node is ever selected by two of
gpunode's DaemonSets at once.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from gpunode.bootstrap.core.kube.plugin_config import (
    CONFIG_LABEL,
    NamedConfig,
    PluginConfigs,
    expected_allocatable,
    named_config,
    sharing_config,
)
from gpunode.bootstrap.core.kube.plugin_deployment import (
    DEVICE_PLUGIN_LABEL,
    DRIVER_VERSION_LABEL,
    MANAGED_BY_LABELS,
    NVML_LIBRARY_ANNOTATION,
    Mode,
    Plugin,
    PluginDeployment,
)
from gpunode.bootstrap.core.kube.taints import Toleration
from gpunode.bootstrap.errors import UserError

GPU_COUNT_ANNOTATION = "gpunode.io/gpu-count"
GPUS_ANNOTATION = "gpunode.io/gpus"  # the GPUs' PCI bus IDs, comma-separated
PLUGIN_DAEMONSET_ANNOTATION = "gpunode.io/plugin-daemonset"  # namespace/name
HOST_PLUGIN = "host"
NO_PLUGIN = "none"
RESOURCE = "nvidia.com/gpu"
MANAGED_BY_SELECTOR = ",".join(f"{k}={v}" for k, v in MANAGED_BY_LABELS.items())


@dataclass(frozen=True)
class ClusterSettings:
    """The cluster half's choices for one run (the same for every host of the run)."""

    plugin: Plugin = "bundled"
    mode: Mode = "mount"
    image: str | None = None
    namespace: str = "kube-system"
    tolerations: tuple[Toleration, ...] = ()
    runtime_handler: str = "nvidia"
    rollout_timeout: float = 180.0
    verify_timeout: float = 120.0
    # --plugin-config files (NVIDIA's config v1), in the order given: the first is the default.
    plugin_config_files: tuple[NamedConfig, ...] = ()
    # The ConfigMap's configs for this run (node_configs() fills it from the files and the
    # nodes' sharing choices); None: no per-node config.
    plugin_configs: PluginConfigs | None = None
    metrics_addr: str | None = None  # the bundled plugin's /metrics; None: the default, "off": none
    node_labels: str = "node"  # GFD's labels from the bundled plugin: node, nfd or off


@dataclass(frozen=True)
class NodeTarget:
    """What the node half found on one host, as far as the cluster needs it."""

    host: str  # the name the operator gave
    node: str  # the name its kubelet registers
    driver_version: str | None
    nvml_library: str | None
    kubelet_root: str
    gpu_bus_ids: tuple[str, ...]
    plugin_mode: str = "daemonset"  # daemonset | host
    plugin_config: str | None = None  # the device plugin config this node is labelled with

    @property
    def gpu_count(self) -> int:
        return len(self.gpu_bus_ids)


@dataclass(frozen=True)
class NodePlan:
    target: NodeTarget
    labels: dict[str, str]
    # A None value: the annotation must go (e.g. the DaemonSet one in host mode).
    annotations: dict[str, str | None]
    deployment: PluginDeployment | None  # None: host plugin mode, or no GPU

    @property
    def serves(self) -> str:
        """What the device-plugin label says: a DaemonSet name, `host` or `none`."""
        return self.labels[DEVICE_PLUGIN_LABEL]


WHOLE_GPUS = "whole-gpus"
_SHORTCUT = re.compile(r"^(time-slicing|mps)-(\d+)$")


def node_configs(settings: ClusterSettings, targets: Iterable[NodeTarget]) -> ClusterSettings:
    """The run's ConfigMap of configs: the --plugin-config files, and a config for every
    sharing shortcut a node chose (`time-slicing-4`: NVIDIA's example, 4 replicas). Without
    files the default is `whole-gpus` (no sharing), for the nodes that chose nothing.
    Raises UserError for a node naming a config that is neither."""
    files = list(settings.plugin_config_files)
    configs = list(files)
    for target in targets:
        name = target.plugin_config
        if name is None or any(c.name == name for c in configs):
            continue
        shortcut = _SHORTCUT.match(name)
        if shortcut is None:
            given = ", ".join(c.name for c in files) or "none"
            raise UserError(
                f"{target.host}: device plugin config {name!r} is not among the --plugin-config files ({given}).",
                "Give it with --plugin-config NAME=FILE, or use gpunode_sharing and gpunode_replicas for the host.",
            )
        configs.append(sharing_config(shortcut.group(1), int(shortcut.group(2))))
    if not configs:
        return settings
    if not files:
        configs.insert(0, named_config(WHOLE_GPUS, "version: v1\n", WHOLE_GPUS))
    return replace(settings, plugin_configs=PluginConfigs(tuple(configs), default=configs[0].name))


def expected_gpus(target: NodeTarget, settings: ClusterSettings) -> tuple[str, int]:
    """The resource and count the node's Allocatable must show under its config."""
    configs = settings.plugin_configs
    parsed = None
    if configs is not None:
        parsed = configs.get(target.plugin_config or configs.default).parsed
    expected = expected_allocatable(parsed, target.gpu_count)
    # A partly shared node shows two resources; the shared one is the one to wait for.
    name = next((n for n in expected if n != RESOURCE), RESOURCE)
    return name, expected[name]


def plan_node(target: NodeTarget, settings: ClusterSettings) -> NodePlan:
    """Labels, annotations and DaemonSet for one node. Raises UserError for bad settings."""
    deployment: PluginDeployment | None = None
    if target.driver_version is None:
        raise ValueError(f"{target.host}: no driver version to plan the cluster with")
    if target.gpu_count == 0:
        serves = NO_PLUGIN
    elif target.plugin_mode == HOST_PLUGIN:
        serves = HOST_PLUGIN
    else:
        deployment = PluginDeployment(
            driver_version=target.driver_version,
            lib_path=target.nvml_library if settings.mode == "mount" else None,
            plugin=settings.plugin,
            mode=settings.mode,
            image=settings.image,
            namespace=settings.namespace,
            kubelet_root=target.kubelet_root,
            runtime_class=settings.runtime_handler,
            tolerations=settings.tolerations,
            per_node_variant=True,
            plugin_configs=settings.plugin_configs,
            metrics_addr=settings.metrics_addr,
            node_labels=settings.node_labels,
        )
        serves = deployment.daemonset_name
    labels = {DRIVER_VERSION_LABEL: target.driver_version, DEVICE_PLUGIN_LABEL: serves}
    if target.plugin_config is not None:
        labels[CONFIG_LABEL] = target.plugin_config
    annotations: dict[str, str | None] = {
        GPU_COUNT_ANNOTATION: str(target.gpu_count),
        GPUS_ANNOTATION: ",".join(normalize_bus_id(b) for b in target.gpu_bus_ids),
        NVML_LIBRARY_ANNOTATION: target.nvml_library,
        PLUGIN_DAEMONSET_ANNOTATION: f"{settings.namespace}/{serves}" if deployment else None,
    }
    return NodePlan(target, labels, annotations, deployment)


def metadata_patch(
    node: Mapping[str, Any], labels: Mapping[str, str], annotations: Mapping[str, str | None]
) -> dict[str, Any] | None:
    """The JSON merge patch that gives `node` these labels and annotations; None if it has them."""
    meta = node.get("metadata") or {}
    patch: dict[str, dict[str, str | None]] = {}
    for field, wanted in (("labels", labels), ("annotations", annotations)):
        current = meta.get(field) or {}
        changes = {k: v for k, v in wanted.items() if current.get(k) != v and not (v is None and k not in current)}
        if changes:
            patch[field] = changes
    return {"metadata": patch} if patch else None


def selector_matches(selector: Mapping[str, Any], labels: Mapping[str, Any]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def daemonset_node_selector(daemonset: Mapping[str, Any]) -> dict[str, Any]:
    spec = ((daemonset.get("spec") or {}).get("template") or {}).get("spec") or {}
    return dict(spec.get("nodeSelector") or {})


def unused_daemonsets(
    daemonsets: Iterable[Mapping[str, Any]], nodes: Iterable[Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    """gpunode's per-version DaemonSets that select no node any more (to be deleted).

    Only DaemonSets labelled as gpunode's and with a driver version label qualify, and only
    when their node selector names that driver version: one that selects nothing specific
    would select every node, and is never gpunode's to remove.
    """
    node_labels = [dict((n.get("metadata") or {}).get("labels") or {}) for n in nodes]
    unused = []
    for ds in daemonsets:
        labels = (ds.get("metadata") or {}).get("labels") or {}
        if any(labels.get(k) != v for k, v in MANAGED_BY_LABELS.items()) or DRIVER_VERSION_LABEL not in labels:
            continue
        selector = daemonset_node_selector(ds)
        if DRIVER_VERSION_LABEL not in selector:
            continue
        if not any(selector_matches(selector, node) for node in node_labels):
            unused.append(ds)
    return unused


def is_managed_by_gpunode(obj: Mapping[str, Any]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in MANAGED_BY_LABELS.items())


# metadata the API server keeps for itself: a change there is not a change we made.
_SERVER_METADATA = ("resourceVersion", "managedFields", "generation", "uid", "creationTimestamp", "selfLink")
# Annotations the API server or a controller writes as a consequence of our spec.
_SERVER_ANNOTATIONS = ("deprecated.daemonset.template.generation",)


def comparable(obj: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The object without status and server-kept metadata: equal before and after an apply
    exactly when the apply changed nothing that gpunode (or anyone) asked for."""
    if obj is None:
        return None
    data = copy.deepcopy(dict(obj))
    data.pop("status", None)
    meta = data.get("metadata") or {}
    for key in _SERVER_METADATA:
        meta.pop(key, None)
    annotations = meta.get("annotations") or {}
    for key in _SERVER_ANNOTATIONS:
        annotations.pop(key, None)
    return data


_BUS_ID = re.compile(
    r"^(?:(?P<domain>[0-9A-Fa-f]{1,8}):)?(?P<bus>[0-9A-Fa-f]{2}):(?P<dev>[0-9A-Fa-f]{2})\.(?P<fn>[0-7])$"
)


def normalize_bus_id(text: str) -> str:
    """`00000000:3B:00.0` (NVML) and `0000:3b:00.0` (sysfs) both become `0000:3b:00.0`."""
    found = _BUS_ID.match(text.strip())
    if not found:
        return text.strip().lower()
    domain = int(found.group("domain") or "0", 16)
    return f"{domain:04x}:{found.group('bus').lower()}:{found.group('dev').lower()}.{found.group('fn')}"


def validate_cluster_settings(settings: ClusterSettings) -> None:
    """Raise UserError for a bad plugin, mode, image or namespace before any host is touched.

    A throwaway deployment in runtime mode checks everything that does not depend on a
    node (mount mode's library file is each node's own, checked when the node is planned).
    """
    PluginDeployment(
        driver_version="1.0",
        lib_path=None,
        plugin=settings.plugin,
        mode="runtime",
        image=settings.image,
        namespace=settings.namespace,
        runtime_class=settings.runtime_handler,
        tolerations=settings.tolerations,
        metrics_addr=settings.metrics_addr,
        node_labels=settings.node_labels,
    )
