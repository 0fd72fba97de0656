"""Field ownership (metadata.managedFields) and server-side apply.

Field sets are sets of paths; a path is a tuple of elements spelled as in FieldsV1:
`f:<field>` for a map member, `k:{"name":"x"}` for an item of a list keyed by its fields,
`v:"x"` for a member of a set of primitives. A field owned as a whole (a scalar, an
atomic list or map, an empty map) is a leaf path. List items are members themselves
(their path is in the set as well as their children's), which is what FieldsV1's "."
records.

Which lists are keyed (and by what), sets or atomic, and which maps are atomic, comes
from the object's schema (k8s_schema: the real v1.32 markers, or a CRD's schema).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from . import k8s_schema
from .k8s_schema import Node

JSON = dict[str, Any]
Path = tuple[str, ...]

# Key fields the server defaults before apply looks at them (a port's protocol).
KEY_DEFAULTS: dict[str, Any] = {"protocol": "TCP"}

# Never owned: identity and bookkeeping the server sets.
IGNORED_TOP = {"apiVersion", "kind"}
IGNORED_METADATA = {
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
    "generateName",
}


def _item_key(keys: tuple[str, ...], item: Any) -> str | None:
    if not isinstance(item, dict) or not keys:
        return None
    ident = {}
    for k in keys:
        if k in item:
            ident[k] = item[k]
        elif k in KEY_DEFAULTS:
            ident[k] = KEY_DEFAULTS[k]
        else:
            return None
    return "k:" + json.dumps(dict(sorted(ident.items())), separators=(",", ":"))


def _item_matches(element: str, item: Any) -> bool:
    if not isinstance(item, dict):
        return False
    ident = json.loads(element[2:])
    return all(item.get(k, KEY_DEFAULTS.get(k)) == v for k, v in ident.items())


def _walk(value: Any, path: Path, node: Node, out: set[Path]) -> None:
    if isinstance(value, dict):
        if not value or k8s_schema.is_atomic_map(node):
            out.add(path)
            return
        for key, child in value.items():
            if child is not None:
                _walk(child, path + (f"f:{key}",), k8s_schema.child(node, key)[1], out)
        return
    if isinstance(value, list) and value:
        kind, keys = k8s_schema.list_type(node)
        item_node = k8s_schema.items(node)
        if kind == "map" and all(_item_key(keys, i) for i in value):
            for item in value:
                item_path = path + (str(_item_key(keys, item)),)
                out.add(item_path)
                for key, child in item.items():
                    if child is not None:
                        _walk(child, item_path + (f"f:{key}",), k8s_schema.child(item_node, key)[1], out)
            return
        if kind == "set" and all(not isinstance(i, (dict, list)) for i in value):
            for item in value:
                out.add(path + ("v:" + json.dumps(item, separators=(",", ":")),))
            return
    out.add(path)


def fieldset(obj: JSON, root: Node, scope: str = "main", has_status: bool = True) -> set[Path]:
    """The paths of `obj` that can be owned.

    scope "main": everything but status (when the type has a status subresource);
    "status": only status; "all": both.
    """
    out: set[Path] = set()
    for key, value in obj.items():
        if key in IGNORED_TOP or value is None:
            continue
        if key == "status" and has_status and scope == "main":
            continue
        if key != "status" and scope == "status":
            continue
        node = k8s_schema.child(root, key)[1]
        if key == "metadata" and isinstance(value, dict):
            for mkey, mval in value.items():
                if mkey not in IGNORED_METADATA and mval is not None:
                    _walk(mval, ("f:metadata", f"f:{mkey}"), k8s_schema.child(node, mkey)[1], out)
            continue
        _walk(value, (f"f:{key}",), node, out)
    return out


_MISSING = object()


def get_at(obj: Any, path: Path) -> Any:
    cur = obj
    for el in path:
        if el.startswith("f:"):
            if not isinstance(cur, dict) or el[2:] not in cur:
                return _MISSING
            cur = cur[el[2:]]
        elif el.startswith("k:"):
            if not isinstance(cur, list):
                return _MISSING
            cur = next((i for i in cur if _item_matches(el, i)), _MISSING)
            if cur is _MISSING:
                return _MISSING
        elif el.startswith("v:"):
            want = json.loads(el[2:])
            if not isinstance(cur, list) or want not in cur:
                return _MISSING
            cur = want
    return cur


def remove_at(obj: Any, path: Path) -> None:
    if not path:
        return
    parent = get_at(obj, path[:-1])
    last = path[-1]
    if last.startswith("f:") and isinstance(parent, dict):
        parent.pop(last[2:], None)
    elif last.startswith("k:") and isinstance(parent, list):
        parent[:] = [i for i in parent if not _item_matches(last, i)]
    elif last.startswith("v:") and isinstance(parent, list):
        want = json.loads(last[2:])
        parent[:] = [i for i in parent if i != want]


def to_fields_v1(paths: Iterable[Path]) -> JSON:
    root: JSON = {}
    paths = set(paths)
    for path in sorted(paths):
        node = root
        for el in path:
            node = node.setdefault(el, {})
    for path in paths:
        node = root
        for el in path:
            node = node[el]
        if node and "." not in node:
            node["."] = {}
    return root


def from_fields_v1(doc: JSON, prefix: Path = ()) -> set[Path]:
    out: set[Path] = set()
    for key, child in doc.items():
        if key == ".":
            out.add(prefix)
            continue
        path = prefix + (key,)
        if not child:
            out.add(path)
        else:
            out |= from_fields_v1(child, path)
    return out


def format_path(path: Path) -> str:
    """`.spec.template.spec.containers[name="plugin"].image`, as conflicts name fields."""
    out = []
    for el in path:
        if el.startswith("f:"):
            out.append("." + el[2:])
        elif el.startswith("k:"):
            ident = json.loads(el[2:])
            out.append("[" + ",".join(f"{k}={json.dumps(v)}" for k, v in ident.items()) + "]")
        elif el.startswith("v:"):
            out.append(f"[={el[2:]}]")
    return "".join(out)


@dataclass
class ManagerEntry:
    manager: str
    operation: str
    api_version: str
    time: str
    fields: set[Path]
    subresource: str = ""

    def to_json(self) -> JSON:
        out: JSON = {
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "time": self.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": to_fields_v1(self.fields),
        }
        if self.subresource:
            out["subresource"] = self.subresource
        return out

    def same_owner(self, manager: str, operation: str, subresource: str) -> bool:
        return (self.manager, self.operation, self.subresource) == (manager, operation, subresource)


def read_entries(obj: JSON | None) -> list[ManagerEntry]:
    out = []
    for e in (obj or {}).get("metadata", {}).get("managedFields") or []:
        out.append(
            ManagerEntry(
                manager=e.get("manager", ""),
                operation=e.get("operation", ""),
                api_version=e.get("apiVersion", ""),
                time=e.get("time", ""),
                fields=from_fields_v1(e.get("fieldsV1") or {}),
                subresource=e.get("subresource", ""),
            )
        )
    return out


def write_entries(obj: JSON, entries: list[ManagerEntry]) -> None:
    kept = [e.to_json() for e in entries if e.fields]
    if kept:
        obj.setdefault("metadata", {})["managedFields"] = kept
    else:
        obj.setdefault("metadata", {}).pop("managedFields", None)


@dataclass(frozen=True)
class Conflict:
    manager: str
    api_version: str
    path: Path


class ApplyConflict(Exception):
    def __init__(self, conflicts: list[Conflict]) -> None:
        super().__init__(conflicts)
        self.conflicts = conflicts


def _merge_applied(live: Any, applied: Any, node: Node) -> Any:
    if isinstance(applied, dict) and isinstance(live, dict) and not k8s_schema.is_atomic_map(node):
        result = copy.deepcopy(live)
        for key, value in applied.items():
            if value is None:
                continue
            result[key] = _merge_applied(live.get(key), value, k8s_schema.child(node, key)[1])
        return result
    if isinstance(applied, list) and isinstance(live, list):
        kind, keys = k8s_schema.list_type(node)
        item_node = k8s_schema.items(node)
        if kind == "map" and all(_item_key(keys, i) for i in applied + live):
            live_by_key = {_item_key(keys, i): i for i in live}
            applied_keys = [_item_key(keys, i) for i in applied]
            merged = [
                _merge_applied(live_by_key[k], item, item_node) if k in live_by_key else copy.deepcopy(item)
                for k, item in zip(applied_keys, applied)
            ]
            merged += [copy.deepcopy(i) for i in live if _item_key(keys, i) not in applied_keys]
            return merged
        if kind == "set":
            return list(applied) + [i for i in live if i not in applied]
    return copy.deepcopy(applied)


def _prune_empty_parents(obj: JSON, path: Path, owned: set[Path]) -> None:
    for depth in range(len(path) - 1, 1, -1):
        parent = path[:depth]
        if not parent[-1].startswith("f:") or parent in owned:
            return
        value = get_at(obj, parent)
        if isinstance(value, dict) and not value:
            remove_at(obj, parent)
        else:
            return


def _strip_for_apply(applied: JSON, has_status: bool) -> JSON:
    obj = copy.deepcopy(applied)
    if has_status:
        obj.pop("status", None)
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        for key in ("managedFields", "resourceVersion", "uid", "creationTimestamp", "generation", "selfLink"):
            meta.pop(key, None)
    return obj


def server_side_apply(
    live: JSON | None,
    applied: JSON,
    manager: str,
    force: bool,
    root: Node,
    has_status: bool,
    api_version: str,
    now: str,
) -> JSON:
    """The object after `manager` applies `applied` to `live` (None: create).

    Raises ApplyConflict naming every field another manager owns with a different value,
    unless `force`, in which case those fields change owner.
    """
    applied = _strip_for_apply(applied, has_status)
    entries = read_entries(live)
    new_set = fieldset(applied, root, "main", has_status)
    mine = next((e for e in entries if e.same_owner(manager, "Apply", "")), None)
    old_set = mine.fields if mine else set()
    base = copy.deepcopy(live) if live is not None else {}

    conflicts: list[Conflict] = []
    for entry in entries:
        if entry is mine:
            continue
        for path in sorted(entry.fields & new_set):
            have, want = get_at(base, path), get_at(applied, path)
            if isinstance(want, dict) and want:
                continue  # a map or list item: only its leaves can conflict
            if path[-1].startswith(("k:", "v:")):
                continue
            if have is not _MISSING and have != want:
                conflicts.append(Conflict(entry.manager, entry.api_version, path))
    if conflicts and not force:
        raise ApplyConflict(conflicts)
    taken = {c.path for c in conflicts}
    for entry in entries:
        if entry is not mine:
            entry.fields -= taken

    others: set[Path] = set()
    for entry in entries:
        if entry is not mine:
            others |= entry.fields
    result: JSON = _merge_applied(base, applied, root)
    removed: list[Path] = []
    # Outermost first: a removed list item takes its fields with it.
    for path in sorted(old_set - new_set - others, key=len):
        if any(path[: len(done)] == done for done in removed):
            continue
        if any(o[: len(path)] == path for o in others | new_set if o != path):
            continue  # someone still owns something inside it
        remove_at(result, path)
        removed.append(path)
        _prune_empty_parents(result, path, others | new_set)

    present = fieldset(result, root, "all", has_status)
    for entry in entries:
        entry.fields &= present
    if mine is None:
        mine = ManagerEntry(manager, "Apply", api_version, now, set())
        entries.append(mine)
    if mine.fields != new_set or mine.api_version != api_version:
        mine.time = now
    mine.fields = new_set & present
    mine.api_version = api_version
    write_entries(result, entries)
    return result


def track_update(
    old: JSON | None,
    new: JSON,
    manager: str,
    root: Node,
    has_status: bool,
    api_version: str,
    now: str,
    subresource: str = "",
) -> None:
    """Record in `new`'s managedFields that `manager` set what changed from `old`."""
    scope = "status" if subresource == "status" else "main"
    entries = read_entries(old)
    before = fieldset(old, root, scope, has_status) if old else set()
    after = fieldset(new, root, scope, has_status)
    changed = {
        p
        for p in after
        if p not in before or (get_at(old, p) != get_at(new, p) and not isinstance(get_at(new, p), dict))
    }
    present = fieldset(new, root, "all", has_status)
    for entry in entries:
        if not entry.same_owner(manager, "Update", subresource):
            entry.fields -= changed
        entry.fields &= present
    if changed:
        mine = next((e for e in entries if e.same_owner(manager, "Update", subresource)), None)
        if mine is None:
            mine = ManagerEntry(manager, "Update", api_version, now, set(), subresource)
            entries.append(mine)
        mine.fields |= changed
        mine.time = now
        mine.api_version = api_version
    write_entries(new, entries)
