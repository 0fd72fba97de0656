"""Events: stored as core v1 Events, also served as events.k8s.io/v1 (the newer shape).

The stand-in records the events a real cluster's components would (the scheduler's
FailedScheduling, the DaemonSet controller's FailedCreate, the kubelet's BackOff) and
the ones a test adds; repeated events are folded into one with a count, as the real
event recorder does.
"""

from __future__ import annotations

import copy
from typing import Any

JSON = dict[str, Any]


def to_events_v1(core: JSON) -> JSON:
    """core/v1 Event -> events.k8s.io/v1 Event."""
    out: JSON = {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": copy.deepcopy(core.get("metadata", {})),
        "eventTime": core.get("eventTime"),
        "reason": core.get("reason"),
        "regarding": copy.deepcopy(core.get("involvedObject", {})),
        "note": core.get("message"),
        "type": core.get("type"),
        "reportingController": core.get("reportingComponent") or (core.get("source") or {}).get("component", ""),
        "reportingInstance": core.get("reportingInstance") or (core.get("source") or {}).get("host", ""),
        "deprecatedSource": copy.deepcopy(core.get("source", {})),
        "deprecatedFirstTimestamp": core.get("firstTimestamp"),
        "deprecatedLastTimestamp": core.get("lastTimestamp"),
        "deprecatedCount": core.get("count"),
    }
    if core.get("action"):
        out["action"] = core["action"]
    if core.get("related"):
        out["related"] = copy.deepcopy(core["related"])
    return {k: v for k, v in out.items() if v is not None}


def from_events_v1(new: JSON) -> JSON:
    """events.k8s.io/v1 Event -> core/v1 Event (what a create through events.k8s.io stores)."""
    out: JSON = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": copy.deepcopy(new.get("metadata", {})),
        "involvedObject": copy.deepcopy(new.get("regarding", {})),
        "reason": new.get("reason"),
        "message": new.get("note"),
        "type": new.get("type"),
        "eventTime": new.get("eventTime"),
        "reportingComponent": new.get("reportingController", ""),
        "reportingInstance": new.get("reportingInstance", ""),
        "source": copy.deepcopy(new.get("deprecatedSource") or {}),
        "firstTimestamp": new.get("deprecatedFirstTimestamp"),
        "lastTimestamp": new.get("deprecatedLastTimestamp"),
        "count": new.get("deprecatedCount"),
    }
    if new.get("action"):
        out["action"] = new["action"]
    return {k: v for k, v in out.items() if v is not None}


# events.k8s.io field selectors name the new fields; map them to the stored ones.
EVENTS_V1_FIELDS = {
    "regarding.kind": "involvedObject.kind",
    "regarding.name": "involvedObject.name",
    "regarding.namespace": "involvedObject.namespace",
    "regarding.uid": "involvedObject.uid",
    "regarding.apiVersion": "involvedObject.apiVersion",
    "regarding.resourceVersion": "involvedObject.resourceVersion",
    "regarding.fieldPath": "involvedObject.fieldPath",
    "reportingController": "reportingComponent",
}
