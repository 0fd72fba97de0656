"""Writing objects: server-side apply as field manager `gpunode`, node metadata, deletes.

"Changed" is decided by comparing the object before and after (without status and the
metadata the API server keeps for itself): kubectl prints "serverside-applied" for an
apply that changed nothing, and a controller's status write between two reads bumps
the resourceVersion without anyone having changed what we asked for.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gpunode.bootstrap.cluster.kubectl import Kubectl, KubectlError
from gpunode.bootstrap.core.kube.cluster_plan import comparable
from gpunode.bootstrap.log import log_event

FIELD_MANAGER = "gpunode"


@dataclass(frozen=True)
class Applied:
    obj: dict[str, Any]
    created: bool
    changed: bool

    @property
    def verb(self) -> str:
        return "created" if self.created else ("updated" if self.changed else "unchanged")


def describe(obj: Mapping[str, Any]) -> str:
    """`DaemonSet kube-system/gpunode-device-plugin-...` or `RuntimeClass nvidia`."""
    meta = obj.get("metadata") or {}
    where = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj.get('kind', 'object')} {where}{meta.get('name', '?')}"


def apply_object(
    kubectl: Kubectl,
    obj: Mapping[str, Any],
    before: Mapping[str, Any] | None,
    *,
    dry_run: bool = False,
    force_conflicts: bool = True,
) -> Applied:
    """Server-side apply `obj` as field manager gpunode; `before` is the object as read.

    `force_conflicts`: gpunode is the authority over what it owns; a field someone changed
    by hand on gpunode's object is taken back (the apply says so by changing it).
    """
    args = ["apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "-o", "json", "-f", "-"]
    if force_conflicts:
        args.insert(3, "--force-conflicts")
    if dry_run:
        args.insert(3, "--dry-run=server")
    result = kubectl.run(*args, stdin=json.dumps(obj))
    try:
        after = json.loads(result.stdout)
    except ValueError as exc:
        raise KubectlError(
            f"`kubectl apply` of {describe(obj)} printed no JSON: {result.stdout[:200]!r}", result=result
        ) from exc
    if isinstance(after, dict) and after.get("kind") == "List":
        items = after.get("items") or []
        after = items[0] if items else {}
    if not isinstance(after, dict):
        raise KubectlError(f"`kubectl apply` of {describe(obj)} printed unexpected JSON", result=result)
    applied = Applied(after, before is None, comparable(before) != comparable(after))
    if not dry_run:
        log_event("applied", object=describe(obj), result=applied.verb)
    return applied


def patch_metadata(
    kubectl: Kubectl, kind: str, name: str, patch: Mapping[str, Any], *, dry_run: bool = False
) -> dict[str, Any]:
    """A JSON merge patch of labels/annotations, as field manager gpunode.

    A merge patch, not an apply: applying a Node that has just gone away would create a
    bogus one, while a patch of a missing node fails with NotFound.
    """
    args = [
        "patch",
        kind,
        name,
        "--type=merge",
        f"--field-manager={FIELD_MANAGER}",
        "-p",
        json.dumps(patch),
        "-o",
        "json",
    ]
    if dry_run:
        args.insert(3, "--dry-run=server")
    result = kubectl.run(*args)
    if not dry_run:
        log_event("patched", object=f"{kind}/{name}", patch=json.dumps(patch, sort_keys=True))
    data = json.loads(result.stdout)
    return data if isinstance(data, dict) else {}


def delete_object(
    kubectl: Kubectl, kind: str, name: str, namespace: str | None = None, *, dry_run: bool = False
) -> None:
    args = ["delete", kind, name, "--ignore-not-found", "--wait=false"]
    if namespace:
        args += ["-n", namespace]
    if dry_run:
        args.append("--dry-run=server")
    kubectl.run(*args)
    if not dry_run:
        log_event("deleted", object=f"{kind} {namespace + '/' if namespace else ''}{name}")
