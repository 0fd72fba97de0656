"""The three client patch formats kubectl sends: strategic merge, JSON merge, JSON patch.

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


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"JSON pointer must start with '/': {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str], op: str) -> Any:
    cur = doc
    for part in parts[:-1]:
        if isinstance(cur, dict):
            if part not in cur:
                raise PatchError(f'doc is missing path: "/{"/".join(parts)}": missing value')
            cur = cur[part]
        elif isinstance(cur, list):
            try:
                cur = cur[int(part)]
            except (ValueError, IndexError) as exc:
                raise PatchError(f"unable to access invalid index: {part}") from exc
        else:
            raise PatchError(f"{op} operation does not apply: doc is missing path")
    return cur


def _json_get(doc: Any, parts: list[str]) -> Any:
    cur = doc
    for part in parts:
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            raise PatchError(f'doc is missing path: "/{"/".join(parts)}": missing value')
    return cur


def _json_add(doc: Any, parts: list[str], value: Any, replace: bool) -> Any:
    if not parts:
        return copy.deepcopy(value)
    parent = _parent(doc, parts, "add")
    last = parts[-1]
    if isinstance(parent, dict):
        if replace and last not in parent:
            raise PatchError(f"replace operation does not apply: doc is missing key: /{'/'.join(parts)}: missing value")
        parent[last] = copy.deepcopy(value)
    elif isinstance(parent, list):
        if last == "-" and not replace:
            parent.append(copy.deepcopy(value))
        else:
            try:
                idx = int(last)
            except ValueError as exc:
                raise PatchError(f"unable to access invalid index: {last}") from exc
            if replace:
                if idx >= len(parent):
                    raise PatchError(
                        f"replace operation does not apply: doc is missing key: /{'/'.join(parts)}: missing value"
                    )
                parent[idx] = copy.deepcopy(value)
            else:
                if idx > len(parent):
                    raise PatchError(f"add operation does not apply: index out of range: {idx}")
                parent.insert(idx, copy.deepcopy(value))
    else:
        raise PatchError("add operation does not apply: doc is missing path")
    return doc


def _json_remove(doc: Any, parts: list[str]) -> Any:
    parent = _parent(doc, parts, "remove")
    last = parts[-1] if parts else ""
    if isinstance(parent, dict) and last in parent:
        del parent[last]
    elif isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        del parent[int(last)]
    else:
        raise PatchError(f'remove operation does not apply: doc is missing path: "/{"/".join(parts)}"')
    return doc


def json_patch(original: Any, operations: Any) -> Any:
    """RFC 6902."""
    if not isinstance(operations, list):
        raise PatchError("json patch must be a list of operations")
    doc = copy.deepcopy(original)
    for op in operations:
        if not isinstance(op, dict) or "op" not in op:
            raise PatchError(f"invalid json patch operation: {op!r}")
        kind = op["op"]
        parts = _pointer(op.get("path", ""))
        if kind == "add":
            doc = _json_add(doc, parts, op.get("value"), replace=False)
        elif kind == "replace":
            doc = _json_add(doc, parts, op.get("value"), replace=True)
        elif kind == "remove":
            doc = _json_remove(doc, parts)
        elif kind in ("move", "copy"):
            source = _pointer(op.get("from", ""))
            value = copy.deepcopy(_json_get(doc, source))
            if kind == "move":
                doc = _json_remove(doc, source)
            doc = _json_add(doc, parts, value, replace=False)
        elif kind == "test":
            if _json_get(doc, parts) != op.get("value"):
                raise PatchError(f"testing value /{'/'.join(parts)} failed: test failed")
        else:
            raise PatchError(f"Unexpected kind: {kind}")
    return doc


def decode_json(body: bytes) -> Any:
    try:
        return json.loads(body or b"null")
    except json.JSONDecodeError as exc:
        raise PatchError(f"invalid JSON: {exc}") from exc
