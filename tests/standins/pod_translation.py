"""A pod template's container as `ctr run` arguments: what the kubelet and containerd's CRI
would give the container, taken from the manifest itself, so a test that runs the result
proves the manifest and not a hand-copied command line.

Translated (anything else in the container or pod spec is refused, naming the field, so
a manifest that grows a feature this does not know fails loudly instead of being run
without it):
- image; command and args (command replaces the image's ENTRYPOINT, args its CMD);
- env: `value`, `valueFrom.fieldRef` (spec.nodeName, metadata.name/namespace),
  `valueFrom.configMapKeyRef` (from the ConfigMaps given);
- volumeMounts of hostPath (the kubelet's type checks: File, Directory, DirectoryOrCreate,
  FileOrCreate, Socket, CharDevice), configMap (files from the ConfigMaps given, `items`
  honoured, read-only) and emptyDir volumes; readOnly, subPath;
- securityContext: privileged, capabilities.add, readOnlyRootFilesystem (drop and a
  non-root runAsUser are refused: Debian 12's ctr cannot give them);
- hostNetwork; ports (reachable from the host only with hostNetwork; a hostPort without
  it is refused: there is no CNI here);
- resources.limits.memory (the container's memory cgroup limit).
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Fields that change nothing about how the container runs on one node, for this purpose.
_IGNORED_CONTAINER_FIELDS = {
    "name",
    "imagePullPolicy",
    "terminationMessagePath",
    "terminationMessagePolicy",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
}
_IGNORED_POD_FIELDS = {
    "priorityClassName",
    "nodeSelector",
    "tolerations",
    "automountServiceAccountToken",
    "serviceAccountName",
    "affinity",
    "terminationGracePeriodSeconds",
    "volumes",
    "containers",
    "hostNetwork",
}
_MEMORY_UNITS = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "K": 10**3, "M": 10**6, "G": 10**9}


class TranslationError(ValueError):
    """The manifest asks for something that cannot be given here, or is wrong (FailedMount)."""


@dataclass
class Translated:
    image: str
    flags: list[str]
    argv: list[str]  # empty: the image's ENTRYPOINT and CMD
    env: dict[str, str]
    mounts: list[tuple[str, str, bool]]  # (host source, container path, read-only)
    ports: list[tuple[int, str]] = field(default_factory=list)  # (containerPort, protocol), host-reachable
    memory_limit: int | None = None


def memory_bytes(quantity: str) -> int:
    for suffix, factor in _MEMORY_UNITS.items():
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * factor)
    return int(quantity)


def _check_host_path(path: str, kind: str) -> None:
    """The kubelet's hostPath type checks; a failure is the pod's FailedMount."""
    target = Path(path)
    if kind == "DirectoryOrCreate":
        target.mkdir(mode=0o755, parents=True, exist_ok=True)
        return
    if kind == "FileOrCreate":
        target.touch(exist_ok=True)
        return
    if kind == "":
        return
    try:
        mode = target.stat().st_mode  # follows symlinks, as the kubelet's check does
    except FileNotFoundError as exc:
        raise TranslationError(f"FailedMount: hostPath {path} does not exist (type {kind})") from exc
    wanted = {
        "File": stat.S_ISREG,
        "Directory": stat.S_ISDIR,
        "Socket": stat.S_ISSOCK,
        "CharDevice": stat.S_ISCHR,
        "BlockDevice": stat.S_ISBLK,
    }
    if kind not in wanted:
        raise TranslationError(f"hostPath type {kind!r} is not known")
    if not wanted[kind](mode):
        raise TranslationError(f"FailedMount: hostPath {path} is not a {kind}")


def _volume_source(volume: dict[str, Any], config_maps: dict[str, dict[str, str]], scratch: Path) -> tuple[str, bool]:
    """(host path to bind, forced read-only) for one pod volume."""
    name = volume["name"]
    if "hostPath" in volume:
        source = volume["hostPath"]
        _check_host_path(source["path"], source.get("type", ""))
        return source["path"], False
    if "configMap" in volume:
        ref = volume["configMap"]
        data = config_maps.get(ref["name"])
        if data is None:
            if ref.get("optional"):
                data = {}
            else:
                raise TranslationError(f"FailedMount: configmap {ref['name']!r} not found (volume {name})")
        directory = scratch / f"configmap-{name}"
        directory.mkdir(parents=True, exist_ok=True)
        items = ref.get("items") or [{"key": key, "path": key} for key in data]
        for item in items:
            if item["key"] not in data:
                raise TranslationError(f"FailedMount: configmap {ref['name']!r} has no key {item['key']!r}")
            target = directory / item["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(data[item["key"]])
            target.chmod(item.get("mode", ref.get("defaultMode", 0o644)))
        return str(directory), True
    if "emptyDir" in volume:
        directory = scratch / f"emptydir-{name}"
        directory.mkdir(parents=True, exist_ok=True)
        return str(directory), False
    raise TranslationError(f"volume {name}: only hostPath, configMap and emptyDir volumes are translated")


def _env(container: dict[str, Any], pod: dict[str, str], config_maps: dict[str, dict[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
            continue
        source = item.get("valueFrom", {})
        if "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            if path not in pod:
                raise TranslationError(f"env {item['name']}: fieldRef {path} is not translated")
            env[item["name"]] = pod[path]
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            env[item["name"]] = config_maps[ref["name"]][ref["key"]]
        else:
            env[item["name"]] = ""
    if container.get("envFrom"):
        raise TranslationError("envFrom is not translated")
    return env


def translate(
    template_spec: dict[str, Any],
    scratch: Path,
    config_maps: dict[str, dict[str, str]] | None = None,
    node_name: str = "gpu-node-1",
    pod_name: str = "gpunode-device-plugin-test",
    namespace: str = "kube-system",
) -> Translated:
    """The one container of a pod template spec (a DaemonSet's .spec.template.spec)."""
    config_maps = config_maps or {}
    unknown = set(template_spec) - _IGNORED_POD_FIELDS
    if unknown:
        raise TranslationError(f"pod spec fields not translated: {sorted(unknown)}")
    (container,) = template_spec["containers"]
    handled = {"image", "command", "args", "env", "volumeMounts", "securityContext", "resources", "ports", "workingDir"}
    unknown = set(container) - handled - _IGNORED_CONTAINER_FIELDS
    if unknown:
        raise TranslationError(f"container fields not translated: {sorted(unknown)}")
    pod = {"spec.nodeName": node_name, "metadata.name": pod_name, "metadata.namespace": namespace}
    flags: list[str] = []
    host_network = bool(template_spec.get("hostNetwork"))
    if host_network:
        flags.append("--net-host")
    env = _env(container, pod, config_maps)
    for name, value in env.items():
        flags += ["--env", f"{name}={value}"]

    volumes = {v["name"]: v for v in template_spec.get("volumes", [])}
    mounts: list[tuple[str, str, bool]] = []
    for mount in container.get("volumeMounts", []):
        if mount["name"] not in volumes:
            raise TranslationError(f"volumeMount {mount['name']} has no volume")
        source, forced_ro = _volume_source(volumes[mount["name"]], config_maps, scratch)
        if mount.get("subPath"):
            source = str(Path(source) / mount["subPath"])
        read_only = forced_ro or bool(mount.get("readOnly"))
        mounts.append((source, mount["mountPath"], read_only))
        options = "rbind:ro" if read_only else "rbind:rw"
        flags += ["--mount", f"type=bind,src={source},dst={mount['mountPath']},options={options}"]

    security = container.get("securityContext", {})
    if security.get("privileged"):
        flags.append("--privileged")
    for cap in security.get("capabilities", {}).get("add", []):
        flags += ["--cap-add", cap if cap.startswith("CAP_") else f"CAP_{cap}"]
    # Debian 12's ctr has no --cap-drop or --user: refuse rather than run with more.
    if security.get("capabilities", {}).get("drop"):
        raise TranslationError("capabilities.drop is not translated (ctr 1.6 has no --cap-drop)")
    if security.get("runAsUser", 0) != 0 or security.get("runAsGroup", 0) != 0:
        raise TranslationError("runAsUser/runAsGroup other than 0 are not translated (ctr 1.6 has no --user)")
    if security.get("readOnlyRootFilesystem"):
        flags.append("--read-only")
    if container.get("workingDir"):
        flags += ["--cwd", container["workingDir"]]

    ports = []
    for port in container.get("ports", []):
        if port.get("hostPort") and not host_network:
            raise TranslationError("a hostPort without hostNetwork needs CNI's portmap, which is not here")
        if host_network:
            ports.append((int(port["containerPort"]), port.get("protocol", "TCP")))

    memory_limit = None
    limit = container.get("resources", {}).get("limits", {}).get("memory")
    if limit:
        memory_limit = memory_bytes(str(limit))
        flags += ["--memory-limit", str(memory_limit)]

    argv = [*container.get("command", [])]
    if container.get("args"):
        if not argv:
            raise TranslationError("args without command would need the image's ENTRYPOINT; give command too")
        argv += container["args"]
    return Translated(container["image"], flags, argv, env, mounts, ports, memory_limit)
