"""`gpunode render agent`: the agent's DaemonSet and exactly the permissions it uses. Pure.

How the agent reaches its host: the host's namespaces, not a chroot. The pod runs with
`hostPID: true` and privileged, and every node command runs as `nsenter --target 1 --mount
--uts --ipc --net --pid -- sh -c ...` (gpunode's `@nsenter/1` pyinfra connector). Why not
pyinfra's chroot connector into a hostPath mount of `/`: in a chroot, `systemctl restart
containerd` is refused ("Running in chroot, ignoring request") unless the chroot happens to
match PID 1's root, `pkill`/`pgrep` and the snapshot's process checks see the pod's PID
namespace, `hostname` and the kubelet's view differ, and pyinfra's chroot upload (`cp` from
outside) follows the host's absolute symlinks in the pod's tree. Entered namespaces make
every node step behave as it does over SSH, with no special case. The host's root is then
`/proc/1/root` (hostPID), so no hostPath volume of `/` is needed at all.

RBAC, least privilege (each rule says who needs it):
- nodes get; nodes/status patch: read its Node, publish `GPUNodeReady`.
- nodes patch (apply mode): its labels (`gpunode.io/driver-version`), and cordon.
- events create (its namespace): Events about its Node.
- leases get, list, create, update (its namespace): the disruption budget.
- configmaps get (its namespace): its settings, and the plugin's config ConfigMaps.
- doctor's reads of the node's chain: pods list, pods/log get, events list, daemonsets
  list (apps), runtimeclasses list (node.k8s.io), clusterpolicies list (nvidia.com).
- pods/eviction create, poddisruptionbudgets list (apply mode): drain before a disruptive
  step through the Eviction API (PodDisruptionBudgets hold), the rollout's own drain.
Kubernetes RBAC cannot say "only your own Node"; the agent only ever names its own
(NODE_NAME from the downward API), and the Node authorizer's NodeRestriction does not
apply to service accounts. Say so rather than pretend otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from gpunode.bootstrap.core.kube.agent_settings import CONFIGMAP_KEY, CONFIGMAP_NAME
from gpunode.bootstrap.core.kube.plugin_deployment import MANAGED_BY_LABELS
from gpunode.bootstrap.errors import UserError

AGENT_NAME = "gpunode-agent"
AGENT_IMAGE_REPOSITORY = "ghcr.io/gpunode/gpunode-agent"
AGENT_MODES = ("check", "apply")
# GPU nodes as NFD labels them (PCI vendor 10de = NVIDIA) or as GPU Feature Discovery does.
DEFAULT_GPU_NODE_LABELS: tuple[tuple[str, str], ...] = (
    ("feature.node.kubernetes.io/pci-10de.present", "true"),
    ("nvidia.com/gpu.present", "true"),
)
_LABEL_KEY = re.compile(
    r"^(?:[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE = re.compile(r"^(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_DNS_LABEL = re.compile(r"^[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?$")


def agent_image() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        tag = package_version("gpunode")
    except PackageNotFoundError:
        tag = "latest"
    return f"{AGENT_IMAGE_REPOSITORY}:{tag}"


@dataclass(frozen=True)
class AgentDeployment:
    namespace: str = "kube-system"
    image: str = field(default_factory=agent_image)
    mode: str = "check"
    interval: int = 300
    max_unavailable: int = 1
    node_selector: Mapping[str, str] | None = None  # None: the GPU node labels above
    settings_yaml: str = ""


def parse_selector(text: str) -> dict[str, str]:
    """`key=value[,key=value]` as a nodeSelector; refused with the fix when malformed."""
    out: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep or not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(value):
            raise UserError(
                f"--node-selector {text!r}: {part.strip()!r} is not key=value with a label key and value.",
                fix="write it as e.g. --node-selector nvidia.com/gpu.present=true",
            )
        out[key] = value
    return out


def validate(dep: AgentDeployment) -> None:
    if dep.mode not in AGENT_MODES:
        raise UserError(f"Unknown agent mode {dep.mode!r}.", fix=f"use one of: {', '.join(AGENT_MODES)}")
    if not _DNS_LABEL.match(dep.namespace):
        raise UserError(f"{dep.namespace!r} is not a namespace name.", fix="give a DNS-1123 label, e.g. kube-system")
    if dep.interval < 10:
        raise UserError(f"--interval {dep.interval} is too short.", fix="give at least 10 seconds (default 300)")
    if dep.max_unavailable < 1:
        raise UserError("--max-unavailable must be at least 1.", fix="give 1 or more")
    if not dep.image or any(ch.isspace() for ch in dep.image):
        raise UserError(f"--image {dep.image!r} is not an image reference.", fix="give e.g. registry/gpunode-agent:tag")


def _labels() -> dict[str, str]:
    return {"app.kubernetes.io/name": AGENT_NAME, **MANAGED_BY_LABELS}


def _meta(name: str, namespace: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": _labels()}
    if namespace:
        meta["namespace"] = namespace
    return meta


def cluster_rules(mode: str) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]},
        {"apiGroups": [""], "resources": ["pods", "events"], "verbs": ["list"]},
        {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
        {"apiGroups": ["apps"], "resources": ["daemonsets"], "verbs": ["list"]},
        {"apiGroups": ["node.k8s.io"], "resources": ["runtimeclasses"], "verbs": ["list"]},
        # The GPU Operator's status, when its CRD exists (F8: ready while the plugin is gone).
        {"apiGroups": ["nvidia.com"], "resources": ["clusterpolicies"], "verbs": ["list"]},
        # Its own roles, by name: doctor's check that nothing it needs was taken away.
        {
            "apiGroups": ["rbac.authorization.k8s.io"],
            "resources": ["clusterroles", "roles"],
            "resourceNames": [AGENT_NAME],
            "verbs": ["get"],
        },
    ]
    if mode == "apply":
        rules[0] = {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]}
        rules.append({"apiGroups": [""], "resources": ["pods/eviction"], "verbs": ["create"]})
        # Named in a drain's refusal: which budget said no, with its numbers.
        rules.append({"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": ["list"]})
    return rules


def namespace_rules() -> list[dict[str, Any]]:
    return [
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "list", "create", "update"]},
        # Its own ConfigMap, and the plugin config ConfigMaps that doctor reads for the
        # plugin DaemonSets of this namespace (the usual place for both).
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]},
    ]


def _affinity(dep: AgentDeployment) -> dict[str, Any]:
    if dep.node_selector:
        return {"nodeSelector": dict(dep.node_selector)}
    terms = [{"matchExpressions": [{"key": k, "operator": "In", "values": [v]}]} for k, v in DEFAULT_GPU_NODE_LABELS]
    return {
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}
    }


def agent_args(dep: AgentDeployment) -> list[str]:
    return [
        "agent",
        f"--mode={dep.mode}",
        f"--interval={dep.interval}",
        f"--max-unavailable={dep.max_unavailable}",
        "--host-pid=1",
    ]


def daemonset(dep: AgentDeployment) -> dict[str, Any]:
    env = [
        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    pod_spec: dict[str, Any] = {
        "serviceAccountName": AGENT_NAME,
        "hostPID": True,
        "priorityClassName": "system-node-critical",
        # The agent must run where the GPUs are, whatever taints the node carries (and
        # while it is cordoned: it is the one that uncordons).
        "tolerations": [{"operator": "Exists"}],
        **_affinity(dep),
        "containers": [
            {
                "name": "agent",
                "image": dep.image,
                "command": ["gpunode"],
                "args": agent_args(dep),
                "env": env,
                "securityContext": {"privileged": True},
                "resources": {
                    "requests": {"cpu": "10m", "memory": "96Mi"},
                    "limits": {"memory": "384Mi"},
                },
            }
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": _meta(AGENT_NAME, dep.namespace),
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": AGENT_NAME}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {"metadata": {"labels": _labels()}, "spec": pod_spec},
        },
    }


def agent_objects(dep: AgentDeployment) -> list[dict[str, Any]]:
    validate(dep)
    ns = dep.namespace
    subject = [{"kind": "ServiceAccount", "name": AGENT_NAME, "namespace": ns}]
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(AGENT_NAME, ns)},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": _meta(AGENT_NAME),
            "rules": cluster_rules(dep.mode),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": _meta(AGENT_NAME),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": AGENT_NAME},
            "subjects": subject,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _meta(AGENT_NAME, ns),
            "rules": namespace_rules(),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _meta(AGENT_NAME, ns),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": AGENT_NAME},
            "subjects": subject,
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _meta(CONFIGMAP_NAME, ns),
            "data": {CONFIGMAP_KEY: dep.settings_yaml or "settings: {}\nnodes: []\n"},
        },
        daemonset(dep),
    ]


def render_agent(dep: AgentDeployment) -> str:
    return yaml.safe_dump_all(agent_objects(dep), sort_keys=False, default_flow_style=False)


def _covers(rule: Mapping[str, Any], group: str, resource: str, verb: str) -> bool:
    """Whether one RBAC rule allows the request (a rule limited to resourceNames does not
    allow a list, and is taken as not covering a request by any name)."""
    if rule.get("resourceNames") and AGENT_NAME not in rule["resourceNames"]:
        return False
    return (
        any(g in (group, "*") for g in rule.get("apiGroups") or [])
        and any(r in (resource, "*") for r in rule.get("resources") or [])
        and any(v in (verb, "*") for v in rule.get("verbs") or [])
    )


def missing_grants(
    mode: str, namespace: str, cluster_role: Mapping[str, Any] | None, role: Mapping[str, Any] | None
) -> list[str]:
    """What the agent needs (`cluster_rules`, `namespace_rules`) and its ClusterRole / Role
    do not allow, as `verb resource[.group] (scope)`. A namespaced need is met by either."""
    cluster = list((cluster_role or {}).get("rules") or [])
    local = cluster + list((role or {}).get("rules") or [])
    out = []
    for rules, granted, scope in (
        (cluster_rules(mode), cluster, "cluster"),
        (namespace_rules(), local, f"namespace {namespace}"),
    ):
        for rule in rules:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        if not any(_covers(g, group, resource, verb) for g in granted):
                            out.append(f"{verb} {resource}{'.' + group if group else ''} ({scope})")
    return out


def agent_mode_of(daemonset: Mapping[str, Any]) -> str:
    """The --mode the agent DaemonSet runs with (check when it says none)."""
    containers = ((((daemonset.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers")) or []
    for container in containers:
        for arg in container.get("args") or []:
            if isinstance(arg, str) and arg.startswith("--mode="):
                return arg.split("=", 1)[1]
    return "check"


def needed_grants(mode: str, namespace: str) -> list[str]:
    """Each permission as `verb resource[.group] (scope)`: what doctor compares a refusal with."""
    out = []
    for rules, scope in ((cluster_rules(mode), "cluster"), (namespace_rules(), f"namespace {namespace}")):
        for rule in rules:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        out.append(f"{verb} {resource}{'.' + group if group else ''} ({scope})")
    return out


__all__: Sequence[str] = (
    "AgentDeployment",
    "agent_objects",
    "render_agent",
    "parse_selector",
    "needed_grants",
    "missing_grants",
)
