"""Just enough of Kubernetes' protobuf encoding for the requests kubectl sends in it.

kubectl's typed clients prefer protobuf: `kubectl auth can-i` posts a
SelfSubjectAccessReview, and `kubectl create namespace|serviceaccount|configmap|secret`
post those objects, with Content-Type application/vnd.kubernetes.protobuf. The envelope
is the magic "k8s\\0" followed by a runtime.Unknown message whose `raw` field holds the
object. Only those shapes are decoded here (field numbers from the Kubernetes .proto
files); everything else kubectl sends as JSON.
"""

from __future__ import annotations

from typing import Any

MAGIC = b"k8s\x00"


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def fields(data: bytes) -> dict[int, list[Any]]:
    """Field number -> values (ints for varints, bytes for length-delimited)."""
    out: dict[int, list[Any]] = {}
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        elif wire == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        out.setdefault(number, []).append(value)
    return out


def _text(values: dict[int, list[Any]], number: int) -> str:
    found = values.get(number)
    return found[0].decode() if found else ""


def decode_access_review(body: bytes) -> dict[str, Any]:
    """The spec of a protobuf SelfSubjectAccessReview, as JSON would carry it."""
    if not body.startswith(MAGIC):
        raise ValueError("not a Kubernetes protobuf message")
    unknown = fields(body[len(MAGIC) :])
    raw = unknown.get(2, [b""])[0]
    review = fields(raw)
    spec = fields(review.get(2, [b""])[0])
    out: dict[str, Any] = {}
    if 1 in spec:
        attrs = fields(spec[1][0])
        names = ("namespace", "verb", "group", "version", "resource", "subresource", "name")
        out["resourceAttributes"] = {n: _text(attrs, i + 1) for i, n in enumerate(names) if _text(attrs, i + 1)}
    if 2 in spec:
        attrs = fields(spec[2][0])
        out["nonResourceAttributes"] = {"path": _text(attrs, 1), "verb": _text(attrs, 2)}
    return out


def _unwrap(body: bytes) -> dict[int, list[Any]]:
    if not body.startswith(MAGIC):
        raise ValueError("not a Kubernetes protobuf message")
    unknown = fields(body[len(MAGIC) :])
    return fields(unknown.get(2, [b""])[0])


def _string_map(entries: list[Any], as_bytes: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for entry in entries:
        kv = fields(entry)
        key = _text(kv, 1)
        raw = kv.get(2, [b""])[0]
        if as_bytes:
            import base64

            out[key] = base64.b64encode(raw).decode()
        else:
            out[key] = raw.decode()
    return out


def _object_meta(data: bytes) -> dict[str, Any]:
    meta = fields(data)
    out: dict[str, Any] = {}
    for number, name in ((1, "name"), (2, "generateName"), (3, "namespace")):
        if _text(meta, number):
            out[name] = _text(meta, number)
    if 11 in meta:
        out["labels"] = _string_map(meta[11])
    if 12 in meta:
        out["annotations"] = _string_map(meta[12])
    if 14 in meta:
        out["finalizers"] = [v.decode() for v in meta[14]]
    return out


def decode_object(kind: str, body: bytes) -> dict[str, Any]:
    """A Namespace, ServiceAccount, ConfigMap or Secret as kubectl's create sends it."""
    obj = _unwrap(body)
    out: dict[str, Any] = {"metadata": _object_meta(obj.get(1, [b""])[0])}
    if kind == "ConfigMap":
        if 2 in obj:
            out["data"] = _string_map(obj[2])
        if 3 in obj:
            out["binaryData"] = _string_map(obj[3], as_bytes=True)
    elif kind == "Secret":
        if 2 in obj:
            out["data"] = _string_map(obj[2], as_bytes=True)
        if _text(obj, 3):
            out["type"] = _text(obj, 3)
    elif kind not in ("Namespace", "ServiceAccount"):
        raise ValueError(f"{kind} in protobuf is not supported by the stand-in")
    return out
