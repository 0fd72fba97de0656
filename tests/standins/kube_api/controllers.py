"""The cluster's moving parts that gpunode's checks read the results of.

- DaemonSet controller: which nodes a DaemonSet should run on (node selector, required
  node affinity, NoSchedule/NoExecute taints against tolerations: F15 in docs/failure-modes.md), one
  pod per such node, RollingUpdate (maxUnavailable) or OnDelete replacement when the
  template changes, and the status `kubectl rollout status` reads.
- Scheduler: binds pods that have no node (a DaemonSet's pods, a verify workload pod) to a
  node that fits (unschedulable, taints, affinity, requested resources such as
  `nvidia.com/gpu` against allocatable), or leaves them Pending with the scheduler's own
  FailedScheduling message: `0/1 nodes are available: 1 Insufficient nvidia.com/gpu...`.
- Event recorder, folding repeats into a count as the real one does.
- Kubelet-side status writes for the test harness (`set_pod_phase`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from fractions import Fraction
from typing import Any

from . import errors
from .resources import ResourceType
from .selectors import Requirement, label_selector_object_matches
from .store import Store, now_rfc3339, random_suffix

JSON = dict[str, Any]

_SUFFIXES: dict[str, Fraction] = {
    "Ki": Fraction(2**10),
    "Mi": Fraction(2**20),
    "Gi": Fraction(2**30),
    "Ti": Fraction(2**40),
    "Pi": Fraction(2**50),
    "Ei": Fraction(2**60),
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 1000),
    "": Fraction(1),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
}


def parse_quantity(value: Any) -> Fraction:
    """A Kubernetes resource quantity ("2", "500m", "8Gi", "1e3") as an exact number."""
    if isinstance(value, (int, float)):
        return Fraction(value)
    m = re.fullmatch(r"\s*([+-]?[0-9.]+)(?:[eE]([+-]?[0-9]+))?(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?\s*", str(value))
    if not m:
        raise ValueError(f"quantities must match the regular expression: {value!r}")
    number = Fraction(m.group(1))
    if m.group(2):
        number *= Fraction(10) ** int(m.group(2))
    return number * _SUFFIXES[m.group(3) or ""]


# Taints, tolerations, affinity ---------------------------------------------------------


def tolerates(tolerations: list[JSON], taint: JSON) -> bool:
    for tol in tolerations or []:
        effect = tol.get("effect") or ""
        if effect and effect != taint.get("effect"):
            continue
        key = tol.get("key") or ""
        operator = tol.get("operator") or "Equal"
        if operator == "Exists" and (not key or key == taint.get("key")):
            return True
        if operator == "Equal" and key == taint.get("key") and (tol.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def untolerated_taint(tolerations: list[JSON], node: JSON, effects: tuple[str, ...]) -> JSON | None:
    for taint in (node.get("spec") or {}).get("taints") or []:
        if taint.get("effect") in effects and not tolerates(tolerations, taint):
            return dict(taint)
    return None


def _expression_matches(expr: JSON, labels: dict[str, str]) -> bool:
    op = expr.get("operator", "")
    key = expr.get("key", "")
    values = tuple(expr.get("values") or ())
    mapping = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!", "Gt": "gt", "Lt": "lt"}
    if op not in mapping:
        return False
    return Requirement(key, mapping[op], values).matches(labels)


def node_selection_matches(pod_spec: JSON, node: JSON) -> bool:
    """nodeSelector and required node affinity, as the NodeAffinity filter checks them."""
    labels = (node.get("metadata") or {}).get("labels") or {}
    for key, value in (pod_spec.get("nodeSelector") or {}).items():
        if labels.get(key) != value:
            return False
    required = ((pod_spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    )
    if not required:
        return True
    fields = {"metadata.name": node["metadata"]["name"]}
    for term in required.get("nodeSelectorTerms") or []:
        exprs = term.get("matchExpressions") or []
        field_exprs = term.get("matchFields") or []
        if not exprs and not field_exprs:
            continue
        if all(_expression_matches(e, labels) for e in exprs) and all(
            _expression_matches(e, fields) for e in field_exprs
        ):
            return True
    return False


def pod_requests(pod: JSON) -> dict[str, Fraction]:
    """Requested resources; a limit without a request counts as the request (defaulting)."""
    total: dict[str, Fraction] = {}
    for c in (pod.get("spec") or {}).get("containers") or []:
        res = c.get("resources") or {}
        merged = dict(res.get("limits") or {})
        merged.update(res.get("requests") or {})
        for name, qty in merged.items():
            total[name] = total.get(name, Fraction(0)) + parse_quantity(qty)
    return total


def pod_is_ready(pod: JSON) -> bool:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def pod_is_terminal(pod: JSON) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def _involved_reference(obj: JSON) -> JSON:
    meta = obj.get("metadata") or {}
    ref = {
        "kind": obj.get("kind", ""),
        "name": meta.get("name", ""),
        "uid": meta.get("uid", ""),
        "apiVersion": obj.get("apiVersion", ""),
        "resourceVersion": meta.get("resourceVersion", ""),
    }
    if meta.get("namespace"):
        ref["namespace"] = meta["namespace"]
    return ref


# DaemonSet tolerations the real controller adds to every daemon pod.
DAEMON_TOLERATIONS = (
    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/disk-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/memory-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/pid-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"},
)


class Controllers:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.pod_ip_counter = 0
        store.controllers.append(self.sync_daemonsets)
        store.controllers.append(self.schedule_pending_pods)
        store.prepare_bound_pod = self.mark_created_bound

    # Helpers ---------------------------------------------------------------------------

    def _rt(self, name: str) -> ResourceType:
        return self.store.resolve(name)

    def _all(self, name: str) -> list[JSON]:
        rt = self._rt(name)
        return [obj for _, obj in sorted(self.store.objects.get(rt.key, {}).items())]

    def record_event(
        self,
        involved: JSON,
        event_type: str,
        reason: str,
        message: str,
        component: str,
        host: str = "",
        namespace: str | None = None,
    ) -> JSON:
        """Record an event about `involved`, folding a repeat into its count. Events about
        cluster-scoped objects go to `namespace` (default: "default")."""
        with self.store.writing():
            ref = _involved_reference(involved)
            namespace = ref.get("namespace") or namespace or "default"
            rt = self._rt("Event")
            stamp = now_rfc3339()
            for key, event in self.store.objects.get(rt.key, {}).items():
                inv = event.get("involvedObject") or {}
                if (
                    key[0] == namespace
                    and inv.get("uid") == ref["uid"]
                    and inv.get("name") == ref["name"]
                    and inv.get("kind") == ref["kind"]
                    and event.get("reason") == reason
                    and event.get("message") == message
                    and (event.get("source") or {}).get("component") == component
                ):
                    new = copy.deepcopy(event)
                    new["count"] = int(event.get("count") or 1) + 1
                    new["lastTimestamp"] = stamp
                    self.store.commit_internal(rt, new, event)
                    return new
            source = {"component": component}
            if host:
                source["host"] = host
            body = {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": f"{ref['name']}.{random_suffix(16)}", "namespace": namespace},
                "involvedObject": ref,
                "reason": reason,
                "message": message,
                "type": event_type,
                "source": source,
                "firstTimestamp": stamp,
                "lastTimestamp": stamp,
                "count": 1,
                "eventTime": None,
                "reportingComponent": component,
                "reportingInstance": host,
            }
            return self.store.create(rt, namespace, body, component)

    # DaemonSet controller --------------------------------------------------------------

    @staticmethod
    def template_hash(ds: JSON) -> str:
        text = json.dumps((ds.get("spec") or {}).get("template") or {}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    @staticmethod
    def node_decision(ds: JSON, node: JSON) -> tuple[bool, bool]:
        """(should run, should continue running), as the DaemonSet controller decides."""
        spec = ((ds.get("spec") or {}).get("template") or {}).get("spec") or {}
        if not node_selection_matches(spec, node):
            return False, False
        tolerations = list(spec.get("tolerations") or []) + list(DAEMON_TOLERATIONS)
        if untolerated_taint(tolerations, node, ("NoExecute",)):
            return False, False
        if untolerated_taint(tolerations, node, ("NoSchedule",)):
            return False, True
        return True, True

    @staticmethod
    def pod_node(pod: JSON) -> str:
        spec = pod.get("spec") or {}
        if spec.get("nodeName"):
            return str(spec["nodeName"])
        required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
            "requiredDuringSchedulingIgnoredDuringExecution"
        ) or {}
        for term in required.get("nodeSelectorTerms") or []:
            for expr in term.get("matchFields") or []:
                if expr.get("key") == "metadata.name" and expr.get("values"):
                    return str(expr["values"][0])
        return ""

    def _daemon_pod(self, ds: JSON, node_name: str, revision: str) -> JSON:
        template = copy.deepcopy((ds.get("spec") or {}).get("template") or {})
        tmeta = template.get("metadata") or {}
        labels = dict(tmeta.get("labels") or {})
        labels["controller-revision-hash"] = revision
        labels["pod-template-generation"] = str(ds["metadata"].get("generation", 1))
        spec = template.get("spec") or {}
        tolerations = list(spec.get("tolerations") or [])
        for tol in DAEMON_TOLERATIONS:
            if tol not in tolerations:
                tolerations.append(dict(tol))
        if spec.get("hostNetwork"):
            extra = {"key": "node.kubernetes.io/network-unavailable", "operator": "Exists", "effect": "NoSchedule"}
            if extra not in tolerations:
                tolerations.append(extra)
        spec["tolerations"] = tolerations
        affinity = spec.setdefault("affinity", {})
        affinity.setdefault("nodeAffinity", {})["requiredDuringSchedulingIgnoredDuringExecution"] = {
            "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node_name]}]}]
        }
        meta: JSON = {
            "generateName": f"{ds['metadata']['name']}-",
            "labels": labels,
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "DaemonSet",
                    "name": ds["metadata"]["name"],
                    "uid": ds["metadata"]["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        }
        if tmeta.get("annotations"):
            meta["annotations"] = dict(tmeta["annotations"])
        return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}

    def sync_daemonsets(self) -> None:
        for ds in self._all("DaemonSet"):
            self._sync_daemonset(ds)

    def _sync_daemonset(self, ds: JSON) -> None:
        store = self.store
        pod_rt = self._rt("Pod")
        ds_rt = self._rt("DaemonSet")
        namespace = ds["metadata"]["namespace"]
        uid = ds["metadata"]["uid"]
        revision = self.template_hash(ds)
        nodes = {n["metadata"]["name"]: n for n in self._all("Node")}

        def owned_pods() -> list[JSON]:
            return [
                p
                for p in self._all("Pod")
                if p["metadata"].get("namespace") == namespace
                and any(r.get("uid") == uid and r.get("controller") for r in p["metadata"].get("ownerReferences") or [])
            ]

        def delete_pod(pod: JSON) -> None:
            store.remove_internal(pod_rt, namespace, pod["metadata"]["name"])
            self.record_event(
                ds, "Normal", "SuccessfulDelete", f"Deleted pod: {pod['metadata']['name']}", "daemonset-controller"
            )

        decisions = {name: self.node_decision(ds, node) for name, node in nodes.items()}
        by_node: dict[str, list[JSON]] = {}
        for pod in owned_pods():
            by_node.setdefault(self.pod_node(pod), []).append(pod)

        for node_name, pods in by_node.items():
            should_run, should_continue = decisions.get(node_name, (False, False))
            failed = [p for p in pods if (p.get("status") or {}).get("phase") == "Failed"]
            for pod in failed:
                delete_pod(pod)
            alive = [p for p in pods if p not in failed]
            if not should_continue:
                for pod in alive:
                    delete_pod(pod)
            elif len(alive) > 1:
                alive.sort(
                    key=lambda p: (
                        p["metadata"]["labels"].get("controller-revision-hash") != revision,
                        not pod_is_ready(p),
                        p["metadata"].get("creationTimestamp", ""),
                    )
                )
                for pod in alive[1:]:
                    delete_pod(pod)

        by_node = {}
        for pod in owned_pods():
            by_node.setdefault(self.pod_node(pod), []).append(pod)
        for node_name in sorted(nodes):
            if decisions[node_name][0] and not by_node.get(node_name):
                body = self._daemon_pod(ds, node_name, revision)
                try:
                    pod = store.create(pod_rt, namespace, body, "kube-controller-manager")
                except errors.ApiError as exc:
                    self.record_event(
                        ds, "Warning", "FailedCreate", f"Error creating: {exc.message}", "daemonset-controller"
                    )
                    continue
                by_node[node_name] = [pod]
                self.record_event(
                    ds, "Normal", "SuccessfulCreate", f"Created pod: {pod['metadata']['name']}", "daemonset-controller"
                )

        strategy = (ds.get("spec") or {}).get("updateStrategy") or {}
        if strategy.get("type", "RollingUpdate") == "RollingUpdate":
            should = [n for n in sorted(nodes) if decisions[n][0]]
            max_unavailable = _resolve_int_or_percent(
                (strategy.get("rollingUpdate") or {}).get("maxUnavailable", 1), len(should)
            )
            unavailable = sum(1 for n in should if not any(pod_is_ready(p) for p in by_node.get(n, [])))
            for node_name in should:
                for pod in by_node.get(node_name, []):
                    if pod["metadata"].get("labels", {}).get("controller-revision-hash") == revision:
                        continue
                    if not pod_is_ready(pod):
                        delete_pod(pod)
                    elif unavailable < max_unavailable:
                        delete_pod(pod)
                        unavailable += 1

        self._update_status(ds_rt, ds, nodes, decisions, revision, owned_pods())

    def _update_status(
        self,
        ds_rt: ResourceType,
        ds: JSON,
        nodes: dict[str, JSON],
        decisions: dict[str, tuple[bool, bool]],
        revision: str,
        pods: list[JSON],
    ) -> None:
        by_node: dict[str, list[JSON]] = {}
        for pod in pods:
            by_node.setdefault(self.pod_node(pod), []).append(pod)
        desired = current = updated = ready = available = misscheduled = 0
        for name in nodes:
            should_run = decisions[name][0]
            node_pods = by_node.get(name, [])
            if should_run:
                desired += 1
                if node_pods:
                    current += 1
                if any(p["metadata"].get("labels", {}).get("controller-revision-hash") == revision for p in node_pods):
                    updated += 1
                if any(pod_is_ready(p) for p in node_pods):
                    ready += 1
                    available += 1
            elif node_pods:
                misscheduled += 1
        # As the Go type serialises it: the last four are omitempty, absent when zero.
        status: JSON = {
            "currentNumberScheduled": current,
            "desiredNumberScheduled": desired,
            "numberMisscheduled": misscheduled,
            "numberReady": ready,
            "observedGeneration": ds["metadata"].get("generation", 1),
        }
        if updated:
            status["updatedNumberScheduled"] = updated
        if available:
            status["numberAvailable"] = available
        if desired - available:
            status["numberUnavailable"] = desired - available
        current_obj = self.store.peek(ds_rt, ds["metadata"]["namespace"], ds["metadata"]["name"])
        if current_obj is None or current_obj.get("status") == status:
            return
        new = copy.deepcopy(current_obj)
        new["status"] = status
        self.store.commit_internal(ds_rt, new, current_obj)

    # Scheduler -------------------------------------------------------------------------

    def _usage(self) -> dict[str, dict[str, Fraction]]:
        usage: dict[str, dict[str, Fraction]] = {}
        for pod in self._all("Pod"):
            node = (pod.get("spec") or {}).get("nodeName")
            if not node or pod_is_terminal(pod):
                continue
            used = usage.setdefault(node, {"pods": Fraction(0)})
            used["pods"] += 1
            for res, qty in pod_requests(pod).items():
                used[res] = used.get(res, Fraction(0)) + qty
        return usage

    @staticmethod
    def filter_node(pod: JSON, node: JSON, used: dict[str, Fraction]) -> list[str]:
        """Why `pod` cannot go to `node` (empty: it fits), first failing filter only."""
        spec = pod.get("spec") or {}
        tolerations = spec.get("tolerations") or []
        if (node.get("spec") or {}).get("unschedulable") and not tolerates(
            tolerations, {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}
        ):
            return ["node(s) were unschedulable"]
        taint = untolerated_taint(tolerations, node, ("NoSchedule", "NoExecute"))
        if taint is not None:
            return [f"node(s) had untolerated taint {{{taint.get('key', '')}: {taint.get('value', '')}}}"]
        if not node_selection_matches(spec, node):
            return ["node(s) didn't match Pod's node affinity/selector"]
        allocatable = (node.get("status") or {}).get("allocatable") or {}
        reasons = []
        if "pods" in allocatable and used.get("pods", 0) + 1 > parse_quantity(allocatable["pods"]):
            reasons.append("Too many pods")
        for res, qty in sorted(pod_requests(pod).items()):
            if qty <= 0:
                continue
            have = parse_quantity(allocatable[res]) if res in allocatable else Fraction(0)
            if used.get(res, Fraction(0)) + qty > have:
                reasons.append(f"Insufficient {res}")
        return reasons

    def schedule_pending_pods(self) -> None:
        pod_rt = self._rt("Pod")
        nodes = self._all("Node")
        for pod in self._all("Pod"):
            spec = pod.get("spec") or {}
            if (
                spec.get("nodeName")
                or pod_is_terminal(pod)
                or spec.get("schedulerName", "default-scheduler") != "default-scheduler"
            ):
                continue
            usage = self._usage()
            histogram: dict[str, int] = {}
            fits = []
            for node in nodes:
                reasons = self.filter_node(pod, node, usage.get(node["metadata"]["name"], {}))
                if reasons:
                    for reason in reasons:
                        histogram[reason] = histogram.get(reason, 0) + 1
                else:
                    fits.append(node)
            if fits:
                # Least loaded first, then by name: deterministic for tests.
                fits.sort(key=lambda n: (usage.get(n["metadata"]["name"], {}).get("pods", 0), n["metadata"]["name"]))
                self.bind(pod_rt, pod, fits[0])
            else:
                self._mark_unschedulable(pod_rt, pod, nodes, histogram)

    def _mark_unschedulable(
        self, pod_rt: ResourceType, pod: JSON, nodes: list[JSON], histogram: dict[str, int]
    ) -> None:
        total = len(nodes)
        if not total:
            message = "no nodes available to schedule pods"
        else:
            parts = sorted(f"{count} {reason}" for reason, count in histogram.items())
            resolvable = sum(
                count
                for reason, count in histogram.items()
                if reason.startswith("Insufficient") or reason == "Too many pods"
            )
            preemption = []
            if resolvable:
                preemption.append(f"{resolvable} No preemption victims found for incoming pod")
            if total - resolvable:
                preemption.append(f"{total - resolvable} Preemption is not helpful for scheduling")
            message = (
                f"0/{total} nodes are available: {', '.join(parts)}. preemption: "
                f"0/{total} nodes are available: {', '.join(sorted(preemption))}."
            )
        condition = {
            "type": "PodScheduled",
            "status": "False",
            "lastProbeTime": None,
            "lastTransitionTime": now_rfc3339(),
            "reason": "Unschedulable",
            "message": message,
        }
        current = [c for c in (pod.get("status") or {}).get("conditions") or [] if c.get("type") == "PodScheduled"]
        if current and current[0].get("message") == message:
            return
        new = copy.deepcopy(pod)
        status = new.setdefault("status", {})
        status["conditions"] = [c for c in status.get("conditions") or [] if c.get("type") != "PodScheduled"] + [
            condition
        ]
        self.store.commit_internal(pod_rt, new, pod)
        self.record_event(new, "Warning", "FailedScheduling", message, "default-scheduler")

    def bind(self, pod_rt: ResourceType, pod: JSON, node: JSON) -> None:
        new = copy.deepcopy(pod)
        node_name = node["metadata"]["name"]
        new["spec"]["nodeName"] = node_name
        self._mark_bound(new, node)
        self.store.commit_internal(pod_rt, new, pod)
        ns, name = new["metadata"]["namespace"], new["metadata"]["name"]
        self.record_event(
            new, "Normal", "Scheduled", f"Successfully assigned {ns}/{name} to {node_name}", "default-scheduler"
        )

    def _mark_bound(self, pod: JSON, node: JSON | None) -> None:
        """Status of a pod a kubelet has just picked up: scheduled, containers being created."""
        status = pod.setdefault("status", {})
        stamp = now_rfc3339()
        status["conditions"] = [c for c in status.get("conditions") or [] if c.get("type") != "PodScheduled"] + [
            {"type": "PodScheduled", "status": "True", "lastProbeTime": None, "lastTransitionTime": stamp}
        ]
        status["phase"] = "Pending"
        if node is not None:
            host_ip = _node_ip(node)
            if host_ip:
                status["hostIP"] = host_ip
                status["hostIPs"] = [{"ip": host_ip}]
        status["startTime"] = stamp
        status["containerStatuses"] = [
            {
                "name": c.get("name", ""),
                "image": c.get("image", ""),
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "started": False,
                "state": {"waiting": {"reason": "ContainerCreating"}},
                "lastState": {},
            }
            for c in (pod.get("spec") or {}).get("containers") or []
        ]

    def mark_created_bound(self, pod: JSON) -> None:
        """A pod created with spec.nodeName already set skips the scheduler."""
        node = self.store.peek(self._rt("Node"), None, pod["spec"]["nodeName"])
        self._mark_bound(pod, node)

    # Kubelet-side status ---------------------------------------------------------------

    def set_pod_phase(
        self,
        namespace: str,
        name: str,
        phase: str,
        ready: bool = False,
        waiting_reason: str | None = None,
        message: str | None = None,
        restart_count: int | None = None,
        exit_code: int | None = None,
        container: str | None = None,
    ) -> JSON:
        with self.store.writing():
            pod_rt = self._rt("Pod")
            pod = self.store.peek(pod_rt, namespace, name)
            if pod is None:
                raise errors.not_found(pod_rt, name)
            new = copy.deepcopy(pod)
            status = new.setdefault("status", {})
            stamp = now_rfc3339()
            node_name = (new.get("spec") or {}).get("nodeName", "")
            events: list[tuple[str, str, str]] = []
            statuses = {s["name"]: s for s in status.get("containerStatuses") or []}
            for c in (new.get("spec") or {}).get("containers") or []:
                cname = c.get("name", "")
                if container and cname != container:
                    continue
                prev = statuses.get(cname) or {
                    "name": cname,
                    "image": c.get("image", ""),
                    "imageID": "",
                    "restartCount": 0,
                    "lastState": {},
                }
                cs = copy.deepcopy(prev)
                if restart_count is not None:
                    cs["restartCount"] = restart_count
                was_running = "running" in (prev.get("state") or {})
                if waiting_reason:
                    cs["state"] = {"waiting": {"reason": waiting_reason}}
                    if message:
                        cs["state"]["waiting"]["message"] = message
                    cs["ready"] = False
                    cs["started"] = False
                    if waiting_reason == "CrashLoopBackOff":
                        cs["lastState"] = {
                            "terminated": {
                                "exitCode": exit_code if exit_code is not None else 1,
                                "reason": "Error",
                                "startedAt": stamp,
                                "finishedAt": stamp,
                            }
                        }
                        events.append(
                            (
                                "Warning",
                                "BackOff",
                                f"Back-off restarting failed container {cname} in pod "
                                f"{name}_{namespace}({new['metadata']['uid']})",
                            )
                        )
                    elif waiting_reason in ("ImagePullBackOff", "ErrImagePull"):
                        events.append(("Normal", "BackOff", f'Back-off pulling image "{c.get("image", "")}"'))
                        events.append(("Warning", "Failed", f"Error: {waiting_reason}"))
                    elif waiting_reason in ("CreateContainerError", "RunContainerError", "CreateContainerConfigError"):
                        events.append(("Warning", "Failed", f"Error: {message or waiting_reason}"))
                elif phase in ("Succeeded", "Failed"):
                    code = exit_code if exit_code is not None else (0 if phase == "Succeeded" else 1)
                    cs["state"] = {
                        "terminated": {
                            "exitCode": code,
                            "reason": "Completed" if code == 0 else "Error",
                            "startedAt": stamp,
                            "finishedAt": stamp,
                        }
                    }
                    if message:
                        cs["state"]["terminated"]["message"] = message
                    cs["ready"] = False
                    cs["started"] = False
                elif phase == "Running":
                    cs["state"] = {"running": {"startedAt": stamp}}
                    cs["ready"] = ready
                    cs["started"] = True
                    if not was_running:
                        events.append(("Normal", "Started", f"Started container {cname}"))
                else:
                    cs["state"] = {"waiting": {"reason": "ContainerCreating"}}
                    cs["ready"] = False
                    cs["started"] = False
                statuses[cname] = cs
            order = [c.get("name", "") for c in (new.get("spec") or {}).get("containers") or []]
            status["containerStatuses"] = [statuses[n] for n in order if n in statuses]
            status["phase"] = phase
            all_ready = bool(status["containerStatuses"]) and all(s.get("ready") for s in status["containerStatuses"])
            if phase == "Running" and not status.get("podIP"):
                self.pod_ip_counter += 1
                ip = f"198.51.100.{(self.pod_ip_counter % 250) + 1}"
                status["podIP"] = ip
                status["podIPs"] = [{"ip": ip}]
            conds = {c["type"]: c for c in status.get("conditions") or []}

            def cond(kind: str, ok: bool, reason: str = "") -> None:
                old = conds.get(kind)
                value = "True" if ok else "False"
                if old and old.get("status") == value:
                    return
                entry: JSON = {"type": kind, "status": value, "lastProbeTime": None, "lastTransitionTime": stamp}
                if reason and not ok:
                    entry["reason"] = reason
                conds[kind] = entry

            cond("PodReadyToStartContainers", True)
            cond("Initialized", True)
            cond("Ready", all_ready, "ContainersNotReady")
            cond("ContainersReady", all_ready, "ContainersNotReady")
            cond("PodScheduled", True)
            status["conditions"] = [
                conds[k]
                for k in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled")
                if k in conds
            ]
            self.store.commit_internal(pod_rt, new, pod)
            for event_type, reason, text in events:
                self.record_event(new, event_type, reason, text, "kubelet", node_name)
            return self.store.view(pod_rt, new)


def _node_ip(node: JSON) -> str:
    for addr in (node.get("status") or {}).get("addresses") or []:
        if addr.get("type") == "InternalIP":
            return str(addr.get("address", ""))
    return ""


def _resolve_int_or_percent(value: Any, total: int) -> int:
    if isinstance(value, str) and value.endswith("%"):
        resolved = -((-int(value[:-1]) * total) // 100)  # rounded up, as for DaemonSets
    else:
        resolved = int(value)
    return max(resolved, 1)


def selector_matches_pod(ds: JSON, pod: JSON) -> bool:
    return label_selector_object_matches((ds.get("spec") or {}).get("selector"), pod["metadata"].get("labels"))
