"""The Kubernetes 1.32 object schemas, as the API server uses them.

The definitions come from the `kubernetes-validate` package (Kubernetes' own OpenAPI
converted to JSON Schema, strict variant, v1.32), which keeps the markers that drive
server-side behaviour:

- `x-kubernetes-list-type` (map / set / atomic) and `x-kubernetes-list-map-keys`:
  how server-side apply merges a list and names its items in managedFields;
- `x-kubernetes-map-type: atomic`: a map or struct owned and replaced as a whole;
- `x-kubernetes-patch-merge-key` / `x-kubernetes-patch-strategy`: strategic merge;
- `properties` with `additionalProperties: false`: which fields exist, so that unknown
  ones are refused or dropped as kube-apiserver does.

Custom resources use their CRD's openAPIV3Schema the same way.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

JSON = dict[str, Any]
Node = JSON | None  # a schema node; None: no schema (anything goes, lists atomic)

K8S_VERSION = "v1.32"


def _schema_dir() -> Path:
    import kubernetes_validate  # type: ignore[import-untyped]

    root = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    wanted = sorted(root.glob(f"{K8S_VERSION}.*-local-strict"))
    if not wanted:
        raise RuntimeError(f"kubernetes-validate has no {K8S_VERSION} schemas in {root}")
    return wanted[-1]


@functools.lru_cache(maxsize=1)
def definitions() -> dict[str, JSON]:
    doc = json.loads((_schema_dir() / "_definitions.json").read_text())
    defs: dict[str, JSON] = doc["$defs"]
    return defs


@functools.lru_cache(maxsize=1)
def _by_gvk() -> dict[tuple[str, str, str], str]:
    out = {}
    for name, schema in definitions().items():
        for gvk in schema.get("x-kubernetes-group-version-kind") or []:
            out[(gvk.get("group", ""), gvk.get("version", ""), gvk.get("kind", ""))] = name
    return out


def builtin_root(group: str, version: str, kind: str) -> Node:
    name = _by_gvk().get((group, version, kind))
    return {"$ref": f"#/$defs/{name}"} if name else None


def crd_root(crd_version: JSON) -> Node:
    """The schema of a CRD version; metadata is the real ObjectMeta whatever it says."""
    schema = (crd_version.get("schema") or {}).get("openAPIV3Schema")
    if not isinstance(schema, dict):
        return None
    root = dict(schema)
    props = dict(root.get("properties") or {})
    props["metadata"] = {"$ref": "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}
    props.setdefault("apiVersion", {"type": "string"})
    props.setdefault("kind", {"type": "string"})
    root["properties"] = props
    return root


def resolve(node: Node) -> Node:
    """Follow $ref, keeping the referring property's own markers (they take precedence)."""
    if node is None:
        return None
    seen = 0
    while "$ref" in node and seen < 20:
        target = definitions().get(str(node["$ref"]).rsplit("/", 1)[-1], {})
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        seen += 1
    return node


def _unstructured(node: JSON) -> bool:
    return bool(node.get("x-kubernetes-preserve-unknown-fields")) or (
        "properties" not in node and "additionalProperties" not in node and "items" not in node
    )


def child(node: Node, key: str) -> tuple[bool, Node]:
    """(is `key` a field here, its schema). Unknown fields give (False, None)."""
    node = resolve(node)
    if node is None:
        return True, None
    props = node.get("properties")
    if isinstance(props, dict) and key in props:
        return True, props[key]
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        return True, extra
    if _unstructured(node) or extra is True:
        return True, None
    return False, None


def items(node: Node) -> Node:
    node = resolve(node)
    if node is None:
        return None
    found = node.get("items")
    return found if isinstance(found, dict) else None


def list_type(node: Node) -> tuple[str, tuple[str, ...]]:
    """("map", keys), ("set", ()) or ("atomic", ()); lists without a marker are atomic."""
    node = resolve(node)
    if node is None:
        return "atomic", ()
    kind = node.get("x-kubernetes-list-type", "atomic")
    if kind == "map":
        return "map", tuple(node.get("x-kubernetes-list-map-keys") or ())
    return ("set", ()) if kind == "set" else ("atomic", ())


def is_atomic_map(node: Node) -> bool:
    node = resolve(node)
    return bool(
        node and (node.get("x-kubernetes-map-type") == "atomic" or node.get("x-kubernetes-struct-type") == "atomic")
    )


def patch_strategy(node: Node) -> tuple[str | None, set[str]]:
    """(merge key, strategies) of a field for strategic merge patch."""
    node = resolve(node)
    if node is None:
        return None, set()
    strategies = {s.strip() for s in str(node.get("x-kubernetes-patch-strategy", "")).split(",") if s.strip()}
    return node.get("x-kubernetes-patch-merge-key"), strategies


def unknown_fields(node: Node, obj: Any, drop: bool = False) -> list[tuple[str, str]]:
    """Fields of `obj` the schema does not declare: (apply path, decoder path) pairs,
    `.spec.x` / `spec.x` style, list items as `[name="c"]` / `[0]`. `drop` deletes them
    (what decoding does when validation is not strict)."""
    out: list[tuple[str, str]] = []
    _unknown(node, obj, "", "", out, drop)
    return out


def _unknown(node: Node, obj: Any, apply_path: str, decode_path: str, out: list[tuple[str, str]], drop: bool) -> None:
    node = resolve(node)
    if node is None:
        return
    if isinstance(obj, dict):
        for key in list(obj):
            a_path = f"{apply_path}.{key}"
            d_path = f"{decode_path}.{key}" if decode_path else key
            known, sub = child(node, key)
            if not known:
                out.append((a_path, d_path))
                if drop:
                    del obj[key]
                continue
            _unknown(sub, obj[key], a_path, d_path, out, drop)
    elif isinstance(obj, list):
        kind, keys = list_type(node)
        sub = items(node)
        for n, item in enumerate(obj):
            if kind == "map" and isinstance(item, dict) and all(k in item for k in keys):
                label = "[" + ",".join(f"{k}={json.dumps(item[k])}" for k in keys) + "]"
            else:
                label = f"[{n}]"
            _unknown(sub, item, apply_path + label, f"{decode_path}[{n}]", out, drop)
