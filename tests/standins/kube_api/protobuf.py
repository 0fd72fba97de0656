"""Just enough of Kubernetes' protobuf encoding for the one request kubectl sends in it.

`kubectl auth can-i` posts a SelfSubjectAccessReview with Content-Type
application/vnd.kubernetes.protobuf (its typed client prefers protobuf). The envelope is
the magic "k8s\\0" followed by a runtime.Unknown message whose `raw` field holds the
object; of the object only spec.resourceAttributes (or nonResourceAttributes) matters.
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
            value, pos = data[pos:pos + length], pos + length
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
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
    unknown = fields(body[len(MAGIC):])
    raw = unknown.get(2, [b""])[0]
    review = fields(raw)
    spec = fields(review.get(2, [b""])[0])
    out: dict[str, Any] = {}
    if 1 in spec:
        attrs = fields(spec[1][0])
        names = ("namespace", "verb", "group", "version", "resource", "subresource", "name")
        out["resourceAttributes"] = {n: _text(attrs, i + 1) for i, n in enumerate(names)
                                     if _text(attrs, i + 1)}
    if 2 in spec:
        attrs = fields(spec[2][0])
        out["nonResourceAttributes"] = {"path": _text(attrs, 1), "verb": _text(attrs, 2)}
    return out
