"""A fleet rollout's decisions, as data: which nodes a run disrupts, in which batches, which
pods each drain evicts (and in which order), which pods and budgets stand in its way.

No I/O: the cluster layer reads the objects, orchestration acts on what is decided here.

Which pods a drain evicts, and why:
- A host-level disruption (driver packages change, a reboot, a containerd restart) kills
  every container on the node, so every pod must leave first, through the Eviction API
  so that PodDisruptionBudgets hold. GPU pods go first: they are the ones the upgrade is
  about, usually the longest to stop (checkpointing), and when a GPU pod's budget blocks
  the drain, the rollout stops before any other pod was moved for nothing.
- A plugin-only disruption (the device plugin's DaemonSet or host service replaced)
  leaves running containers alone but takes the node's GPUs away while the plugin
  restarts: only GPU pods are evicted (as NVIDIA's GPU Operator does for its upgrades).
- DaemonSet pods stay (their controller would put them straight back, and they tolerate
  unschedulable nodes); mirror pods stay (the kubelet owns them, the API cannot remove
  them); pods that already finished are evicted without a budget (the apiserver deletes
  them outright). Pods with emptyDir volumes lose that data: evicted only when asked
  (--delete-emptydir-data), as `kubectl drain` does. Pods with no controller would never
  come back: they block the drain, as in `kubectl drain` without --force.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from gpunode.bootstrap.core.kube.view import dig, labels_of, name_of, namespace_of, node_condition, pod_gpu_limit
from gpunode.bootstrap.errors import UserError

JSON = dict[str, Any]

# Set on a node when gpunode cordoned it; a node without it was cordoned by someone else,
# and gpunode never uncordons that one.
CORDONED_BY_ANNOTATION = "gpunode.io/cordoned-by-rollout"
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"

DrainScope = Literal["all", "gpu"]

# Node steps whose change disrupts the whole host, and the cluster/service steps whose change
# restarts the device plugin.
HOST_DISRUPTING_STEPS = {
    "driver": "the driver packages change",
    "containerd": "containerd restarts",
    "reboot": "the host reboots",
}
PLUGIN_DISRUPTING_STEPS = {
    "device-plugin": "the device plugin DaemonSet is replaced (the plugin restarts)",
    "plugin-service": "the host's device plugin service restarts",
}

_MAX_UNAVAILABLE = re.compile(r"^(?P<count>[0-9]+)(?P<percent>%?)$")


# --------------------------------------------------------------------------------------
# --max-unavailable


@dataclass(frozen=True)
class MaxUnavailable:
    value: int
    percent: bool = False

    def __str__(self) -> str:
        return f"{self.value}%" if self.percent else str(self.value)

    def batch_size(self, fleet: int) -> int:
        """Nodes out at once for a fleet of `fleet` nodes: a percentage rounds up (as a
        DaemonSet's maxUnavailable does), and never below one, or nothing would move."""
        if fleet <= 0:
            return 0
        size = math.ceil(self.value * fleet / 100) if self.percent else self.value
        return max(1, min(size, fleet))


def parse_max_unavailable(text: str) -> MaxUnavailable:
    found = _MAX_UNAVAILABLE.match(text.strip())
    if found is None or int(found["count"]) == 0 or (found["percent"] and int(found["count"]) > 100):
        raise UserError(
            f"--max-unavailable {text!r} is not a node count or a percentage.",
            fix="give a whole number of nodes (1, 2) or a percentage from 1% to 100% (25%)",
        )
    return MaxUnavailable(int(found["count"]), bool(found["percent"]))


# --------------------------------------------------------------------------------------
# Which runs disrupt a node


@dataclass(frozen=True)
class Disruption:
    """Why a run disrupts a node (empty reasons: it does not) and what the drain takes."""

    reasons: tuple[str, ...] = ()
    scope: DrainScope | None = None

    @property
    def disrupts(self) -> bool:
        return bool(self.reasons)


def disruption_of(statuses: Mapping[str, str], *, reboot: bool) -> Disruption:
    """From a planned run's step statuses (a dry run's "changed" is "would change"): host-level
    steps make a full drain, plugin steps a GPU-pod drain. `reboot`: the host needs a reboot
    and the run is allowed to do it."""
    host = [why for step, why in HOST_DISRUPTING_STEPS.items() if statuses.get(step) == "changed"]
    if reboot:
        host.append(HOST_DISRUPTING_STEPS["reboot"])
    plugin = [why for step, why in PLUGIN_DISRUPTING_STEPS.items() if statuses.get(step) == "changed"]
    if host:
        return Disruption(tuple(dict.fromkeys(host + plugin)), "all")
    if plugin:
        return Disruption(tuple(plugin), "gpu")
    return Disruption()


# --------------------------------------------------------------------------------------
# Nodes and batches


@dataclass(frozen=True)
class NodeState:
    """A node as the rollout sees it before it starts."""

    host: str
    node: str
    unschedulable: bool = False
    cordoned_by_us: bool = False

    @property
    def cordoned_by_others(self) -> bool:
        return self.unschedulable and not self.cordoned_by_us


def node_state(host: str, node: JSON) -> NodeState:
    annotations = dig(node, "metadata", "annotations") or {}
    unschedulable = bool(dig(node, "spec", "unschedulable"))
    ours = CORDONED_BY_ANNOTATION in annotations
    return NodeState(host, name_of(node), unschedulable, unschedulable and ours)


def plan_batches(nodes: Sequence[NodeState], budget: MaxUnavailable) -> list[list[NodeState]]:
    """Batches in order: nodes gpunode cordoned in an earlier, interrupted run come first
    (they are out of service already; finishing them frees the budget), then the rest in the
    order given. Each batch holds at most the budget's nodes."""
    if not nodes:
        return []
    size = budget.batch_size(len(nodes))
    ordered = [n for n in nodes if n.cordoned_by_us] + [n for n in nodes if not n.cordoned_by_us]
    return [list(ordered[i : i + size]) for i in range(0, len(ordered), size)]


def node_is_ready(node: JSON) -> bool:
    condition = node_condition(node, "Ready")
    return condition is not None and condition.get("status") == "True"


def cordon_patch(node: JSON, when: str) -> JSON:
    """A merge patch that cordons the node as gpunode's, guarded by the resourceVersion read
    (a concurrent cordon by someone else makes it fail instead of being claimed as ours)."""
    return {
        "metadata": {
            "resourceVersion": dig(node, "metadata", "resourceVersion"),
            "annotations": {CORDONED_BY_ANNOTATION: when},
        },
        "spec": {"unschedulable": True},
    }


def uncordon_patch() -> JSON:
    return {"metadata": {"annotations": {CORDONED_BY_ANNOTATION: None}}, "spec": {"unschedulable": None}}


# --------------------------------------------------------------------------------------
# Drains


def is_gpu_pod(pod: JSON) -> bool:
    return pod_gpu_limit(dig(pod, "spec") or {}) > 0


def _controller(pod: JSON) -> JSON | None:
    for owner in dig(pod, "metadata", "ownerReferences") or []:
        if isinstance(owner, dict) and owner.get("controller"):
            return owner
    return None


def is_finished(pod: JSON) -> bool:
    return dig(pod, "status", "phase") in ("Succeeded", "Failed")


def pod_ref(pod: JSON) -> str:
    return f"{namespace_of(pod)}/{name_of(pod)}"


@dataclass
class DrainPlan:
    node: str
    scope: DrainScope
    evict: list[JSON] = field(default_factory=list)  # in eviction order
    left: list[tuple[str, str]] = field(default_factory=list)  # (pod, why it stays)
    blocking: list[tuple[str, str]] = field(default_factory=list)  # (pod, why the drain cannot take it)

    def summary(self) -> str:
        what = "all pods, GPU pods first" if self.scope == "all" else "GPU pods only"
        names = ", ".join(pod_ref(p) for p in self.evict) or "none"
        return f"evicts {len(self.evict)} pod(s) ({what}): {names}"


def plan_drain(node: str, pods: Iterable[JSON], scope: DrainScope, *, delete_emptydir_data: bool) -> DrainPlan:
    plan = DrainPlan(node, scope)
    gpu: list[JSON] = []
    other: list[JSON] = []
    for pod in sorted(pods, key=pod_ref):
        if dig(pod, "spec", "nodeName") != node or dig(pod, "metadata", "deletionTimestamp"):
            continue
        ref = pod_ref(pod)
        owner = _controller(pod)
        if MIRROR_ANNOTATION in (dig(pod, "metadata", "annotations") or {}):
            plan.left.append((ref, "a mirror pod (the kubelet runs it from a file on the node)"))
            continue
        if owner is not None and owner.get("kind") == "DaemonSet":
            plan.left.append((ref, f"DaemonSet {owner.get('name')} runs it on every node"))
            continue
        if scope == "gpu" and not is_gpu_pod(pod):
            continue
        if not is_finished(pod):
            if owner is None:
                plan.blocking.append(
                    (ref, "it has no controller: evicted, it would never come back (delete it yourself)")
                )
                continue
            if not delete_emptydir_data and any(
                isinstance(v, dict) and "emptyDir" in v for v in dig(pod, "spec", "volumes") or []
            ):
                plan.blocking.append((ref, "its emptyDir data would be lost (pass --delete-emptydir-data)"))
                continue
        (gpu if is_gpu_pod(pod) else other).append(pod)
    plan.evict = gpu + other
    return plan


@dataclass(frozen=True)
class BudgetBlock:
    """A PodDisruptionBudget that would refuse (some of) a drain's evictions right now."""

    budget: str  # namespace/name
    pods: tuple[str, ...]
    allowed: int
    desired_healthy: int
    current_healthy: int

    def text(self) -> str:
        return (
            f"PodDisruptionBudget {self.budget} allows {self.allowed} disruption(s) "
            f"(needs {self.desired_healthy} healthy pods, has {self.current_healthy}) and covers "
            + ", ".join(self.pods)
        )


def selector_matches(selector: JSON | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector against labels; an empty or missing selector matches nothing (as the
    eviction subresource treats a budget's)."""
    if not selector or (not selector.get("matchLabels") and not selector.get("matchExpressions")):
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression.get("key"), expression.get("operator"), expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def budgets_of(pod: JSON, budgets: Iterable[JSON]) -> list[JSON]:
    labels = labels_of(pod)
    return [
        b
        for b in budgets
        if namespace_of(b) == namespace_of(pod) and selector_matches(dig(b, "spec", "selector"), labels)
    ]


def blocking_budgets(plan: DrainPlan, budgets: Sequence[JSON]) -> list[BudgetBlock]:
    """Budgets whose disruptionsAllowed is less than the running pods of this drain they cover."""
    covered: dict[str, tuple[JSON, list[str]]] = {}
    for pod in plan.evict:
        if is_finished(pod):
            continue  # the apiserver deletes a finished pod without asking its budget
        for budget in budgets_of(pod, budgets):
            key = f"{namespace_of(budget)}/{name_of(budget)}"
            covered.setdefault(key, (budget, []))[1].append(pod_ref(pod))
    blocks = []
    for key, (budget, pods) in sorted(covered.items()):
        status = budget.get("status") or {}
        allowed = int(status.get("disruptionsAllowed") or 0)
        if allowed < len(pods):
            blocks.append(
                BudgetBlock(
                    key,
                    tuple(pods),
                    allowed,
                    int(status.get("desiredHealthy") or 0),
                    int(status.get("currentHealthy") or 0),
                )
            )
    return blocks


def nowhere_to_go(all_nodes: Sequence[JSON], batch: Iterable[str]) -> bool:
    """True when no schedulable node outside this batch can take the evicted pods (a
    single-node homelab): the drain then only leaves its pods Pending until the node is back."""
    leaving = set(batch)
    return not any(
        name_of(n) not in leaving and not dig(n, "spec", "unschedulable") and node_is_ready(n) for n in all_nodes
    )
