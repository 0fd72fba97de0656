"""Server-side printing: the meta.k8s.io/v1 Table kubectl asks for on `kubectl get`.

kubectl prints whatever columns the server sends, so these follow kube-apiserver's own
printers for the types served (NAME STATUS ROLES AGE VERSION for nodes, DESIRED CURRENT
READY UP-TO-DATE AVAILABLE NODE SELECTOR AGE for DaemonSets, and so on), and a CRD's
additionalPrinterColumns for custom resources.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from .resources import ResourceType

JSON = dict[str, Any]
Column = tuple[str, str, int, Callable[[JSON], Any]]  # name, type, priority, cell


def human_duration(seconds: float) -> str:
    """kubectl's short age: 45s, 5m10s, 3h, 2d4h, 30d."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 60 * 2:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 60 * 3:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d{hours % 24}h" if hours % 24 else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    return f"{hours // (24 * 365)}y"


def age(stamp: str | None) -> str:
    if not stamp:
        return "<unknown>"
    when = dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
    return human_duration((dt.datetime.now(dt.timezone.utc) - when).total_seconds())


def _meta(obj: JSON) -> JSON:
    return obj.get("metadata") or {}


def _name(obj: JSON) -> str:
    return str(_meta(obj).get("name", ""))


def _age(obj: JSON) -> str:
    return age(_meta(obj).get("creationTimestamp"))


def _node_status(node: JSON) -> str:
    ready = "NotReady"
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            ready = "Ready" if cond.get("status") == "True" else "NotReady"
    if (node.get("spec") or {}).get("unschedulable"):
        ready += ",SchedulingDisabled"
    return ready


def _node_roles(node: JSON) -> str:
    roles = sorted(
        k.split("/", 1)[1]
        for k in (_meta(node).get("labels") or {})
        if k.startswith("node-role.kubernetes.io/") and "/" in k
    )
    return ",".join(r for r in roles if r) or "<none>"


def _node_address(kind: str) -> Callable[[JSON], str]:
    def cell(node: JSON) -> str:
        for addr in (node.get("status") or {}).get("addresses") or []:
            if addr.get("type") == kind:
                return str(addr.get("address"))
        return "<none>"

    return cell


def _node_info(field: str) -> Callable[[JSON], str]:
    return lambda n: str(((n.get("status") or {}).get("nodeInfo") or {}).get(field, "<unknown>"))


def pod_status_reason(pod: JSON) -> str:
    """The STATUS column of `kubectl get pods`, by the same rules as the real printer."""
    status = pod.get("status") or {}
    reason = status.get("reason") or status.get("phase") or "Unknown"
    for cs in reversed(status.get("containerStatuses") or []):
        state = cs.get("state") or {}
        if (state.get("waiting") or {}).get("reason"):
            reason = state["waiting"]["reason"]
            break
        term = state.get("terminated")
        if term:
            if term.get("reason"):
                reason = term["reason"]
            elif term.get("signal"):
                reason = f"Signal:{term['signal']}"
            else:
                reason = f"ExitCode:{term.get('exitCode', 0)}"
            break
    else:
        if reason == "Running" and not any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
        ):
            reason = "Running"
    if _meta(pod).get("deletionTimestamp"):
        reason = "Terminating"
    return str(reason)


def _pod_ready(pod: JSON) -> str:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    total = len((pod.get("spec") or {}).get("containers") or [])
    ready = sum(1 for cs in statuses if cs.get("ready"))
    return f"{ready}/{total}"


def _pod_restarts(pod: JSON) -> str:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    count = sum(int(cs.get("restartCount") or 0) for cs in statuses)
    last = None
    for cs in statuses:
        finished = ((cs.get("lastState") or {}).get("terminated") or {}).get("finishedAt")
        if finished and (last is None or finished > last):
            last = finished
    return f"{count} ({age(last)} ago)" if last and count else str(count)


def _ds_selector(ds: JSON) -> str:
    sel = ((ds.get("spec") or {}).get("template") or {}).get("spec", {}).get("nodeSelector") or {}
    return ",".join(f"{k}={v}" for k, v in sorted(sel.items())) or "<none>"


def _status_int(field: str) -> Callable[[JSON], int]:
    return lambda o: int((o.get("status") or {}).get(field) or 0)


def _event_object(event: JSON) -> str:
    inv = event.get("involvedObject") or {}
    return f"{str(inv.get('kind', '')).lower()}/{inv.get('name', '')}"


def _event_last_seen(event: JSON) -> str:
    return age(event.get("lastTimestamp") or event.get("eventTime") or _meta(event).get("creationTimestamp"))


def _containers(field: str) -> Callable[[JSON], str]:
    def cell(ds: JSON) -> str:
        spec = ((ds.get("spec") or {}).get("template") or {}).get("spec") or {}
        return ",".join(str(c.get(field, "")) for c in spec.get("containers") or [])

    return cell


NAME: Column = ("Name", "string", 0, _name)
AGE: Column = ("Age", "string", 0, _age)

COLUMNS: dict[tuple[str, str], list[Column]] = {
    ("", "Node"): [
        NAME,
        ("Status", "string", 0, _node_status),
        ("Roles", "string", 0, _node_roles),
        AGE,
        ("Version", "string", 0, _node_info("kubeletVersion")),
        ("Internal-IP", "string", 1, _node_address("InternalIP")),
        ("External-IP", "string", 1, _node_address("ExternalIP")),
        ("OS-Image", "string", 1, _node_info("osImage")),
        ("Kernel-Version", "string", 1, _node_info("kernelVersion")),
        ("Container-Runtime", "string", 1, _node_info("containerRuntimeVersion")),
    ],
    ("", "Pod"): [
        NAME,
        ("Ready", "string", 0, _pod_ready),
        ("Status", "string", 0, pod_status_reason),
        ("Restarts", "string", 0, _pod_restarts),
        AGE,
        ("IP", "string", 1, lambda p: (p.get("status") or {}).get("podIP", "<none>")),
        ("Node", "string", 1, lambda p: (p.get("spec") or {}).get("nodeName", "<none>")),
        ("Nominated Node", "string", 1, lambda p: "<none>"),
        ("Readiness Gates", "string", 1, lambda p: "<none>"),
    ],
    ("apps", "DaemonSet"): [
        NAME,
        ("Desired", "integer", 0, _status_int("desiredNumberScheduled")),
        ("Current", "integer", 0, _status_int("currentNumberScheduled")),
        ("Ready", "integer", 0, _status_int("numberReady")),
        ("Up-to-date", "integer", 0, _status_int("updatedNumberScheduled")),
        ("Available", "integer", 0, _status_int("numberAvailable")),
        ("Node Selector", "string", 0, _ds_selector),
        AGE,
        ("Containers", "string", 1, _containers("name")),
        ("Images", "string", 1, _containers("image")),
    ],
    ("", "Event"): [
        ("Last Seen", "string", 0, _event_last_seen),
        ("Type", "string", 0, lambda e: e.get("type", "")),
        ("Reason", "string", 0, lambda e: e.get("reason", "")),
        ("Object", "string", 0, _event_object),
        ("Message", "string", 0, lambda e: e.get("message", "")),
        ("Count", "integer", 1, lambda e: int(e.get("count") or 1)),
        ("Name", "string", 1, _name),
    ],
    ("", "Namespace"): [NAME, ("Status", "string", 0, lambda n: (n.get("status") or {}).get("phase", "")), AGE],
    ("node.k8s.io", "RuntimeClass"): [NAME, ("Handler", "string", 0, lambda r: r.get("handler", "")), AGE],
    ("", "ConfigMap"): [NAME, ("Data", "integer", 0, lambda c: len(c.get("data") or {})), AGE],
    ("scheduling.k8s.io", "PriorityClass"): [
        NAME,
        ("Value", "integer", 0, lambda p: p.get("value", 0)),
        ("Global-Default", "boolean", 0, lambda p: bool(p.get("globalDefault"))),
        AGE,
        ("PreemptionPolicy", "string", 0, lambda p: p.get("preemptionPolicy", "")),
    ],
}


def _jsonpath_cell(path: str) -> Callable[[JSON], Any]:
    parts = [p for p in path.strip().lstrip(".").split(".") if p]

    def cell(obj: JSON) -> Any:
        cur: Any = obj
        for part in parts:
            if not isinstance(cur, dict):
                return None
            cur = cur.get(part)
        if path.strip() == ".metadata.creationTimestamp":
            return age(cur)
        return cur

    return cell


def columns_for(rt: ResourceType) -> list[Column]:
    if rt.custom and rt.printer_columns:
        cols: list[Column] = [NAME]
        for name, kind, path in rt.printer_columns:
            cols.append((name, "string" if kind == "date" else kind, 0, _jsonpath_cell(path)))
        return cols
    group = "" if rt.group == "events.k8s.io" else rt.group
    return COLUMNS.get((group, rt.kind), [NAME, AGE])


def to_table(
    rt: ResourceType, objects: list[JSON], list_meta: JSON, include: str, core_objects: list[JSON] | None = None
) -> JSON:
    """A Table of `objects` (as served); cells are computed from `core_objects` when the
    served shape differs from the stored one (events.k8s.io)."""
    cols = columns_for(rt)
    rows = []
    for n, obj in enumerate(objects):
        source = core_objects[n] if core_objects is not None else obj
        cells = [cell(source) for _, _, _, cell in cols]
        if include == "None":
            row_obj = None
        elif include == "Object":
            row_obj = obj
        else:
            row_obj = {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj.get("metadata", {}),
            }
        row: JSON = {"cells": cells}
        if row_obj is not None:
            row["object"] = row_obj
        rows.append(row)
    definitions = [
        {"name": name, "type": kind, "format": "name" if name == "Name" else "", "description": "", "priority": prio}
        for name, kind, prio, _ in cols
    ]
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": definitions,
        "rows": rows,
    }
