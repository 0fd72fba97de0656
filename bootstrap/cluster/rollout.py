"""Waiting for a device plugin DaemonSet to run on given nodes, with a deadline.

Not `kubectl rollout status`: that waits for every node of the DaemonSet, so one broken
node elsewhere in the fleet would hold up (and fail) the nodes being bootstrapped. Here
each node is done when the DaemonSet's pod on it is Ready and of the DaemonSet's current
generation; on the deadline the message names the pod and what holds it (its waiting
reason, its last event, the plugin's own failure line).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gpunode.bootstrap.cluster.kubectl import Kubectl
from gpunode.bootstrap.cluster.pods import events_of, is_ready, pod_node, pod_state
from gpunode.bootstrap.core.kube.cluster_plan import MANAGED_BY_SELECTOR, selector_matches
from gpunode.bootstrap.core.kube.taints import DAEMON_POD_TOLERATIONS, Toleration, node_taints, untolerated_taints

INSTANCE_LABEL = "app.kubernetes.io/instance"
GENERATION_LABEL = "pod-template-generation"


@dataclass(frozen=True)
class RolloutTarget:
    node: str
    namespace: str
    daemonset: str
    generation: int


@dataclass(frozen=True)
class RolloutResult:
    node: str
    done: bool
    detail: str
    pod: str | None = None


def placement_blockers(daemonset: Mapping[str, Any], node: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """Why the DaemonSet controller would not run this DaemonSet on the node: the node's
    taints it does not tolerate (F15), and the node selector labels the node lacks."""
    spec = ((daemonset.get("spec") or {}).get("template") or {}).get("spec") or {}
    tolerations = [Toleration.from_api(t) for t in spec.get("tolerations") or [] if isinstance(t, dict)]
    tolerations += DAEMON_POD_TOLERATIONS
    taints = [str(t) for t in untolerated_taints(tolerations, node_taints(node))]
    labels = (node.get("metadata") or {}).get("labels") or {}
    selector = spec.get("nodeSelector") or {}
    missing = [f"{k}={v}" for k, v in selector.items() if not selector_matches({k: v}, labels)]
    return taints, missing


def _is_current(pod: Mapping[str, Any], target: RolloutTarget, all_updated: bool) -> bool:
    """Ready, not going away, and of the current template: made for this generation, or the
    DaemonSet controller counts every pod as updated (a template changed and changed back
    leaves the older pods current: their revision hash is the current one again)."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    return (
        not meta.get("deletionTimestamp")
        and is_ready(pod)
        and (labels.get(GENERATION_LABEL) == str(target.generation) or all_updated)
    )


def _all_updated(daemonset: Mapping[str, Any] | None, generation: int) -> bool:
    """What `kubectl rollout status` waits for: the controller has seen this generation and
    every pod it wants is of the current template."""
    if daemonset is None:
        return False
    status = daemonset.get("status") or {}
    desired = int(status.get("desiredNumberScheduled") or 0)
    return (
        int(status.get("observedGeneration") or 0) >= generation
        and desired > 0
        and int(status.get("updatedNumberScheduled") or 0) >= desired
    )


def _pods_for(pods: Sequence[Mapping[str, Any]], target: RolloutTarget) -> list[Mapping[str, Any]]:
    found = [
        p
        for p in pods
        if pod_node(p) == target.node
        and ((p.get("metadata") or {}).get("labels") or {}).get(INSTANCE_LABEL) == target.daemonset
    ]
    # Newest last.
    return sorted(found, key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp") or ""))


def wait_for_rollout(
    kubectl: Kubectl,
    targets: Sequence[RolloutTarget],
    timeout: float,
    *,
    poll: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, RolloutResult]:
    """Wait until every target node runs a Ready pod of its DaemonSet's current generation."""
    started = clock()
    deadline = started + timeout
    results: dict[str, RolloutResult] = {}
    pending = list(targets)
    last: dict[str, list[Mapping[str, Any]]] = {}
    while pending:
        namespaces = sorted({t.namespace for t in pending})
        pods_by_namespace = {ns: kubectl.list("pods", namespace=ns, selector=MANAGED_BY_SELECTOR) for ns in namespaces}
        daemonsets: dict[tuple[str, str], Mapping[str, Any]] | None = None
        still = []
        for target in pending:
            pods = _pods_for(pods_by_namespace[target.namespace], target)
            last[target.node] = pods
            ready = [p for p in pods if _is_current(p, target, False)]
            if not ready and any(is_ready(p) for p in pods):
                # A Ready pod of an older generation may still be current (see _is_current):
                # the DaemonSet's status says, read once per round and only then.
                if daemonsets is None:
                    daemonsets = {
                        (ns, str((d.get("metadata") or {}).get("name"))): d
                        for ns in namespaces
                        for d in kubectl.list("daemonsets", namespace=ns, selector=MANAGED_BY_SELECTOR)
                    }
                updated = _all_updated(daemonsets.get((target.namespace, target.daemonset)), target.generation)
                ready = [p for p in pods if _is_current(p, target, updated)]
            if ready:
                name = (ready[-1].get("metadata") or {}).get("name", "?")
                results[target.node] = RolloutResult(
                    target.node,
                    True,
                    f"pod {target.namespace}/{name} Ready on {target.node} after {clock() - started:.1f} s",
                    f"{target.namespace}/{name}",
                )
            else:
                still.append(target)
        pending = still
        if not pending or clock() >= deadline:
            break
        sleep(min(poll, max(0.0, deadline - clock())))
    for target in pending:
        results[target.node] = _timed_out(kubectl, target, last.get(target.node, []), timeout)
    return results


def _timed_out(
    kubectl: Kubectl, target: RolloutTarget, pods: Sequence[Mapping[str, Any]], timeout: float
) -> RolloutResult:
    head = (
        f"the rollout of DaemonSet {target.namespace}/{target.daemonset} on {target.node} "
        f"did not finish within {timeout:g} s"
    )
    if not pods:
        events = events_of(kubectl, target.namespace, "DaemonSet", target.daemonset)
        warnings = [e for e in events if e.startswith(("FailedCreate", "FailedPlacement", "FailedDaemonPod"))]
        detail = f"{head}: the DaemonSet has no pod on the node" + (f"; event {warnings[-1]}" if warnings else "")
        return RolloutResult(
            target.node, False, detail + (f". Fix: kubectl -n {target.namespace} describe daemonset {target.daemonset}")
        )
    state = pod_state(kubectl, pods[-1])
    fix = _fix_for(state.describe())
    return RolloutResult(target.node, False, f"{head}: {state.describe()}. Fix: {fix}", state.ref)


def _fix_for(text: str) -> str:
    if "ImagePull" in text or "ErrImage" in text or "InvalidImageName" in text:
        return "check the plugin image (--image) and that the node can pull it"
    if "FailedMount" in text:
        return (
            "the node lacks a file the pod mounts; run gpunode bootstrap for the node again so the "
            "DaemonSet mounts the library the node has (F2)"
        )
    if "driver_library_mismatch" in text:
        return "reboot the node onto the new driver (F14), then run gpunode bootstrap again"
    if "nvml_init_failed" in text:
        return "see the plugin's failure line above and the fix it names"
    if "untolerated taint" in text:
        return "tolerate the node's taint (--toleration KEY[=VALUE][:EFFECT]) or remove it (F15)"
    return "kubectl describe the pod and read its log (kubectl logs)"
