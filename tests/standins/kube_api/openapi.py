"""OpenAPI v3, as far as kubectl reads it for the commands gpunode runs.

kubectl (apply, create, replace with the default `--validate=strict`) first asks whether
the server validates fields itself: it reads /openapi/v3, then the document of the
object's group-version, and looks for a PATCH operation tagged with the object's
group-version-kind that takes a `fieldValidation` query parameter. If it finds one it
sends `fieldValidation=Strict` and leaves validation to the server; if it cannot get the
documents it fails with "failed to download openapi". So each group-version document
lists the PATCH operation of each of its kinds with those parameters; schemas are left
out (nothing gpunode runs needs them: no client-side apply, no `kubectl explain`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .resources import ResourceType

JSON = dict[str, Any]

_PATCH_PARAMS = ("dryRun", "fieldManager", "fieldValidation", "force")


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def v3_group_version(types: list[ResourceType], gv_path: str) -> JSON | None:
    selected = [rt for rt in types if _gv_path(rt.group, rt.version) == gv_path]
    if not selected:
        return None
    paths: JSON = {}
    for rt in selected:
        prefix = "/" + gv_path + ("/namespaces/{namespace}" if rt.namespaced else "")
        params = [{"name": p, "in": "query", "schema": {"type": "string", "uniqueItems": True}} for p in _PATCH_PARAMS]
        gvk = {"group": rt.group, "version": rt.version, "kind": rt.kind}
        paths[f"{prefix}/{rt.plural}/{{name}}"] = {
            "patch": {
                "operationId": f"patch{rt.kind}",
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": gvk,
                "parameters": params,
                "requestBody": {
                    "content": {
                        "application/apply-patch+yaml": {"schema": {"type": "object"}},
                        "application/merge-patch+json": {"schema": {"type": "object"}},
                        "application/strategic-merge-patch+json": {"schema": {"type": "object"}},
                    }
                },
                "responses": {"200": {"description": "OK"}, "201": {"description": "Created"}},
            },
            "parameters": [
                {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "uniqueItems": True}}
            ],
        }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.3"},
        "paths": paths,
        "components": {"schemas": {}},
    }


def v3_root(types: list[ResourceType]) -> JSON:
    paths: JSON = {}
    for gv in sorted({_gv_path(rt.group, rt.version) for rt in types}):
        doc = v3_group_version(types, gv)
        digest = hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:128].upper()
        paths[gv] = {"serverRelativeURL": f"/openapi/v3/{gv}?hash={digest}"}
    return {"paths": paths}
