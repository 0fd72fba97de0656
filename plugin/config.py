"""The plugin's settings, validated once at start (flags and GPUNODE_* variables)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gpunode.plugin.sharing import NO_SHARING, ResourcePattern, Sharing
from gpunode.plugin.xids import with_treatment

MigStrategy = Literal["none", "single", "mixed"]
DeviceIdStrategy = Literal["uuid", "index"]
DeviceListStrategy = Literal["envvar", "cdi"]
NodeLabelsMode = Literal["auto", "nfd", "node", "off"]
AllocationPolicy = Literal["distributed", "packed"]

DEFAULT_KUBELET_DIR = Path("/var/lib/kubelet/device-plugins")
DEFAULT_RESOURCE_NAME = "nvidia.com/gpu"
# From the XID table (plugin/xids.py, after NVIDIA's XID catalogue): application faults are
# ignored (NVIDIA's device plugin ignores the same set); XIDs that need a GPU reset or a
# reboot are fatal: the device stays Unhealthy until the plugin restarts, whatever the
# recovery period. Everything else (94, a contained ECC error, among them) is Unhealthy for
# the recovery period only.
DEFAULT_IGNORED_XIDS = with_treatment("ignored")
DEFAULT_FATAL_XIDS = with_treatment("fatal")
DEFAULT_RECOVERY_SECONDS = 60.0

# A unix socket path must fit sockaddr_un.sun_path (108 bytes with the trailing NUL).
MAX_SOCKET_PATH = 107

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_RESOURCE_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


class ConfigError(ValueError):
    """A setting that cannot work; the message names the setting, the problem and the fix."""


@dataclass(frozen=True)
class PluginConfig:
    kubelet_dir: Path = DEFAULT_KUBELET_DIR
    resource_name: str = DEFAULT_RESOURCE_NAME
    mig_strategy: MigStrategy = "none"
    device_id_strategy: DeviceIdStrategy = "uuid"
    device_list_strategy: DeviceListStrategy = "envvar"
    pass_device_specs: bool = False
    fail_on_init_error: bool = True
    health_checks: bool = True
    health_ignore_xids: frozenset[int] = DEFAULT_IGNORED_XIDS
    health_fatal_xids: frozenset[int] = DEFAULT_FATAL_XIDS
    health_recovery_seconds: float = DEFAULT_RECOVERY_SECONDS
    metrics_addr: tuple[str, int] | None = None
    dev_root: Path = field(default=Path("/"))
    # From NVIDIA's config file (gpunode.plugin.nvidia_config); the defaults are NVIDIA's.
    driver_root: Path = field(default=Path("/"))
    mps_root: Path | None = None
    gdrcopy_enabled: bool = False
    gds_enabled: bool = False
    mofed_enabled: bool = False
    allocation_policy: AllocationPolicy = "distributed"  # how replicas are spread over GPUs
    gpu_resources: tuple[ResourcePattern, ...] = ()  # tried in order before `* -> resource_name`
    mig_resources: tuple[ResourcePattern, ...] = ()
    sharing: Sharing = NO_SHARING
    config_source: str | None = None  # the config file (or named config) these came from
    # The Node this plugin runs on (the DaemonSet passes spec.nodeName); the host name when empty.
    node_name: str = ""
    # The kubelet's PodResources socket, for pod attribution of the telemetry; None: off.
    # Default (see pod_resources_default): <kubelet root>/pod-resources/kubelet.sock.
    pod_resources_socket: Path | None = None
    # GFD's node labels: "auto" (NFD's feature file when NFD runs, else patch the own Node),
    # "nfd", "node" or "off"; re-applied every node_labels_interval seconds.
    node_labels: NodeLabelsMode = "auto"
    node_labels_interval: float = 60.0
    nfd_features_dir: Path = Path("/etc/kubernetes/node-feature-discovery/features.d")
    machine_type_file: Path = Path("/sys/class/dmi/id/product_name")

    @property
    def kubelet_socket(self) -> Path:
        return self.kubelet_dir / "kubelet.sock"

    @property
    def resource_domain(self) -> str:
        return self.resource_name.split("/", 1)[0]


def pod_resources_default(kubelet_dir: Path) -> Path:
    """The kubelet serves PodResources next to its device-plugins directory."""
    return kubelet_dir.parent / "pod-resources" / "kubelet.sock"


def validate_resource_name(name: str) -> str:
    """An extended resource name as the kubelet accepts it: `<domain>/<name>`."""
    domain, slash, local = name.partition("/")
    if not slash or not _DNS_SUBDOMAIN.match(domain) or len(domain) > 253:
        raise ConfigError(f"resource name {name!r} needs a DNS domain prefix, e.g. nvidia.com/gpu")
    if domain == "kubernetes.io" or domain.endswith(".kubernetes.io"):
        raise ConfigError(
            f"resource name {name!r} uses the reserved kubernetes.io domain; use your own, e.g. nvidia.com/gpu"
        )
    if not _RESOURCE_NAME.match(local) or len(local) > 63:
        raise ConfigError(
            f"resource name {name!r}: the part after '/' must be 1-63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )
    return name


def parse_xid_list(text: str) -> frozenset[int]:
    """ "13, 31,43" -> {13, 31, 43}; the empty string -> no XIDs."""
    xids: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit():
            raise ConfigError(f"{part!r} is not an XID number; give a comma-separated list such as 13,31,43")
        xids.add(int(part))
    return frozenset(xids)


def parse_metrics_addr(text: str) -> tuple[str, int] | None:
    """ "host:port", ":port" (all addresses) or "[::1]:port"; "" or "off" -> None."""
    text = text.strip()
    if text in ("", "off", "none"):
        return None
    host, colon, port = text.rpartition(":")
    if not colon or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"metrics address {text!r} must be host:port, e.g. 0.0.0.0:9400 or 127.0.0.1:9400")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def socket_name(resource_name: str) -> str:
    """The plugin's socket file for one resource: gpunode-nvidia.com-gpu.sock."""
    return "gpunode-" + resource_name.replace("/", "-") + ".sock"


def check_socket_paths(kubelet_dir: Path, resource_names: list[str]) -> None:
    for name in ["kubelet.sock", *(socket_name(r) for r in resource_names)]:
        path = kubelet_dir / name
        if len(str(path).encode()) > MAX_SOCKET_PATH:
            raise ConfigError(
                f"socket path {path} is longer than the {MAX_SOCKET_PATH} bytes a unix socket allows; "
                "use a shorter --kubelet-dir"
            )
