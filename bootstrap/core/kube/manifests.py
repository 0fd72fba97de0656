"""The cluster objects gpunode applies: RuntimeClass `nvidia` and a device plugin DaemonSet.

One DaemonSet per driver version, named after it and node-selected on the node label
`gpunode.io/driver-version`, so a fleet with mixed drivers gets, on every node, a plugin pod
that mounts that node's library file. Two device access modes (F1, F2, F5 in docs/failure-modes.md):

- `mount`: the host's real `libnvidia-ml.so.<version>` (never the `.so.1` symlink, F2) as a
  hostPath of type File at `/usr/local/lib/libnvidia-ml.so.1`, `LD_LIBRARY_PATH=/usr/local/lib`
  and never a whole system library directory (F3); `/dev` from the host and `privileged: true`,
  since the device cgroup refuses /dev/nvidia* to an unprivileged container (F5).
- `runtime`: `runtimeClassName: nvidia`, the NVIDIA container runtime injects the library and
  the devices; only `SYS_ADMIN` is added.

Templates live in `gpunode.templates`; every value reaches them through the `yaml` filter (a
JSON rendering, which is valid YAML), and the environment refuses to print anything that did
not pass through it, so no value is ever pasted raw into a manifest.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from typing import Any

from gpunode.bootstrap.core.kube.manifest_templates import dump_yaml, render_template
from gpunode.bootstrap.core.kube.plugin_deployment import (
    CONFIGMAP_NAME,
    CONFIGS_DIR,
    CONTAINER_KUBELET_DIR,
    CONTAINER_LIBRARY_DIR,
    CONTAINER_LIBRARY_PATH,
    CONTAINER_POD_RESOURCES_DIR,
    DAEMONSET_PREFIX,
    DEVICE_PLUGIN_LABEL,
    DNS_LABEL,
    DRIVER_VERSION_LABEL,
    IMAGE_REFERENCE,
    MANAGED_BY_LABELS,
    NFD_FEATURES_DIR,
    NODE_READER_ROLE,
    NVIDIA_PLUGIN_IMAGE,
    NVML_LIBRARY_ANNOTATION,
    SERVICE_ACCOUNT,
    PluginDeployment,
    mps_roots,
)
from gpunode.bootstrap.core.kube.taints import GPU_TOLERATION, Toleration
from gpunode.bootstrap.errors import UserError

_TEMPLATE = {"bundled": "device-plugin-bundled.yaml.j2", "nvidia": "device-plugin-nvidia.yaml.j2"}


def render_runtimeclass(handler: str = "nvidia") -> str:
    """RuntimeClass `nvidia`, whose handler is the containerd runtime's name (F6, F17)."""
    if not DNS_LABEL.match(handler):
        raise UserError(
            f"{handler!r} is not a valid RuntimeClass handler.", "Use the containerd runtime's name, e.g. nvidia."
        )
    return render_template(
        "runtimeclass.yaml.j2",
        {
            "name": "nvidia",
            "handler": handler,
            "labels": dict(MANAGED_BY_LABELS),
        },
    )


def _context(dep: PluginDeployment) -> dict[str, Any]:
    name = dep.daemonset_name
    selector = {"app.kubernetes.io/name": DAEMONSET_PREFIX[dep.plugin], "app.kubernetes.io/instance": name}
    labels = {**selector, **MANAGED_BY_LABELS, DRIVER_VERSION_LABEL: dep.driver_version}
    annotations = {NVML_LIBRARY_ANNOTATION: dep.lib_path} if dep.mode == "mount" and dep.lib_path else {}
    mig = dep.mig_strategy != "none"
    # Runtime mode needs SYS_ADMIN anyway; in mount mode privileged already holds it, and it
    # is named again when MIG is on so that the MIG requirement (F7) is visible in the spec.
    capabilities = ["SYS_ADMIN"] if dep.mode == "runtime" or mig else []
    return {
        "dep": dep,
        "name": name,
        "selector": selector,
        "labels": labels,
        "annotations": annotations,
        "node_selector": {
            DRIVER_VERSION_LABEL: dep.driver_version,
            "kubernetes.io/os": "linux",
            **({DEVICE_PLUGIN_LABEL: name} if dep.per_node_variant else {}),
        },
        "tolerations": [t.as_api() for t in (GPU_TOLERATION, *dep.tolerations)],
        "mig": mig,
        "privileged": dep.mode == "mount",
        "capabilities": capabilities,
        "kubelet_host_dir": posixpath.join(dep.kubelet_root, "device-plugins"),
        "kubelet_container_dir": CONTAINER_KUBELET_DIR,
        "library_dir": CONTAINER_LIBRARY_DIR,
        "library_path": CONTAINER_LIBRARY_PATH,
        "ignore_xids": ",".join(str(x) for x in dep.health_ignore_xids),
        **_config_context(dep),
        **_telemetry_context(dep),
    }


def _telemetry_context(dep: PluginDeployment) -> dict[str, Any]:
    addr = dep.effective_metrics_addr
    port = int(addr.rsplit(":", 1)[1]) if addr else None
    return {
        "metrics_addr": addr,
        "metrics_port": port,
        # The scrape annotations Prometheus's kubernetes-pods example job (and many charts) read.
        "pod_annotations": (
            {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}
            if port
            else {}
        ),
        "labels_node": dep.plugin == "bundled" and dep.node_labels == "node",
        "pod_resources_host_dir": posixpath.join(dep.kubelet_root, "pod-resources"),
        "pod_resources_container_dir": CONTAINER_POD_RESOURCES_DIR,
        "nfd_features_dir": NFD_FEATURES_DIR,
    }


def _config_context(dep: PluginDeployment) -> dict[str, Any]:
    configs = dep.plugin_configs
    roots = sorted(mps_roots(configs)) if configs is not None else []
    return {
        "configs": configs,
        "configs_dir": CONFIGS_DIR,
        "configmap_name": CONFIGMAP_NAME,
        "service_account": SERVICE_ACCOUNT,
        "mps_root": roots[0] if roots else None,
        # NVIDIA's plugin looks at /mps; gpunode's at the configured root itself.
        "mps_container_root": "/mps" if dep.plugin == "nvidia" else (roots[0] if roots else None),
        "mps_shm": posixpath.join(roots[0], "shm") if roots else None,
    }


def config_objects(dep: PluginDeployment) -> list[dict[str, Any]]:
    """With per-node configs: the ConfigMap of named configs, and the service account (with
    its ClusterRole and binding) that may read nodes, for the plugin's label watch."""
    if dep.plugin_configs is None:
        return []
    labels = dict(MANAGED_BY_LABELS)
    ns = dep.namespace
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": CONFIGMAP_NAME, "namespace": ns, "labels": labels},
            "data": dep.plugin_configs.data(),
        },
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": SERVICE_ACCOUNT, "namespace": ns, "labels": labels},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": NODE_READER_ROLE, "labels": labels},
            "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": f"{NODE_READER_ROLE}-{ns}", "labels": labels},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NODE_READER_ROLE},
            "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": ns}],
        },
    ]


MPS_DAEMONSET = "gpunode-mps-control-daemon"


def mps_daemon_objects(dep: PluginDeployment) -> list[dict[str, Any]]:
    """NVIDIA's MPS control daemon DaemonSet, when a config shares GPUs with MPS."""
    import yaml

    configs = dep.plugin_configs
    if configs is None or not configs.uses_mps:
        return []
    selector = {"app.kubernetes.io/name": MPS_DAEMONSET}
    context = {
        **_config_context(dep),
        "dep": dep,
        "name": MPS_DAEMONSET,
        "selector": selector,
        "labels": {**selector, **MANAGED_BY_LABELS},
        "image": dep.image if dep.plugin == "nvidia" else NVIDIA_PLUGIN_IMAGE,
        "driver_label": DRIVER_VERSION_LABEL,
        "tolerations": [t.as_api() for t in (GPU_TOLERATION, *dep.tolerations)],
    }
    return [yaml.safe_load(render_template("mps-control-daemon.yaml.j2", context))]


NODE_LABELLER_ROLE = "gpunode-device-plugin-node-labeller"


def labeller_objects(dep: PluginDeployment) -> list[dict[str, Any]]:
    """For the bundled plugin labelling its own node: the service account (unless the
    per-node config objects bring it) and the least grant that allows it: nodes get, patch.
    The plugin itself checks that it writes only its own node, only keys it owns."""
    if dep.plugin != "bundled" or dep.node_labels != "node":
        return []
    labels = dict(MANAGED_BY_LABELS)
    ns = dep.namespace
    account = (
        []
        if dep.plugin_configs is not None
        else [
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": SERVICE_ACCOUNT, "namespace": ns, "labels": labels},
            }
        ]
    )
    return [
        *account,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": NODE_LABELLER_ROLE, "labels": labels},
            "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": f"{NODE_LABELLER_ROLE}-{ns}", "labels": labels},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NODE_LABELLER_ROLE},
            "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": ns}],
        },
    ]


def render_device_plugin(dep: PluginDeployment) -> str:
    """The device plugin DaemonSet for one driver version, as one YAML document."""
    return render_template(_TEMPLATE[dep.plugin], _context(dep))


def render_manifests(dep: PluginDeployment, handler: str = "nvidia") -> str:
    """RuntimeClass, the per-node config objects if any, then the DaemonSet, as a
    multi-document YAML stream."""
    documents = [
        render_runtimeclass(handler),
        *(dump_yaml(o) for o in config_objects(dep) + labeller_objects(dep) + mps_daemon_objects(dep)),
        render_device_plugin(dep),
    ]
    return "".join(f"---\n{doc.rstrip()}\n" for doc in documents)


def manifest_objects(dep: PluginDeployment, handler: str = "nvidia") -> list[dict[str, Any]]:
    """The same objects, parsed, for the cluster layer (e.g. to apply or compare them)."""
    import yaml

    return [doc for doc in yaml.safe_load_all(render_manifests(dep, handler)) if doc is not None]


# --------------------------------------------------------------------------------------------
# The verify workload

# A small glibc image: the NVIDIA runtime injects nvidia-smi and the driver's libraries.
DEFAULT_VERIFY_IMAGE = "docker.io/library/debian:bookworm-slim"
VERIFY_POD_LABELS: Mapping[str, str] = {**MANAGED_BY_LABELS, "app.kubernetes.io/name": "gpunode-verify"}


def render_verify_pod(
    *,
    name: str,
    namespace: str,
    node: str,
    image: str = DEFAULT_VERIFY_IMAGE,
    runtime_class: str = "nvidia",
    tolerations: tuple[Toleration, ...] = (),
    resource_name: str = "nvidia.com/gpu",
) -> str:
    """The `gpunode verify --workload` pod: `nvidia-smi -L` with one GPU on `node`."""
    for what, value in (("pod name", name), ("namespace", namespace), ("RuntimeClass", runtime_class)):
        if not DNS_LABEL.match(value):
            raise UserError(f"{value!r} is not a valid {what}.", "Use lower-case letters, digits and '-'.")
    if not isinstance(image, str) or not IMAGE_REFERENCE.match(image):
        raise UserError(
            f"{image!r} is not a container image reference.",
            f"Give the image as [registry/]repository[:tag], e.g. {DEFAULT_VERIFY_IMAGE}.",
        )
    return render_template(
        "verify-pod.yaml.j2",
        {
            "name": name,
            "namespace": namespace,
            "node": node,
            "image": image,
            "runtime_class": runtime_class,
            "labels": dict(VERIFY_POD_LABELS),
            "tolerations": [t.as_api() for t in (GPU_TOLERATION, *tolerations)],
            "resource": resource_name,
        },
    )
