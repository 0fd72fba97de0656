"""PodDisruptionBudgets and the Eviction subresource, as kube-apiserver and the disruption
controller implement them (Kubernetes 1.32).

gpunode sends these: its rollout drains nodes with `POST /api/v1/namespaces/<ns>/pods/
<name>/eviction` (through `kubectl create --raw`) and reads `poddisruptionbudgets.policy`
for --dry-run and to explain a refusal.

The disruption controller (sync_budgets, run after every write like the other controllers)
keeps each budget's status: expectedPods, desiredHealthy, currentHealthy,
disruptionsAllowed = max(0, currentHealthy - desiredHealthy), observedGeneration,
disruptedPods and the DisruptionAllowed condition. A pod counts as healthy when it is
Ready, not being deleted and not in disruptedPods. minAvailable as a number needs no
controller (expectedPods = the pods selected); a percentage or maxUnavailable scale by the
pods' controllers' spec.replicas, and a pod without one makes the sync fail (as the real
controller's "found no controllers" does: nothing may be disrupted).

The eviction subresource follows the apiserver's REST handler: a pod that is Pending,
finished or already being deleted is deleted without asking any budget; more than one
budget is a 500; a budget whose status is behind its generation, or that allows no
disruption, answers 429 TooManyRequests "Cannot evict pod as it would violate the pod's
disruption budget." with a DisruptionBudget cause; otherwise disruptionsAllowed is
decremented, the pod is recorded in disruptedPods, and the pod is deleted. An unready pod
whose budget is satisfied anyway is deleted without a decrement, guarded by its
resourceVersion. A budget with an empty selector selects no pod for eviction.
"""

from __future__ import annotations

import copy
from typing import Any

from . import errors
from .resources import ResourceType
from .selectors import label_selector_object_matches
from .store import ListOptions, Store, now_rfc3339

JSON = dict[str, Any]

DISRUPTION_BUDGET_CAUSE = "DisruptionBudget"
EVICTION_REFUSED = "Cannot evict pod as it would violate the pod's disruption budget."


def _ready(pod: JSON) -> bool:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return condition.get("status") == "True"
    return False


def _scaled(value: Any, total: int, round_up: bool) -> int:
    if isinstance(value, str) and value.endswith("%"):
        percent = int(value[:-1])
        return -((-percent * total) // 100) if round_up else (percent * total) // 100
    return int(value)


def _selected(store: Store, budget: JSON, pod_rt: ResourceType) -> list[JSON]:
    namespace = budget["metadata"].get("namespace", "")
    selector = (budget.get("spec") or {}).get("selector")
    pods = [p for (ns, _), p in sorted(store.objects.get(pod_rt.key, {}).items()) if ns == namespace]
    if selector is None:
        return []
    return [p for p in pods if label_selector_object_matches(selector, p["metadata"].get("labels"))]


def _controller_scale(store: Store, pods: list[JSON]) -> int | str:
    """Sum of spec.replicas of the pods' controllers; a message when a pod has none."""
    seen: dict[str, int] = {}
    for pod in pods:
        owner = next((o for o in pod["metadata"].get("ownerReferences") or [] if o.get("controller")), None)
        if owner is None:
            return f"found no controllers for pod {pod['metadata']['name']!r}"
        found = None
        try:
            rt = store.resolve(owner.get("kind", "").lower())
            found = store.peek(rt, pod["metadata"].get("namespace"), owner.get("name", ""))
        except KeyError:  # a kind this stand-in does not serve
            found = None
        if found is None or "replicas" not in (found.get("spec") or {}):
            return f"found no controllers for pod {pod['metadata']['name']!r}"
        seen[owner.get("uid", "")] = int(found["spec"]["replicas"])
    return sum(seen.values())


def budget_status(store: Store, budget: JSON, pod_rt: ResourceType) -> JSON:
    """The status the disruption controller would write for `budget` now."""
    spec = budget.get("spec") or {}
    old = budget.get("status") or {}
    pods = _selected(store, budget, pod_rt)
    live = {p["metadata"]["name"] for p in pods if not p["metadata"].get("deletionTimestamp")}
    disrupted = {name: when for name, when in (old.get("disruptedPods") or {}).items() if name in live}
    status: JSON = {"observedGeneration": budget["metadata"].get("generation", 1)}
    if disrupted:
        status["disruptedPods"] = disrupted
    min_available = spec.get("minAvailable")
    failure = ""
    if min_available is not None and not (isinstance(min_available, str) and min_available.endswith("%")):
        expected, desired = len(pods), int(min_available)
    else:
        scale = _controller_scale(store, pods)
        if isinstance(scale, str):
            failure, expected, desired = scale, 0, 0
        elif min_available is not None:
            expected, desired = scale, _scaled(min_available, scale, round_up=True)
        else:
            expected = scale
            desired = max(0, scale - _scaled(spec.get("maxUnavailable", 0), scale, round_up=True))
    healthy = sum(
        1
        for p in pods
        if _ready(p) and not p["metadata"].get("deletionTimestamp") and p["metadata"]["name"] not in disrupted
    )
    allowed = 0 if failure else max(0, healthy - desired)
    status.update(expectedPods=expected, desiredHealthy=desired, currentHealthy=healthy, disruptionsAllowed=allowed)
    if failure:
        condition = {"type": "DisruptionAllowed", "status": "False", "reason": "SyncFailed", "message": failure}
    elif allowed > 0:
        condition = {"type": "DisruptionAllowed", "status": "True", "reason": "SufficientPods", "message": ""}
    else:
        condition = {"type": "DisruptionAllowed", "status": "False", "reason": "InsufficientPods", "message": ""}
    condition["observedGeneration"] = status["observedGeneration"]
    before = next((c for c in old.get("conditions") or [] if c.get("type") == "DisruptionAllowed"), None)
    same = before is not None and all(before.get(k) == v for k, v in condition.items())
    condition["lastTransitionTime"] = before["lastTransitionTime"] if same and before else now_rfc3339()
    status["conditions"] = [condition]
    return status


def sync_budgets(store: Store) -> None:
    """The disruption controller: every budget's status from the pods as they are now."""
    rt = store.resolve("poddisruptionbudgets.policy")
    pod_rt = store.resolve("pods")
    for budget in [b for _, b in sorted(store.objects.get(rt.key, {}).items())]:
        status = budget_status(store, budget, pod_rt)
        if status != budget.get("status"):
            updated = copy.deepcopy(budget)
            updated["status"] = status
            store.commit_internal(rt, updated, budget)


def _too_many_requests(cause: str, retry_after: int) -> errors.ApiError:
    details: JSON = {"causes": [{"reason": DISRUPTION_BUDGET_CAUSE, "message": cause}]}
    if retry_after:
        details["retryAfterSeconds"] = retry_after
    return errors.ApiError(429, "TooManyRequests", EVICTION_REFUSED, details)


def evict(store: Store, namespace: str, name: str, eviction: Any, dry_run: bool) -> tuple[int, JSON]:
    """POST pods/<name>/eviction: (HTTP code, the Status answered)."""
    if not isinstance(eviction, dict) or eviction.get("kind") not in (None, "Eviction"):
        raise errors.bad_request(f"not a Eviction object: {type(eviction).__name__}")
    if (eviction.get("metadata") or {}).get("name") != name:
        raise errors.bad_request("name in URL does not match name in Eviction object")
    options = eviction.get("deleteOptions") or {}
    dry_run = dry_run or "All" in (options.get("dryRun") or [])
    pre = options.get("preconditions") or {}
    pod_rt = store.resolve("pods")
    budget_rt = store.resolve("poddisruptionbudgets.policy")
    success: JSON = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}
    with store.writing():
        pod = store.get(pod_rt, namespace, name)
        phase = (pod.get("status") or {}).get("phase")
        rv = pre.get("resourceVersion")
        if phase in ("Succeeded", "Failed", "Pending") or pod["metadata"].get("deletionTimestamp"):
            if phase == "Pending" and rv is None:
                rv = pod["metadata"]["resourceVersion"]
            store.delete(pod_rt, namespace, name, "Background", dry_run, pre.get("uid"), rv)
            return 201, success
        budgets = [
            b for b in store.list(budget_rt, _namespace_options(namespace))["items"] if _selects_for_eviction(b, pod)
        ]
        if len(budgets) > 1:
            message = "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support."
            return 500, {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": message,
                "code": 500,
            }
        if budgets:
            budget = store.peek(budget_rt, namespace, budgets[0]["metadata"]["name"])
            assert budget is not None
            status = budget.get("status") or {}
            if not _ready(pod) and status.get("currentHealthy", 0) >= status.get("desiredHealthy", 0) > 0:
                rv = rv or pod["metadata"]["resourceVersion"]
            else:
                _check_and_decrement(store, budget_rt, budget, name, dry_run)
        store.delete(pod_rt, namespace, name, "Background", dry_run, pre.get("uid"), rv)
    return 201, success


def _namespace_options(namespace: str) -> ListOptions:
    return ListOptions(namespace, [], [])


def _selects_for_eviction(budget: JSON, pod: JSON) -> bool:
    selector = (budget.get("spec") or {}).get("selector")
    if not selector or not (selector.get("matchLabels") or selector.get("matchExpressions")):
        return False  # an empty selector matches nothing here
    return label_selector_object_matches(selector, pod["metadata"].get("labels"))


def _check_and_decrement(store: Store, rt: ResourceType, budget: JSON, pod_name: str, dry_run: bool) -> None:
    name = budget["metadata"]["name"]
    status = budget.get("status") or {}
    if status.get("observedGeneration", 0) < budget["metadata"].get("generation", 1):
        raise _too_many_requests(f"The disruption budget {name} is still being processed by the server.", 10)
    allowed = int(status.get("disruptionsAllowed", 0))
    if allowed < 0:
        raise errors.ApiError(
            403,
            "Forbidden",
            f'poddisruptionbudgets.policy "{name}" is forbidden: pdb disruptions allowed is negative',
            {"name": name, "group": "policy", "kind": "poddisruptionbudgets"},
        )
    if allowed == 0:
        raise _too_many_requests(
            f"The disruption budget {name} needs {status.get('desiredHealthy', 0)} healthy pods "
            f"and has {status.get('currentHealthy', 0)} currently",
            0,
        )
    if dry_run:
        return
    updated = copy.deepcopy(budget)
    new_status = updated.setdefault("status", {})
    new_status["disruptionsAllowed"] = allowed - 1
    new_status.setdefault("disruptedPods", {})[pod_name] = now_rfc3339()
    store.commit_internal(rt, updated, budget)
