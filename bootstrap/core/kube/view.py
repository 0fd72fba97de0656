"""Reading Kubernetes objects (as `kubectl get -o json` prints them) the way the scheduler,
the DaemonSet controller and the kubelet read them. Pure functions over plain dicts.

`gpunode doctor` judges nodes it never saw, so nothing here assumes gpunode's own manifests:
a device plugin DaemonSet is recognised by what every device plugin must do (mount the
kubelet's device-plugins directory), whoever deployed it.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

JSON = dict[str, Any]

GPU_RESOURCE = "nvidia.com/gpu"
# Labels that say "this node has NVIDIA GPUs", by who sets them: gpunode, NVIDIA's GPU
# feature discovery (Helm chart and GPU Operator), Node Feature Discovery (PCI vendor 10de).
GPU_NODE_LABELS: tuple[tuple[str, str | None], ...] = (
    ("gpunode.io/driver-version", None),
    ("nvidia.com/gpu.present", "true"),
    ("nvidia.com/gpu.count", None),
    ("feature.node.kubernetes.io/pci-10de.present", "true"),
)
GPU_OPERATOR_PLUGIN_LABEL = ("app", "nvidia-device-plugin-daemonset")


def dig(obj: Any, *path: str | int) -> Any:
    """obj[path...] or None, through dicts and lists."""
    for key in path:
        if isinstance(key, int):
            obj = obj[key] if isinstance(obj, list) and -len(obj) <= key < len(obj) else None
        else:
            obj = obj.get(key) if isinstance(obj, dict) else None
        if obj is None:
            return None
    return obj


def name_of(obj: JSON) -> str:
    return str(dig(obj, "metadata", "name") or "")


def namespace_of(obj: JSON) -> str:
    return str(dig(obj, "metadata", "namespace") or "")


def ref(obj: JSON) -> str:
    """`namespace/name`, or `name` for cluster-scoped objects."""
    ns = namespace_of(obj)
    return f"{ns}/{name_of(obj)}" if ns else name_of(obj)


def labels_of(obj: JSON) -> dict[str, str]:
    labels = dig(obj, "metadata", "labels")
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}


def parse_time(text: Any) -> datetime | None:
    """An RFC 3339 timestamp (`2025-01-01T00:00:00Z`, with or without fractions)."""
    if not isinstance(text, str) or not text:
        return None
    cleaned = re.sub(r"\.\d+", "", text.strip()).replace("Z", "+00:00")
    try:
        value = datetime.fromisoformat(cleaned)
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


# --- nodes ---------------------------------------------------------------------------------


def resource_value(node: JSON, field: str, resource: str = GPU_RESOURCE) -> str | None:
    """status.<field>[resource] as the API gives it ("2", "0"), None when the key is absent."""
    value = dig(node, "status", field, resource)
    return None if value is None else str(value)


def quantity(value: str | None) -> int | None:
    """A resource quantity as a whole count (device counts are plain integers), else None."""
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def gpu_node_labels(node: JSON) -> list[str]:
    """The GPU labels the node carries, as `key=value`."""
    labels = labels_of(node)
    found = []
    for key, wanted in GPU_NODE_LABELS:
        if key in labels and (wanted is None or labels[key] == wanted):
            found.append(f"{key}={labels[key]}")
    return found


def node_condition(node: JSON, kind: str) -> JSON | None:
    for condition in dig(node, "status", "conditions") or []:
        if isinstance(condition, dict) and condition.get("type") == kind:
            return condition
    return None


def node_taints(node: JSON) -> list[JSON]:
    return [t for t in dig(node, "spec", "taints") or [] if isinstance(t, dict)]


def taint_text(taint: JSON) -> str:
    value = f"={taint['value']}" if taint.get("value") else ""
    return f"{taint.get('key', '')}{value}:{taint.get('effect', '')}"


def toleration_text(toleration: JSON) -> str:
    key = toleration.get("key") or "*"
    operator = toleration.get("operator") or "Equal"
    value = f"={toleration.get('value')}" if operator == "Equal" and toleration.get("value") else ""
    effect = f":{toleration['effect']}" if toleration.get("effect") else ""
    return f"{key}{value} {operator}{effect}"


def tolerates(tolerations: Sequence[JSON], taint: JSON) -> bool:
    """The scheduler's ToleratesTaint."""
    for toleration in tolerations:
        effect = toleration.get("effect") or ""
        if effect and effect != taint.get("effect"):
            continue
        key = toleration.get("key") or ""
        operator = toleration.get("operator") or "Equal"
        if not key:
            if operator == "Exists":
                return True
            continue
        if key != taint.get("key"):
            continue
        if operator == "Exists":
            return True
        if operator == "Equal" and (toleration.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def untolerated_taints(node: JSON, tolerations: Sequence[JSON]) -> list[JSON]:
    """Taints that keep a pod with these tolerations off the node (NoSchedule, NoExecute)."""
    return [
        t for t in node_taints(node) if t.get("effect") in ("NoSchedule", "NoExecute") and not tolerates(tolerations, t)
    ]


def _expression_matches(labels: Mapping[str, str], expression: JSON) -> bool:
    key = str(expression.get("key", ""))
    operator = expression.get("operator")
    values = [str(v) for v in expression.get("values") or []]
    if operator == "In":
        return key in labels and labels[key] in values
    if operator == "NotIn":
        return key not in labels or labels[key] not in values
    if operator == "Exists":
        return key in labels
    if operator == "DoesNotExist":
        return key not in labels
    if operator in ("Gt", "Lt") and key in labels and values:
        try:
            have, want = int(labels[key]), int(values[0])
        except ValueError:
            return False
        return have > want if operator == "Gt" else have < want
    return False


def selector_problems(pod_spec: JSON, node: JSON) -> list[str]:
    """Why a pod with this spec does not select the node (nodeSelector, required node
    affinity); [] when it does."""
    labels = labels_of(node)
    problems = []
    for key, value in (pod_spec.get("nodeSelector") or {}).items():
        if labels.get(key) != str(value):
            have = f"has {key}={labels[key]}" if key in labels else f"has no {key} label"
            problems.append(f"nodeSelector {key}={value}, but the node {have}")
    terms = dig(
        pod_spec, "affinity", "nodeAffinity", "requiredDuringSchedulingIgnoredDuringExecution", "nodeSelectorTerms"
    )
    if isinstance(terms, list) and terms:
        fields = {"metadata.name": name_of(node)}
        matched = False
        for term in terms:
            expressions = term.get("matchExpressions") or []
            field_expressions = term.get("matchFields") or []
            if all(_expression_matches(labels, e) for e in expressions) and all(
                _expression_matches(fields, e) for e in field_expressions
            ):
                matched = True
                break
        if not matched:
            problems.append("its required node affinity matches none of the node's labels")
    return problems


# --- pods and their containers -------------------------------------------------------------


def pod_spec_of(workload: JSON) -> JSON:
    """A pod's spec, or a DaemonSet's pod template spec."""
    if workload.get("kind") == "Pod":
        spec = workload.get("spec")
    else:
        spec = dig(workload, "spec", "template", "spec")
    return spec if isinstance(spec, dict) else {}


def containers_of(pod_spec: JSON) -> list[JSON]:
    return [c for c in pod_spec.get("containers") or [] if isinstance(c, dict)]


def container_env(container: JSON) -> dict[str, str]:
    """Plain `value` env entries (valueFrom ones are shown as `<from ...>`)."""
    env: dict[str, str] = {}
    for item in container.get("env") or []:
        if not isinstance(item, dict) or "name" not in item:
            continue
        env[str(item["name"])] = str(item["value"]) if "value" in item else "<from elsewhere>"
    return env


@dataclass(frozen=True)
class HostPathMount:
    volume: str
    host_path: str
    host_type: str  # "" when unset
    mount_path: str


def host_path_mounts(pod_spec: JSON, container: JSON) -> list[HostPathMount]:
    volumes = {
        v.get("name"): v.get("hostPath")
        for v in pod_spec.get("volumes") or []
        if isinstance(v, dict) and isinstance(v.get("hostPath"), dict)
    }
    mounts = []
    for mount in container.get("volumeMounts") or []:
        source = volumes.get(mount.get("name"))
        if source is None:
            continue
        mounts.append(
            HostPathMount(
                str(mount.get("name")),
                str(source.get("path", "")),
                str(source.get("type") or ""),
                str(mount.get("mountPath", "")),
            )
        )
    return mounts


def gpu_limit(container: JSON, resource: str = GPU_RESOURCE) -> int | None:
    value = dig(container, "resources", "limits", resource)
    if value is None:
        return None
    try:
        return int(str(value))
    except ValueError:
        return None


def pod_gpu_limit(pod_spec: JSON, resource: str = GPU_RESOURCE) -> int:
    return sum(gpu_limit(c, resource) or 0 for c in containers_of(pod_spec))


def is_privileged(container: JSON) -> bool:
    return dig(container, "securityContext", "privileged") is True


@dataclass(frozen=True)
class ContainerState:
    """One container's status, flattened."""

    name: str
    state: str  # running, waiting, terminated, unknown
    reason: str  # waiting/terminated reason
    message: str
    ready: bool
    restarts: int
    started_at: datetime | None  # when the current run started (running only)
    last_reason: str  # lastState.terminated
    last_exit_code: int | None
    last_message: str


def container_states(pod: JSON, init: bool = True) -> list[ContainerState]:
    """Every container's state (init containers first, unless `init` is False)."""
    states = []
    statuses = (list(dig(pod, "status", "initContainerStatuses") or []) if init else []) + list(
        dig(pod, "status", "containerStatuses") or []
    )
    for status in statuses:
        if not isinstance(status, dict):
            continue
        state = status.get("state") or {}
        kind = next((k for k in ("running", "waiting", "terminated") if k in state), "unknown")
        detail = state.get(kind) or {}
        last = dig(status, "lastState", "terminated") or {}
        exit_code = last.get("exitCode")
        states.append(
            ContainerState(
                name=str(status.get("name", "")),
                state=kind,
                reason=str(detail.get("reason") or ""),
                message=str(detail.get("message") or ""),
                ready=bool(status.get("ready")),
                restarts=int(status.get("restartCount") or 0),
                started_at=parse_time(detail.get("startedAt")) if kind == "running" else None,
                last_reason=str(last.get("reason") or ""),
                last_exit_code=exit_code if isinstance(exit_code, int) else None,
                last_message=str(last.get("message") or ""),
            )
        )
    return states


def pod_summary(pod: JSON) -> str:
    """What `kubectl get pod` would say: phase or the waiting reason, readiness, restarts."""
    phase = str(dig(pod, "status", "phase") or "Unknown")
    states = container_states(pod, init=False)
    shown = phase
    for state in states:
        if state.state == "waiting" and state.reason:
            shown = state.reason
        elif state.state == "terminated" and state.reason and phase not in ("Succeeded", "Failed"):
            shown = state.reason
    for state in container_states(pod)[: len(container_states(pod)) - len(states)]:
        if state.state == "waiting" or (state.state == "terminated" and state.last_exit_code not in (None, 0)):
            shown = f"Init:{state.reason or 'waiting'}"
            break
    ready = sum(1 for s in states if s.ready)
    restarts = sum(s.restarts for s in states)
    return f"{shown}, {ready}/{len(states) or 1} ready, {restarts} restart(s)"


def is_up(pod: JSON) -> bool:
    """Running with every container running (whatever it is doing inside)."""
    if dig(pod, "status", "phase") != "Running":
        return False
    states = container_states(pod, init=False)
    return bool(states) and all(s.state == "running" for s in states)


def started_at(pod: JSON) -> datetime | None:
    """When the pod's latest container run started (the oldest of its running containers)."""
    times = [s.started_at for s in container_states(pod, init=False) if s.started_at is not None]
    return min(times) if times else None


def events_about(events: Sequence[JSON], obj: JSON | None) -> list[JSON]:
    """The events about this very object: matched by its UID, not its name, since a name
    comes back (a StatefulSet's pod, a node re-joined) and the old object's events stay for
    an hour. An event that names no UID is kept (it cannot be told apart)."""
    uid = str(dig(obj, "metadata", "uid") or "") if obj is not None else ""
    if not uid:
        return list(events)
    return [event for event in events if str(dig(event, "involvedObject", "uid") or "") in ("", uid)]


def event_text(event: JSON) -> str:
    count = event.get("count")
    repeated = f" (x{count})" if isinstance(count, int) and count > 1 else ""
    return f"{event.get('type', '')} {event.get('reason', '')}: {event.get('message', '')}{repeated}".strip()


def event_time(event: JSON) -> datetime | None:
    for key in ("lastTimestamp", "eventTime", "firstTimestamp"):
        value = parse_time(event.get(key))
        if value is not None:
            return value
    return parse_time(dig(event, "metadata", "creationTimestamp"))


def events_with(events: Iterable[JSON], *, reason: str | None = None, contains: str | None = None) -> list[JSON]:
    found = []
    for event in events:
        if reason is not None and event.get("reason") != reason:
            continue
        if contains is not None and contains.lower() not in str(event.get("message", "")).lower():
            continue
        found.append(event)
    return found


# --- device plugin DaemonSets --------------------------------------------------------------

_GPU_HINT = re.compile(r"nvidia|gpunode|k8s-device-plugin|\bgpu\b", re.IGNORECASE)


def mounts_device_plugins_dir(pod_spec: JSON) -> bool:
    for volume in pod_spec.get("volumes") or []:
        path = dig(volume, "hostPath", "path")
        if isinstance(path, str) and posixpath.basename(path.rstrip("/")) == "device-plugins":
            return True
    return False


def is_gpu_device_plugin(daemonset: JSON) -> bool:
    """A DaemonSet that runs an NVIDIA GPU device plugin, whoever deployed it: it mounts the
    kubelet's device-plugins directory, and its name, labels or images speak of NVIDIA GPUs
    (gpunode's, NVIDIA's Helm chart, the GPU Operator's, a hand-written one)."""
    spec = pod_spec_of(daemonset)
    if not mounts_device_plugins_dir(spec):
        return False
    words = [name_of(daemonset), *labels_of(daemonset).values()]
    for container in containers_of(spec):
        words.append(str(container.get("image", "")))
        words.extend(str(part) for part in container.get("command") or [])
        words.extend(container_env(container))
    return any(_GPU_HINT.search(word) for word in words)


def owner_of(daemonset: JSON) -> str:
    """Who deployed a device plugin DaemonSet: gpunode, the GPU Operator, Helm, or unknown."""
    labels = labels_of(daemonset)
    owners = [str(o.get("kind")) for o in dig(daemonset, "metadata", "ownerReferences") or [] if isinstance(o, dict)]
    if labels.get("app.kubernetes.io/managed-by") == "gpunode":
        return "gpunode"
    if "ClusterPolicy" in owners or labels.get(GPU_OPERATOR_PLUGIN_LABEL[0]) == GPU_OPERATOR_PLUGIN_LABEL[1]:
        return "GPU Operator"
    if labels.get("app.kubernetes.io/managed-by") == "Helm" or "helm.sh/chart" in labels:
        return "Helm"
    return "unknown"


def controlled_by(pod: JSON, owner: JSON) -> bool:
    uid = dig(owner, "metadata", "uid")
    for reference in dig(pod, "metadata", "ownerReferences") or []:
        if not isinstance(reference, dict):
            continue
        if uid and reference.get("uid") == uid:
            return True
        if not uid and reference.get("kind") == owner.get("kind") and reference.get("name") == name_of(owner):
            return True
    return False
