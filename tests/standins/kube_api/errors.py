"""API errors as the real server reports them: a Status object kubectl turns into its text.

kubectl prints `Error from server (<reason>): <message>`, so the message of each error
is spelled exactly as kube-apiserver spells it.
"""

from __future__ import annotations

from typing import Any

from .resources import ResourceType

JSON = dict[str, Any]


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: JSON | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> JSON:
        out: JSON = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "code": self.code,
        }
        if self.reason:
            out["reason"] = self.reason
        if self.details is not None:
            out["details"] = self.details
        return out


def _details(rt: ResourceType, name: str) -> JSON:
    out: JSON = {"name": name, "kind": rt.plural}
    if rt.group:
        out["group"] = rt.group
    return out


def not_found(rt: ResourceType, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{rt.qualified} "{name}" not found', _details(rt, name))


def namespace_not_found(name: str) -> ApiError:
    return ApiError(404, "NotFound", f'namespaces "{name}" not found', {"name": name, "kind": "namespaces"})


def already_exists(rt: ResourceType, name: str) -> ApiError:
    return ApiError(409, "AlreadyExists", f'{rt.qualified} "{name}" already exists', _details(rt, name))


def conflict(rt: ResourceType, name: str, why: str) -> ApiError:
    return ApiError(
        409, "Conflict", f'Operation cannot be fulfilled on {rt.qualified} "{name}": {why}', _details(rt, name)
    )


def stale_resource_version(rt: ResourceType, name: str) -> ApiError:
    return conflict(
        rt, name, "the object has been modified; please apply your changes to the latest version and try again"
    )


class GoValue(str):
    """A value already spelled as Go prints it (`map[string]string{"a":"b"}`): not quoted."""


class FieldError:
    """One cause of a 422 Invalid: `<field>: <Type>: <detail>`."""

    def __init__(self, field: str, kind: str, detail: str, value: Any = None, has_value: bool = False) -> None:
        self.field = field
        self.kind = kind
        self.detail = detail
        self.value = value
        self.has_value = has_value

    @property
    def reason(self) -> str:
        return {
            "Required value": "FieldValueRequired",
            "Invalid value": "FieldValueInvalid",
            "Forbidden": "FieldValueForbidden",
            "Unsupported value": "FieldValueNotSupported",
            "Duplicate value": "FieldValueDuplicate",
        }.get(self.kind, "FieldValueInvalid")

    def text(self) -> str:
        if self.kind == "Required value":
            body = "Required value" + (f": {self.detail}" if self.detail else "")
        elif self.has_value:
            # Strings are quoted; other values are shown as Go's %#v would (given as text).
            quoted = isinstance(self.value, str) and not isinstance(self.value, GoValue)
            shown = f'"{self.value}"' if quoted else str(self.value)
            body = f"{self.kind}: {shown}" + (f": {self.detail}" if self.detail else "")
        else:
            body = f"{self.kind}: {self.detail}" if self.detail else self.kind
        return f"{self.field}: {body}"


def invalid(rt: ResourceType, name: str, errors: list[FieldError]) -> ApiError:
    texts = [e.text() for e in errors]
    joined = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    kind = f"{rt.kind}.{rt.group}" if rt.group else rt.kind
    details = _details(rt, name)
    details["kind"] = rt.kind
    details["causes"] = [
        {"reason": e.reason, "message": e.text()[len(e.field) + 2 :], "field": e.field} for e in errors
    ]
    return ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {joined}', details)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def forbidden(rt: ResourceType, name: str, why: str) -> ApiError:
    return ApiError(403, "Forbidden", f'{rt.qualified} "{name}" is forbidden: {why}', _details(rt, name))


def rbac_forbidden(method: str, path: str, watch: bool, user: str) -> ApiError:
    """What the API server's RBAC authorizer answers a request `user` may not make."""
    parts = [p for p in path.split("/") if p]
    group, rest = ("", parts[2:]) if parts[:1] == ["api"] else (parts[1] if len(parts) > 1 else "", parts[3:])
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    resource = rest[0] if rest else ""
    name = rest[1] if len(rest) > 1 else ""
    full = resource + ("/" + rest[2] if len(rest) > 2 else "")
    verb = {
        "GET": "get" if name else ("watch" if watch else "list"),
        "POST": "create",
        "PATCH": "patch",
        "PUT": "update",
        "DELETE": "delete" if name else "deletecollection",
    }.get(method, method.lower())
    where = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
    subject = (f"{resource}.{group}" if group else resource) + (f' "{name}"' if name else "")
    return ApiError(
        403,
        "Forbidden",
        f'{subject} is forbidden: User "{user}" cannot {verb} resource "{full}" in API group "{group}" {where}',
        {"name": name, "group": group, "kind": resource},
    )


def method_not_allowed() -> ApiError:
    return ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")


def unsupported_media_type(content_type: str, accepted: list[str]) -> ApiError:
    return ApiError(
        415,
        "UnsupportedMediaType",
        f"the body of the request was in an unknown format - accepted media types include: {', '.join(accepted)}",
    )


def internal_error(message: str) -> ApiError:
    return ApiError(500, "InternalError", f"Internal error occurred: {message}")


def unauthorized() -> ApiError:
    return ApiError(401, "Unauthorized", "Unauthorized")


def generic_not_found() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource")
