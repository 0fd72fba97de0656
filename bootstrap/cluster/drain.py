"""Cordon, drain and uncordon a node through kubectl, as a rollout needs them.

Evictions go through the Eviction API (`POST .../pods/<name>/eviction`, the subresource
`kubectl drain` uses), so the apiserver applies every PodDisruptionBudget: a budget that
would be broken answers 429 TooManyRequests, and the eviction is tried again, every few
seconds, until the drain's deadline. Which pods, and in which order, is decided in
core.kube.rollout_plan; this module only carries it out and reports what happened.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from gpunode.bootstrap.cluster.kubectl import Kubectl, KubectlError
from gpunode.bootstrap.core.kube.rollout_plan import (
    CORDONED_BY_ANNOTATION,
    DrainPlan,
    blocking_budgets,
    budgets_of,
    cordon_patch,
    node_is_ready,
    pod_ref,
    uncordon_patch,
)
from gpunode.bootstrap.core.kube.view import dig, name_of, namespace_of
from gpunode.bootstrap.errors import HostStateError

JSON = dict[str, Any]
# How long to wait before asking again after a budget said no (kubectl drain waits 5 s).
EVICTION_RETRY_SECONDS = 5.0
POLL_SECONDS = 0.5

EvictionResult = Literal["evicted", "gone", "blocked"]


def read_node(kubectl: Kubectl, name: str) -> JSON:
    node = kubectl.get("node", name)
    if node is None:
        raise HostStateError(
            f"node {name} is not in the cluster.",
            fix="check that the host's kubelet joined the cluster under this name (kubectl get nodes)",
        )
    return node


def list_nodes(kubectl: Kubectl) -> list[JSON]:
    return kubectl.list("nodes")


def pods_on(kubectl: Kubectl, node: str) -> list[JSON]:
    return kubectl.list("pods", all_namespaces=True, field_selector=f"spec.nodeName={node}")


def disruption_budgets(kubectl: Kubectl) -> list[JSON]:
    return kubectl.list("poddisruptionbudgets.policy", all_namespaces=True)


def _patch_node(kubectl: Kubectl, name: str, patch: JSON) -> None:
    kubectl.run("patch", "node", name, "--type=merge", "-p", json.dumps(patch, separators=(",", ":")))


def cordon(kubectl: Kubectl, node: JSON) -> bool:
    """Cordon the node as gpunode's; False when it was cordoned already (ours from an
    earlier run, or someone else's: then it is left exactly as it is)."""
    if dig(node, "spec", "unschedulable"):
        return False
    when = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        _patch_node(kubectl, name_of(node), cordon_patch(node, when))
    except KubectlError as exc:
        if "Conflict" in str(exc) or "modified" in str(exc):
            # Changed since we read it (perhaps cordoned by someone else): read again, decide again.
            return cordon(kubectl, read_node(kubectl, name_of(node)))
        raise
    return True


def uncordon(kubectl: Kubectl, name: str) -> bool:
    """Uncordon the node only when gpunode cordoned it; False when it leaves someone else's cordon."""
    node = read_node(kubectl, name)
    if CORDONED_BY_ANNOTATION not in (dig(node, "metadata", "annotations") or {}):
        return False
    _patch_node(kubectl, name, uncordon_patch())
    return True


def evict(kubectl: Kubectl, pod: JSON) -> tuple[EvictionResult, str]:
    """One eviction request; ("blocked", the apiserver's words) when a budget refuses it."""
    namespace, name = namespace_of(pod), name_of(pod)
    body = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": name, "namespace": namespace},
        # The pod we decided about, not a newer one of the same name (StatefulSets reuse names).
        "deleteOptions": {"preconditions": {"uid": dig(pod, "metadata", "uid")}},
    }
    path = f"/api/v1/namespaces/{namespace}/pods/{name}/eviction"
    result = kubectl.run("create", "--raw", path, "-f", "-", stdin=json.dumps(body), check=False)
    if result.ok:
        return "evicted", ""
    text = result.stderr.strip()
    if "(NotFound)" in text or ("(Conflict)" in text and "UID" in text):
        return "gone", ""
    if "(TooManyRequests)" in text:
        return "blocked", text.split("(TooManyRequests):", 1)[-1].strip()
    raise kubectl.error(result)


@dataclass
class DrainOutcome:
    evicted: list[str] = field(default_factory=list)
    # Set when the drain did not finish: what stood in its way, in words a user can act on.
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def drain(
    kubectl: Kubectl,
    plan: DrainPlan,
    timeout: float,
    progress: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> DrainOutcome:
    """Evict the plan's pods in its order, then wait until they are gone, all within
    `timeout` seconds. A pod whose budget refuses is asked again until the deadline; the
    pods after it wait (GPU pods come first: a blocked GPU pod stops the drain before the
    others were moved for nothing)."""
    outcome = DrainOutcome()
    if plan.blocking:
        outcome.problem = "the drain cannot take " + "; ".join(f"{pod}: {why}" for pod, why in plan.blocking)
        return outcome
    deadline = clock() + timeout
    for pod in plan.evict:
        while True:
            result, message = evict(kubectl, pod)
            if result != "blocked":
                break
            if clock() + EVICTION_RETRY_SECONDS > deadline:
                outcome.problem = _blocked_text(kubectl, pod, message, timeout)
                return outcome
            if progress is not None:
                progress(f"[{plan.node}] eviction of {pod_ref(pod)} refused ({message}); trying again")
            time.sleep(EVICTION_RETRY_SECONDS)
        outcome.evicted.append(pod_ref(pod))
        if progress is not None:
            progress(f"[{plan.node}] evicted {pod_ref(pod)}")
    waiting = {dig(p, "metadata", "uid"): pod_ref(p) for p in plan.evict}
    while waiting:
        left = {dig(p, "metadata", "uid") for p in pods_on(kubectl, plan.node)}
        waiting = {uid: ref for uid, ref in waiting.items() if uid in left}
        if not waiting:
            break
        if clock() > deadline:
            outcome.problem = f"evicted pods did not stop within --drain-timeout {timeout:g} s: " + ", ".join(
                sorted(waiting.values())
            )
            return outcome
        time.sleep(POLL_SECONDS)
    return outcome


def _blocked_text(kubectl: Kubectl, pod: JSON, message: str, timeout: float) -> str:
    """The refusal, with the budget's own numbers (the apiserver's 429 names no budget)."""
    details = [
        f"PodDisruptionBudget {namespace_of(b)}/{name_of(b)} needs "
        f"{dig(b, 'status', 'desiredHealthy') or 0} healthy pods and has {dig(b, 'status', 'currentHealthy') or 0}"
        for b in budgets_of(pod, kubectl.list("poddisruptionbudgets.policy", namespace=namespace_of(pod)))
    ]
    why = f" ({'; '.join(details)})" if details else ""
    return f"the eviction of pod {pod_ref(pod)} was refused for --drain-timeout {timeout:g} s: {message}{why}"


def dry_run_blocks(kubectl: Kubectl, plan: DrainPlan) -> list[str]:
    """What --dry-run says about a drain: the budgets that would refuse it as they stand now."""
    return [block.text() for block in blocking_budgets(plan, disruption_budgets(kubectl))]


def wait_node_ready(kubectl: Kubectl, name: str, timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
    deadline = clock() + timeout
    while True:
        node = read_node(kubectl, name)
        if node_is_ready(node):
            return
        if clock() > deadline:
            condition = next((c for c in dig(node, "status", "conditions") or [] if c.get("type") == "Ready"), None)
            said = f": {condition.get('reason', '')} {condition.get('message', '')}".rstrip() if condition else ""
            raise HostStateError(
                f"node {name} is not Ready {timeout:g} s after its steps{said}.",
                fix=f"look at the kubelet on {name} (journalctl -u kubelet)",
            )
        time.sleep(POLL_SECONDS)
