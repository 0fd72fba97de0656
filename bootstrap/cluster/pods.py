"""Reading a pod's state the way `kubectl describe` would show it: status, events, log."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gpunode.bootstrap.cluster.kubectl import Kubectl
from gpunode.bootstrap.core.kube.view import events_about
from gpunode.bootstrap.core.verify.result import PodState

LOG_LINES = 200


def is_ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def pod_node(pod: Mapping[str, Any]) -> str:
    return str((pod.get("spec") or {}).get("nodeName") or "")


def events_of(
    kubectl: Kubectl, namespace: str, kind: str, name: str, obj: Mapping[str, Any] | None = None
) -> tuple[str, ...]:
    """The object's events as "Reason: message", oldest first, warnings after normal ones
    of the same moment (so the last one is the one to show). With `obj`, only the events
    about that object (its UID), not an earlier one of the same name."""
    items = kubectl.list(
        "events", namespace=namespace, field_selector=f"involvedObject.kind={kind},involvedObject.name={name}"
    )
    items = events_about(items, dict(obj) if obj is not None else None)

    def when(event: Mapping[str, Any]) -> tuple[str, int]:
        stamp = str(
            event.get("lastTimestamp")
            or event.get("eventTime")
            or (event.get("metadata") or {}).get("creationTimestamp")
            or ""
        )
        return stamp, 1 if event.get("type") == "Warning" else 0

    return tuple(f"{e.get('reason', '')}: {str(e.get('message', '')).strip()}" for e in sorted(items, key=when))


def log_of(kubectl: Kubectl, namespace: str, name: str, *, previous: bool = False) -> str:
    args = ["logs", "-n", namespace, name, f"--tail={LOG_LINES}"]
    if previous:
        args.append("--previous")
    result = kubectl.run(*args, check=False)
    return result.stdout if result.ok else ""


def pod_state(kubectl: Kubectl, pod: Mapping[str, Any], *, with_log: bool = True) -> PodState:
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
    containers = status.get("containerStatuses") or []
    first: Mapping[str, Any] = containers[0] if containers else {}
    state = first.get("state") or {}
    waiting = state.get("waiting") or {}
    terminated = state.get("terminated") or (first.get("lastState") or {}).get("terminated") or {}
    restarts = int(first.get("restartCount") or 0)
    log = ""
    if with_log and name:
        log = log_of(kubectl, namespace, name)
        if not log.strip() and restarts:
            log = log_of(kubectl, namespace, name, previous=True)
    phase = str(status.get("phase") or "Pending")
    if meta.get("deletionTimestamp"):
        phase = "Terminating"
    return PodState(
        namespace=namespace,
        name=name,
        phase=phase,
        ready=is_ready(pod),
        waiting_reason=waiting.get("reason") or None,
        waiting_message=(waiting.get("message") or None),
        restarts=restarts,
        last_exit_code=terminated.get("exitCode") if terminated else None,
        termination_message=terminated.get("message") or None,
        events=events_of(kubectl, namespace, "Pod", name, pod) if name else (),
        log=log,
    )
