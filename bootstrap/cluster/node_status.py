"""Publishing the agent's verdict: the Node's `GPUNodeReady` condition and Events on it.

The condition goes through the Node's status subresource as a strategic merge patch, the
way node-problem-detector writes its conditions: `.status.conditions` merges by `type`, so
the kubelet's own conditions are never overwritten (a JSON merge patch would replace the
whole list). Events are core/v1 Events about the Node, created in the agent's namespace
(`kubectl describe node` finds node events in every namespace).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from gpunode.bootstrap.cluster.kubectl import Kubectl, KubectlError
from gpunode.bootstrap.cluster.objects import FIELD_MANAGER
from gpunode.bootstrap.core.kube.node_condition import (
    NodeCondition,
    NodeEventSpec,
    change_event,
    condition_patch,
    node_event,
)
from gpunode.bootstrap.log import log_event


def read_node(kubectl: Kubectl, name: str) -> dict[str, Any]:
    node = kubectl.get("node", name)
    if node is None:
        raise KubectlError(
            f"the cluster has no node {name!r}.",
            fix="run the agent with NODE_NAME set to the node's name (the DaemonSet sets it from spec.nodeName)",
        )
    return node


def patch_node_status(kubectl: Kubectl, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
    result = kubectl.run(
        "patch",
        "node",
        name,
        "--subresource=status",
        "--type=strategic",
        f"--field-manager={FIELD_MANAGER}",
        "-p",
        json.dumps(patch, sort_keys=True),
        "-o",
        "json",
    )
    data = json.loads(result.stdout)
    return data if isinstance(data, dict) else {}


def create_event(kubectl: Kubectl, event: Mapping[str, Any]) -> None:
    kubectl.run("create", "-f", "-", f"--field-manager={FIELD_MANAGER}", "-o", "name", stdin=json.dumps(event))


def publish(
    kubectl: Kubectl,
    node: Mapping[str, Any],
    wanted: NodeCondition,
    *,
    now: datetime,
    heartbeat_seconds: float,
    event_namespace: str,
    reporting_instance: str,
) -> tuple[dict[str, Any] | None, NodeEventSpec | None]:
    """Write the condition when it changed (or its heartbeat is due) and an Event when the
    verdict changed. Returns (the node after the write or None, the event written or None)."""
    patch = condition_patch(node, wanted, now, heartbeat_seconds)
    if patch is None:
        return None, None
    event = change_event(node, wanted)
    name = str((node.get("metadata") or {}).get("name"))
    after = patch_node_status(kubectl, name, patch)
    if event is not None:
        body = node_event(
            node,
            event,
            namespace=event_namespace,
            now=now,
            reporting_instance=reporting_instance,
            suffix=f"{int(now.timestamp() * 1000):x}{os.getpid():x}",
        )
        create_event(kubectl, body)
        log_event("node_condition", node=name, status=wanted.status, reason=wanted.reason)
    return after, event
