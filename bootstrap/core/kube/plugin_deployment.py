"""What one device plugin deployment is: `PluginDeployment` (plugin, mode, image, driver
version, settings), checked on construction so that every rendered manifest is valid, with
the names, labels and choices the manifests and the cluster steps share.

`manifests.py` turns a PluginDeployment into cluster objects.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from gpunode.bootstrap.core.kube.taints import Toleration
from gpunode.bootstrap.core.nvml.library import driver_version_of
from gpunode.bootstrap.errors import UserError

if TYPE_CHECKING:
    # Imported only to type: it brings the plugin's YAML parser, which most commands never need.
    from gpunode.bootstrap.core.kube.plugin_config import PluginConfigs


DRIVER_VERSION_LABEL = "gpunode.io/driver-version"
MANAGED_BY_LABELS: Mapping[str, str] = {"app.kubernetes.io/managed-by": "gpunode"}
NVML_LIBRARY_ANNOTATION = "gpunode.io/nvml-library"
# The node label naming what serves the node's GPUs: the device plugin DaemonSet's name (so
# that DaemonSet, and no other of gpunode's, selects the node), `host` for the plugin as a
# service on the node, `none` on a node without GPUs. See PluginDeployment.per_node_variant.
DEVICE_PLUGIN_LABEL = "gpunode.io/device-plugin"

# Where the library is mounted inside the plugin container, and the directory put on
# LD_LIBRARY_PATH: a directory of its own, so nothing of the image's is shadowed (F3).
CONTAINER_LIBRARY_DIR = "/usr/local/lib"
CONTAINER_LIBRARY_PATH = "/usr/local/lib/libnvidia-ml.so.1"
# The kubelet's device-plugins directory is mounted here whatever the host's kubelet root:
# NVIDIA's plugin only looks here, and the bundled plugin is told so by GPUNODE_KUBELET_DIR.
CONTAINER_KUBELET_DIR = "/var/lib/kubelet/device-plugins"

NVIDIA_PLUGIN_IMAGE = "nvcr.io/nvidia/k8s-device-plugin:v0.20.0"
BUNDLED_IMAGE_REPOSITORY = "ghcr.io/gpunode/gpunode"

Plugin = Literal["bundled", "nvidia"]
Mode = Literal["mount", "runtime"]
MigStrategy = Literal["none", "single", "mixed"]

PLUGINS: tuple[str, ...] = ("bundled", "nvidia")
MODES: tuple[str, ...] = ("mount", "runtime")
MIG_STRATEGIES: tuple[str, ...] = ("none", "single", "mixed")
DEVICE_ID_STRATEGIES: tuple[str, ...] = ("uuid", "index")
DEVICE_LIST_STRATEGIES: tuple[str, ...] = ("envvar", "cdi")

# Per-node config (plugin_config.py): one ConfigMap of named configs per namespace, mounted
# by every device plugin DaemonSet there, and the account that may read the node's label.
CONFIGMAP_NAME = "gpunode-device-plugin-configs"
CONFIGS_DIR = "/available-configs"  # where NVIDIA's chart mounts them, for both plugins
SERVICE_ACCOUNT = "gpunode-device-plugin"
NODE_READER_ROLE = "gpunode-device-plugin-node-reader"

# The bundled plugin's /metrics, on the pod's IP: dcgm-exporter's port, so scrape configs
# written for it find the same series here.
DEFAULT_METRICS_ADDR = ":9400"
NODE_LABEL_MODES: tuple[str, ...] = ("node", "nfd", "off")
NFD_FEATURES_DIR = "/etc/kubernetes/node-feature-discovery/features.d"
CONTAINER_POD_RESOURCES_DIR = "/var/lib/kubelet/pod-resources"

DAEMONSET_PREFIX = {"bundled": "gpunode-device-plugin", "nvidia": "gpunode-nvidia-device-plugin"}

_DRIVER_VERSION = re.compile(r"^\d{1,4}(?:\.\d{1,4}){1,3}$")
DNS_LABEL = re.compile(r"^[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*$")
_RESOURCE_NAME = re.compile(r"^(?P<domain>[^/]+)/(?P<name>[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)$")
_METRICS_ADDR = re.compile(r"^(?:[A-Za-z0-9.-]*|\[[0-9A-Fa-f:.]+\]):\d{1,5}$")

# An image reference as the container runtimes parse it: [registry[:port]/]path[:tag][@digest].
# The first component is a registry only when it looks like a host (a dot, a port, or
# localhost); otherwise it is part of the (lower-case) repository path.
_IMAGE_HOST_PART = r"[A-Za-z0-9](?:[-A-Za-z0-9]*[A-Za-z0-9])?"
_IMAGE_DOMAIN = (
    rf"(?:(?:localhost|{_IMAGE_HOST_PART}(?:\.{_IMAGE_HOST_PART})+)(?::\d+)?"
    rf"|{_IMAGE_HOST_PART}:\d+)"
)
_IMAGE_PATH = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_REFERENCE = re.compile(
    rf"^(?:{_IMAGE_DOMAIN}/)?{_IMAGE_PATH}(?:/{_IMAGE_PATH})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$"
)


def bundled_image() -> str:
    """The bundled plugin's image: gpunode's own, tagged with this package's version."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        tag = package_version("gpunode")
    except PackageNotFoundError:  # running from a checkout that was never installed
        tag = "latest"
    return f"{BUNDLED_IMAGE_REPOSITORY}:{tag}"


def _check_driver_version(value: str) -> None:
    if not isinstance(value, str) or not _DRIVER_VERSION.match(value):
        raise UserError(
            f"{value!r} is not an NVIDIA driver version.",
            "Give it as it appears in the library's file name, e.g. 535.261.03 for libnvidia-ml.so.535.261.03.",
        )


def daemonset_name(driver_version: str, plugin: str, variant: str | None = None) -> str:
    """`gpunode-device-plugin-535-261-03`: a DNS-1123 name per driver version and plugin;
    with a variant (see `plugin_variant`), `gpunode-device-plugin-535-261-03-<variant>`."""
    _check_driver_version(driver_version)
    if plugin not in DAEMONSET_PREFIX:
        raise UserError(f"Unknown plugin {plugin!r}.", f"Use one of: {', '.join(PLUGINS)}.")
    name = f"{DAEMONSET_PREFIX[plugin]}-{driver_version.replace('.', '-')}"
    if variant is not None:
        if not re.fullmatch(r"[0-9a-f]{1,16}", variant):
            raise ValueError(f"variant {variant!r} is not a short hex digest")
        name = f"{name}-{variant}"
    # The name is also a label value (app.kubernetes.io/instance, gpunode.io/device-plugin).
    assert len(name) <= 63, name
    return name


def _check_choice(what: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"Unknown {what} {value!r}.", f"Use one of: {', '.join(choices)}.")


def _check_host_path(what: str, value: str, flag: str) -> None:
    if not value.startswith("/"):
        raise UserError(
            f"The {what} {value!r} is not an absolute path.", f"Give {flag} as an absolute path on the node."
        )
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise UserError(
            f"The {what} {value!r} contains control characters.", f"Give {flag} as a plain path on the node."
        )
    if ".." in value.split("/"):
        # No suggestion: dropping `x/..` by hand is wrong when x is a symlink on the node.
        raise UserError(
            f"The {what} {value!r} contains '..', which Kubernetes refuses in a hostPath.",
            f"Give {flag} as the node resolves it, without '..': `readlink -f PATH` on the node prints it.",
        )
    if posixpath.normpath(value) != value or value.startswith("//"):
        raise UserError(
            f"The {what} {value!r} is not in normal form ('.', '//' or a trailing '/' make two names for one path).",
            f"Give {flag} as {posixpath.normpath(value)!r}.",
        )


def library_file_version(lib_path: str) -> str:
    """The driver version in a library file's name, after checking it is one to mount.

    Raises UserError for a relative or odd path, for the `.so.1` symlink (F2) and for
    anything that is not a `libnvidia-ml.so.<version>` file, above all a directory (F3).
    """
    _check_host_path("NVML library path", lib_path, "--lib-path")
    found = driver_version_of(lib_path)
    if found is not None and _DRIVER_VERSION.match(found):
        return found
    if posixpath.basename(lib_path).startswith("libnvidia-ml.so"):
        problem = (
            f"{lib_path} is the symlink, not the library file: a hostPath mount of a "
            "symlink mounts nothing useful (F2)."
        )
    else:
        problem = (
            f"{lib_path} is not an NVML library file (libnvidia-ml.so.<version>); "
            "mounting anything else, above all a whole library directory, breaks the "
            "container (F3)."
        )
    raise UserError(
        problem,
        "Give the real file the symlink chain ends at, e.g. "
        "/usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.535.261.03 "
        "(`readlink -f /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1` on the node).",
    )


@dataclass(frozen=True)
class PluginDeployment:
    """Everything that decides a device plugin DaemonSet; validated on construction."""

    driver_version: str
    lib_path: str | None  # the host's real library file; required in mount mode
    plugin: Plugin = "bundled"
    mode: Mode = "mount"
    image: str | None = None  # None: the plugin's default image (set in __post_init__)
    namespace: str = "kube-system"
    kubelet_root: str = "/var/lib/kubelet"
    mig_strategy: MigStrategy = "none"
    fail_on_init_error: bool = True  # F11: an NVML failure must crash the pod, not idle
    resource_name: str = "nvidia.com/gpu"
    priority_class: str = "system-node-critical"
    runtime_class: str = "nvidia"  # runtimeClassName in runtime mode
    device_id_strategy: str = "uuid"
    device_list_strategy: str = "envvar"
    pass_device_specs: bool = False
    health_checks: bool = True
    health_ignore_xids: tuple[int, ...] = field(default=())
    health_recovery_seconds: int | None = None  # bundled plugin only
    # Bundled plugin only: where it serves /metrics (GPU telemetry, its counters); None: the
    # default (DEFAULT_METRICS_ADDR), "off": no metrics.
    metrics_addr: str | None = None
    # Bundled plugin only: GFD's node labels by "node" (a patch of its own node: RBAC nodes
    # get, patch), "nfd" (NFD's feature file on the host) or "off".
    node_labels: str = "node"
    image_pull_policy: str = "IfNotPresent"
    # Tolerated on top of nvidia.com/gpu (F15): a site's own taints on its GPU nodes.
    tolerations: tuple[Toleration, ...] = ()
    # One DaemonSet per driver version *and* host layout, for `gpunode bootstrap`: nodes on
    # one driver version can keep the library (Debian vs Ubuntu, x86_64 vs aarch64) or the
    # kubelet root in different places, and a hostPath is one path for every node a
    # DaemonSet runs on. The name then carries a digest of what differs (`plugin_variant`)
    # and the DaemonSet selects only nodes labelled `gpunode.io/device-plugin=<its name>`.
    per_node_variant: bool = False
    # NVIDIA's config file v1, as named configs chosen per node by nvidia.com/device-plugin.config.
    plugin_configs: PluginConfigs | None = None

    def __post_init__(self) -> None:
        _check_choice("plugin", self.plugin, PLUGINS)
        _check_choice("mode", self.mode, MODES)
        _check_choice("MIG strategy", self.mig_strategy, MIG_STRATEGIES)
        _check_choice("device ID strategy", self.device_id_strategy, DEVICE_ID_STRATEGIES)
        _check_choice("device list strategy", self.device_list_strategy, DEVICE_LIST_STRATEGIES)
        _check_choice("image pull policy", self.image_pull_policy, ("Always", "IfNotPresent", "Never"))
        self._check_library()
        _check_driver_version(self.driver_version)
        _check_host_path("kubelet root directory", self.kubelet_root, "--kubelet-root")
        if self.image is None:
            object.__setattr__(self, "image", bundled_image() if self.plugin == "bundled" else NVIDIA_PLUGIN_IMAGE)
        elif not isinstance(self.image, str) or not IMAGE_REFERENCE.match(self.image):
            raise UserError(
                f"{self.image!r} is not a container image reference.",
                f"Give --image as [registry[:port]/]repository[:tag][@sha256:digest], e.g. {NVIDIA_PLUGIN_IMAGE}.",
            )
        if not DNS_LABEL.match(self.namespace):
            raise UserError(
                f"{self.namespace!r} is not a valid namespace name.",
                "Use lower-case letters, digits and '-', at most 63 characters, e.g. kube-system.",
            )
        if len(self.priority_class) > 253 or not _DNS_SUBDOMAIN.match(self.priority_class):
            raise UserError(
                f"{self.priority_class!r} is not a valid priority class name.", "Use e.g. system-node-critical."
            )
        if not DNS_LABEL.match(self.runtime_class):
            raise UserError(
                f"{self.runtime_class!r} is not a valid RuntimeClass name.",
                "Use the RuntimeClass gpunode creates: nvidia.",
            )
        self._check_resource_name()
        self._check_health_and_metrics()
        if any(not isinstance(t, Toleration) for t in self.tolerations):
            raise TypeError("tolerations must be Toleration values")
        if self.plugin_configs is not None and len(mps_roots(self.plugin_configs)) > 1:
            raise UserError(
                f"The device plugin configs name different MPS roots ({', '.join(sorted(mps_roots(self.plugin_configs)))}).",
                "Give every MPS config the same flags.mpsRoot: the MPS control daemon has one.",
            )

    @property
    def daemonset_name(self) -> str:
        return daemonset_name(self.driver_version, self.plugin, plugin_variant(self) if self.per_node_variant else None)

    def _check_library(self) -> None:
        if self.lib_path is None:
            if self.mode == "mount":
                raise UserError(
                    "Mount mode needs the host's real NVML library file, and none was given.",
                    "Pass --lib-path with the file libnvidia-ml.so.1 resolves to on the node "
                    "(`readlink -f /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1` there; "
                    "`gpunode bootstrap` finds it itself), or use --mode runtime.",
                )
            return
        found = library_file_version(self.lib_path)
        if found != self.driver_version:
            raise UserError(
                f"The library {self.lib_path} is driver {found}, but the driver version given "
                f"is {self.driver_version}.",
                "Leave --driver-version out (it is read from the library's file name) or make them agree.",
            )

    def _check_resource_name(self) -> None:
        found = _RESOURCE_NAME.match(self.resource_name)
        if (
            not found
            or not _DNS_SUBDOMAIN.match(found.group("domain"))
            or found.group("domain").endswith("kubernetes.io")
        ):
            raise UserError(
                f"{self.resource_name!r} is not a valid extended resource name.",
                "Use <domain>/<name> outside kubernetes.io, e.g. nvidia.com/gpu.",
            )
        if self.plugin == "nvidia" and self.resource_name != "nvidia.com/gpu":
            raise UserError(
                f"NVIDIA's device plugin names its resource itself; it cannot serve {self.resource_name!r}.",
                "Use --plugin bundled for another resource name, or keep nvidia.com/gpu.",
            )

    def _check_health_and_metrics(self) -> None:
        if any(not isinstance(x, int) or isinstance(x, bool) or x < 0 for x in self.health_ignore_xids):
            raise UserError(
                f"XIDs to ignore must be non-negative integers, not {self.health_ignore_xids!r}.",
                "Give them as numbers, e.g. 13,31,43.",
            )
        if self.health_recovery_seconds is not None and (
            isinstance(self.health_recovery_seconds, bool)
            or not isinstance(self.health_recovery_seconds, int)
            or self.health_recovery_seconds <= 0
        ):
            raise UserError(
                f"The health recovery time {self.health_recovery_seconds!r} is not a positive number of seconds.",
                "Give a whole number of seconds, e.g. 300.",
            )
        _check_choice("node labels mode", self.node_labels, NODE_LABEL_MODES)
        if self.metrics_addr not in (None, "off") and not _METRICS_ADDR.match(str(self.metrics_addr)):
            raise UserError(f"{self.metrics_addr!r} is not a listen address.", "Give host:port or :port, e.g. :9400.")
        if self.plugin == "nvidia":
            if self.device_list_strategy != "envvar":
                raise UserError(
                    "gpunode renders NVIDIA's plugin with the envvar device list strategy only.",
                    "Use --plugin bundled for CDI, or NVIDIA's Helm chart for its CDI modes.",
                )
            if self.health_recovery_seconds is not None or self.metrics_addr not in (None, "off"):
                raise UserError(
                    "NVIDIA's device plugin has no health recovery time and no metrics address.",
                    "Leave them out, or use --plugin bundled.",
                )

    @property
    def effective_metrics_addr(self) -> str | None:
        """The bundled plugin's metrics address (None: none served)."""
        if self.plugin != "bundled" or self.metrics_addr == "off":
            return None
        return self.metrics_addr or DEFAULT_METRICS_ADDR


def mps_roots(configs: PluginConfigs) -> set[str]:
    return {str(c.parsed.settings["mps_root"]) for c in configs.configs if c.parsed.sharing.strategy == "mps"}


def plugin_variant(dep: PluginDeployment) -> str:
    """A digest of what the DaemonSet mounts from the host and where it lives: 10 hex digits.

    Two nodes get the same device plugin DaemonSet exactly when driver version, plugin and
    this digest agree. The image and the plugin settings are not in it: changing them
    updates the DaemonSet in place (a rolling update) instead of making a new one.
    """
    layout = {
        "plugin": dep.plugin,
        "mode": dep.mode,
        "namespace": dep.namespace,
        "library": dep.lib_path if dep.mode == "mount" else None,
        "kubelet_root": dep.kubelet_root,
    }
    text = json.dumps(layout, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:10]
