"""The client patch formats gpunode's tests send through kubectl: strategic merge (`kubectl
cordon`, `kubectl patch` without --type) and JSON merge (gpunode's own `kubectl patch
--type=merge`); no JSON patch, which nothing here sends.

Strategic merge follows each field's `x-kubernetes-patch-merge-key` and
`x-kubernetes-patch-strategy` from the schema (k8s_schema): lists of maps with a merge
key are merged item by item, lists of primitives with strategy "merge" as sets, other
lists replaced. Custom resources have no strategic merge (the server answers 415).
"""

from __future__ import annotations

import copy
import json
from typing import Any

from . import k8s_schema
from .k8s_schema import Node

JSON = dict[str, Any]


class PatchError(ValueError):
    """A patch that cannot be applied; the server answers 422 (or 400 for bad syntax)."""


_DELETE = object()


def _merge_key_list(original: list[Any], patch: list[Any], key: str, item_node: Node) -> list[Any]:
    result = copy.deepcopy(original)
    for item in patch:
        if not isinstance(item, dict):
            raise PatchError(f"strategic merge patch: list item is not a map: {item!r}")
        directive = item.get("$patch")
        if directive == "replace":
            # A {"$patch": "replace"} item replaces the whole list with the other items.
            return [copy.deepcopy(i) for i in patch if i is not item]
        if key not in item:
            raise PatchError(f"map: {item} does not contain declared merge key: {key}")
        idx = next((n for n, cur in enumerate(result) if isinstance(cur, dict) and cur.get(key) == item[key]), None)
        if directive == "delete":
            if idx is not None:
                del result[idx]
            continue
        if idx is None:
            result.append(strategic_merge({}, item, item_node))
        else:
            result[idx] = strategic_merge(result[idx], item, item_node)
    return result


def strategic_merge(original: Any, patch: Any, node: Node) -> Any:
    """Apply a strategic merge patch to a built-in object (or to part of one, whose schema
    is `node`)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return _DELETE
    result: JSON = copy.deepcopy(original) if isinstance(original, dict) else {}
    retain = patch.get("$retainKeys")
    orders: dict[str, list[Any]] = {}
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys"):
            continue
        if key.startswith("$setElementOrder/"):
            orders[key.split("/", 1)[1]] = value
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            current = result.get(field)
            if isinstance(current, list):
                result[field] = [v for v in current if v not in (value or [])]
            continue
        if value is None:
            result.pop(key, None)
            continue
        field_node = k8s_schema.child(node, key)[1]
        current = result.get(key)
        if isinstance(value, dict):
            merged = strategic_merge(current, value, field_node)
            if merged is _DELETE:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list):
            merge_key, strategies = k8s_schema.patch_strategy(field_node)
            if "merge" in strategies and merge_key and all(isinstance(v, dict) for v in value):
                result[key] = _merge_key_list(
                    current if isinstance(current, list) else [], value, merge_key, k8s_schema.items(field_node)
                )
            elif "merge" in strategies and not merge_key:
                merged_list = list(current) if isinstance(current, list) else []
                merged_list += [v for v in value if v not in merged_list]
                result[key] = merged_list
            else:
                result[key] = copy.deepcopy(value)
        else:
            result[key] = copy.deepcopy(value)
    for field, order in orders.items():
        current = result.get(field)
        if not isinstance(current, list):
            continue
        merge_key = k8s_schema.patch_strategy(k8s_schema.child(node, field)[1])[0]

        def rank(item: Any, order: list[Any] = order, merge_key: str | None = merge_key) -> int:
            ident = item.get(merge_key) if merge_key and isinstance(item, dict) else item
            for n, want in enumerate(order):
                want_ident = want.get(merge_key) if merge_key and isinstance(want, dict) else want
                if want_ident == ident:
                    return n
            return len(order)

        result[field] = sorted(current, key=rank)
    if isinstance(retain, list):
        for key in list(result):
            if key not in retain:
                del result[key]
    return result


def json_merge_patch(original: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result: JSON = copy.deepcopy(original) if isinstance(original, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = json_merge_patch(result.get(key), value)
    return result


def decode_json(body: bytes) -> Any:
    try:
        return json.loads(body or b"null")
    except json.JSONDecodeError as exc:
        raise PatchError(f"invalid JSON: {exc}") from exc
