"""The object store: typed collections, resourceVersions, watch history, writes.

Every write (through HTTP or the programmatic API) goes through the same path: admission
(defaults, validation), field ownership, no-op detection, commit (new resourceVersion,
watch event), then the controllers (DaemonSet controller, scheduler, garbage collector)
run to a fixed point. One re-entrant lock guards everything; the watch streams wait on a
condition of that lock and copy events out before writing to their sockets.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import datetime as dt
import json
import secrets
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import yaml

from . import admission, errors, k8s_schema, ownership, patches
from .events import EVENTS_V1_FIELDS, from_events_v1, to_events_v1
from .k8s_schema import Node
from .resources import BUILTIN_TYPES, ResourceType, type_from_crd
from .selectors import (
    FieldRequirement,
    Requirement,
    check_field_selector,
    fields_match,
    labels_match,
)

JSON = dict[str, Any]

APPLY_PATCH = "application/apply-patch+yaml"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
MERGE_PATCH = "application/merge-patch+json"

GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
HISTORY_LIMIT = 20000


def now_rfc3339() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def random_suffix(n: int = 5) -> str:
    return "".join(secrets.choice(GENERATE_ALPHABET) for _ in range(n))


@dataclass
class WatchEvent:
    rv: int
    key: tuple[str, str]
    type: str  # ADDED, MODIFIED, DELETED
    obj: JSON
    old: JSON | None


@dataclass
class ListOptions:
    namespace: str | None = None
    labels: list[Requirement] | None = None
    fields: list[FieldRequirement] | None = None


class Store:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.types: list[ResourceType] = list(BUILTIN_TYPES)
        self.objects: dict[tuple[str, str], dict[tuple[str, str], JSON]] = {}
        self.rv = 1
        self.history: list[WatchEvent] = []
        self.history_base = 0
        self.closed = False
        # Called after each committed write (outside dry-run), under the lock; they must
        # not write to the store themselves (controllers do that, below).
        self.after_write: list[Callable[[ResourceType, str, JSON, JSON | None], None]] = []
        # Run to a fixed point after each outermost write that changed something.
        self.controllers: list[Callable[[], None]] = []
        # Fills in the status of a pod created already bound to a node (spec.nodeName).
        self.prepare_bound_pod: Callable[[JSON], None] | None = None
        self.discovery_generation = 0
        # Schemas of custom resources, from their CRDs: (group, version, kind) -> node.
        self.crd_schemas: dict[tuple[str, str, str], Node] = {}
        self._depth = 0
        self._dirty = False
        self._reconciling = False
        # Per request thread: the fieldValidation mode and the warnings for the response.
        self._request = threading.local()

    @contextlib.contextmanager
    def field_validation(self, mode: str) -> Iterator[list[str]]:
        """Strict (reject unknown fields), Warn (list them) or Ignore, for this thread's
        writes; yields the warnings to send back (kubectl prints them)."""
        self._request.mode = mode
        self._request.warnings = []
        try:
            yield self._request.warnings
        finally:
            self._request.mode = None
            self._request.warnings = None

    def schema_root(self, rt: ResourceType) -> Node:
        """The schema objects of `rt` are checked and merged by (None: no schema)."""
        if rt.custom:
            return self.crd_schemas.get((rt.group, rt.version, rt.kind))
        return k8s_schema.builtin_root(rt.group, rt.version, rt.kind)

    def _check_unknown_fields(self, rt: ResourceType, obj: JSON) -> None:
        mode = getattr(self._request, "mode", None) or "Strict"
        unknown = k8s_schema.unknown_fields(self.schema_root(rt), obj, drop=mode != "Strict")
        if not unknown:
            return
        texts = [f'unknown field "{decoder_path}"' for _, decoder_path in unknown]
        if mode == "Strict":
            raise errors.bad_request(
                f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: '
                f"strict decoding error: {', '.join(texts)}"
            )
        if mode == "Warn" and self._request.warnings is not None:
            self._request.warnings.extend(texts)

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the lock for one write; the outermost one runs the controllers after it."""
        with self.lock:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            if self._depth == 0 and self._dirty and not self._reconciling:
                self._reconcile()

    def _reconcile(self) -> None:
        self._reconciling = True
        try:
            for _ in range(100):
                self._dirty = False
                for controller in self.controllers:
                    controller()
                if not self._dirty:
                    return
        finally:
            self._reconciling = False

    # Types -----------------------------------------------------------------------------

    def find_type(self, group: str, version: str, plural: str) -> ResourceType | None:
        for rt in self.types:
            if (rt.group, rt.version, rt.plural) == (group, version, plural):
                return rt
        return None

    def type_by_kind(self, api_version: str, kind: str) -> ResourceType | None:
        for rt in self.types:
            if rt.api_version == api_version and rt.kind == kind:
                return rt
        return None

    def resolve(self, name: str) -> ResourceType:
        """A type named the way a test would: Node, nodes, ds, daemonsets.apps, ClusterPolicy."""
        for rt in self.types:  # built-in core types win, as in kubectl's RESTMapper
            if name in rt.names():
                return rt
        lowered = name.lower()
        for rt in self.types:
            if lowered in {n.lower() for n in rt.names()}:
                return rt
        raise KeyError(f"unknown resource type {name!r}")

    def register(self, new_types: Iterable[ResourceType]) -> None:
        for rt in new_types:
            self.types = [t for t in self.types if (t.group, t.version, t.plural) != (rt.group, rt.version, rt.plural)]
            self.types.append(rt)
        self.discovery_generation += 1

    def unregister(self, group: str, plural: str) -> None:
        self.types = [t for t in self.types if (t.group, t.plural) != (group, plural)]
        self.objects.pop((group, plural), None)
        self.discovery_generation += 1

    # Reads -----------------------------------------------------------------------------

    def _bucket(self, rt: ResourceType) -> dict[tuple[str, str], JSON]:
        return self.objects.setdefault(rt.key, {})

    def _view(self, rt: ResourceType, obj: JSON) -> JSON:
        out = copy.deepcopy(obj)
        if rt.group == "events.k8s.io":
            return to_events_v1(out)
        out["apiVersion"] = rt.api_version
        out["kind"] = rt.kind
        return out

    def get(self, rt: ResourceType, namespace: str | None, name: str) -> JSON:
        with self.lock:
            obj = self._bucket(rt).get((namespace or "", name))
            if obj is None:
                raise errors.not_found(rt, name)
            return self._view(rt, obj)

    def peek(self, rt: ResourceType, namespace: str | None, name: str) -> JSON | None:
        """The stored object itself (no copy), or None. Callers hold the lock."""
        return self._bucket(rt).get((namespace or "", name))

    def matches(self, rt: ResourceType, obj: JSON, opts: ListOptions) -> bool:
        meta = obj.get("metadata", {})
        if opts.namespace and meta.get("namespace", "") != opts.namespace:
            return False
        if opts.labels and not labels_match(opts.labels, meta.get("labels")):
            return False
        if opts.fields and not fields_match(rt.key[1], opts.fields, obj):
            return False
        return True

    def normalise_fields(self, rt: ResourceType, reqs: list[FieldRequirement]) -> list[FieldRequirement]:
        if rt.group == "events.k8s.io":
            reqs = [FieldRequirement(EVENTS_V1_FIELDS.get(r.field, r.field), r.value, r.negate) for r in reqs]
        check_field_selector(rt.key[1], reqs)
        return reqs

    def list(self, rt: ResourceType, opts: ListOptions, limit: int = 0, continue_token: str = "") -> JSON:
        with self.lock:
            items = sorted(self._bucket(rt).items())
            start = ""
            if continue_token:
                try:
                    start = json.loads(base64.b64decode(continue_token))["start"]
                except (ValueError, KeyError) as exc:
                    raise errors.bad_request("continue key is not valid") from exc
            selected = [obj for (ns, name), obj in items if f"{ns}/{name}" > start and self.matches(rt, obj, opts)]
            meta: JSON = {"resourceVersion": str(self.rv)}
            if limit and len(selected) > limit:
                last = selected[limit - 1]["metadata"]
                token = {"start": f"{last.get('namespace', '')}/{last['name']}", "rv": self.rv}
                meta["continue"] = base64.b64encode(json.dumps(token).encode()).decode()
                meta["remainingItemCount"] = len(selected) - limit
                selected = selected[:limit]
            return {
                "kind": f"{rt.kind}List",
                "apiVersion": rt.api_version,
                "metadata": meta,
                "items": [self._view(rt, o) for o in selected],
            }

    # Writes ----------------------------------------------------------------------------

    def _check_namespace(self, rt: ResourceType, namespace: str | None) -> str:
        if not rt.namespaced:
            return ""
        if not namespace:
            raise errors.bad_request("the server could not find the requested resource")
        ns_type = self.resolve("Namespace")
        if ("", namespace) not in self._bucket(ns_type):
            raise errors.namespace_not_found(namespace)
        return namespace

    def _incoming(self, rt: ResourceType, body: Any, namespace: str | None) -> JSON:
        if not isinstance(body, dict):
            raise errors.bad_request("Object 'Kind' is missing in the request body")
        obj = copy.deepcopy(body)
        if rt.group == "events.k8s.io":
            obj = from_events_v1(obj)
        else:
            api_version, kind = obj.get("apiVersion"), obj.get("kind")
            if api_version and api_version != rt.api_version:
                raise errors.bad_request(
                    f"the API version in the data ({api_version}) does not match the "
                    f"expected API version ({rt.api_version})"
                )
            if kind and kind != rt.kind:
                raise errors.bad_request(f"the kind in the data ({kind}) does not match the expected kind ({rt.kind})")
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise errors.bad_request("metadata must be an object")
        if rt.namespaced:
            body_ns = meta.get("namespace")
            if body_ns and namespace and body_ns != namespace:
                raise errors.bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        obj["apiVersion"] = "v1" if rt.key == ("", "events") else rt.api_version
        obj["kind"] = rt.kind
        return obj

    def _stored_type(self, rt: ResourceType) -> ResourceType:
        """The type whose shape is stored (core Event for events.k8s.io)."""
        if rt.group == "events.k8s.io":
            return self.resolve("Event")
        return rt

    def _finish(self, rt: ResourceType, obj: JSON, old: JSON | None, check_fields: bool = True) -> None:
        if check_fields:
            self._check_unknown_fields(rt, obj)
        admission.apply_defaults(rt, obj)
        problems = admission.validate(rt, obj, old)
        if problems:
            raise errors.invalid(rt, obj["metadata"].get("name", ""), problems)
        if rt.tracks_generation:
            meta = obj["metadata"]
            if old is None:
                meta["generation"] = 1
            else:
                gen = old["metadata"].get("generation", 1)
                meta["generation"] = gen + 1 if _spec_part(old) != _spec_part(obj) else gen

    def create(self, rt: ResourceType, namespace: str | None, body: Any, manager: str, dry_run: bool = False) -> JSON:
        with self.writing():
            srt = self._stored_type(rt)
            if rt.kind == "SelfSubjectAccessReview":
                review = self._incoming(rt, body, None)
                review["status"] = {"allowed": True, "reason": "the stand-in's admin token"}
                return review
            namespace = self._check_namespace(rt, namespace)
            obj = self._incoming(rt, body, namespace)
            meta = obj["metadata"]
            if not meta.get("name") and not meta.get("generateName"):
                raise errors.invalid(rt, "", admission.validate_name(rt, ""))
            for key in (
                "resourceVersion",
                "uid",
                "creationTimestamp",
                "managedFields",
                "deletionTimestamp",
                "generation",
            ):
                meta.pop(key, None)
            if srt.has_status and srt.kind not in ("Node", "Namespace"):
                obj.pop("status", None)
            # Admission sees the object before a generateName is turned into a name, so
            # its refusals name `pods "ds-name-"`, as the real ones do.
            self._on_create(srt, obj)
            if not meta.get("name"):
                meta["name"] = meta["generateName"] + random_suffix()
            name = meta["name"]
            if (namespace, name) in self._bucket(srt):
                raise errors.already_exists(rt, name)
            self._finish(srt, obj, None)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now_rfc3339()
            ownership.track_update(
                None, obj, manager, self.schema_root(srt), srt.has_status, rt.api_version, now_rfc3339()
            )
            if dry_run:
                return self._view(rt, obj)
            self._commit(srt, obj, None)
            return self._view(rt, obj)

    def _on_create(self, rt: ResourceType, obj: JSON) -> None:
        if rt.kind == "Pod" and rt.group == "":
            obj["status"] = {"phase": "Pending", "qosClass": _qos_class(obj.get("spec") or {})}
            spec = obj.setdefault("spec", {})
            prio_name = spec.get("priorityClassName")
            if prio_name:
                value = admission.SYSTEM_PRIORITIES.get(prio_name)
                pc = self._bucket(self.resolve("PriorityClass")).get(("", prio_name))
                if pc is not None:
                    value = pc.get("value", 0)
                if value is None:
                    raise errors.forbidden(
                        rt,
                        obj["metadata"].get("name") or obj["metadata"].get("generateName", ""),
                        f"no PriorityClass with name {prio_name} was found",
                    )
                spec["priority"] = value
            else:
                spec.setdefault("priority", 0)
            account = spec.get("serviceAccountName") or spec.get("serviceAccount")
            namespace = obj["metadata"].get("namespace", "")
            if account and (namespace, account) not in self._bucket(self.resolve("ServiceAccount")):
                raise errors.forbidden(
                    rt,
                    obj["metadata"].get("name") or obj["metadata"].get("generateName", ""),
                    f'error looking up service account {namespace}/{account}: serviceaccount "{account}" not found',
                )
            if spec.get("nodeName") and self.prepare_bound_pod is not None:
                self.prepare_bound_pod(obj)
        elif rt.kind == "DaemonSet" and rt.group == "apps":
            obj["status"] = {
                "currentNumberScheduled": 0,
                "numberMisscheduled": 0,
                "desiredNumberScheduled": 0,
                "numberReady": 0,
            }
        elif rt.kind == "Event" and rt.group == "":
            obj.setdefault("count", 1)
            stamp = now_rfc3339()
            obj.setdefault("firstTimestamp", stamp)
            obj.setdefault("lastTimestamp", stamp)

    def _write_existing(
        self, rt: ResourceType, old: JSON, new: JSON, manager: str, subresource: str, dry_run: bool, track: bool = True
    ) -> JSON:
        """Finish an update of `old` into `new` and commit it unless it changes nothing."""
        srt = self._stored_type(rt)
        meta = new.setdefault("metadata", {})
        for key in ("uid", "creationTimestamp", "generation", "deletionTimestamp"):
            if key in old["metadata"]:
                meta[key] = old["metadata"][key]
            else:
                meta.pop(key, None)
        meta["name"] = old["metadata"]["name"]
        if srt.namespaced:
            meta["namespace"] = old["metadata"]["namespace"]
        if srt.has_status:
            if subresource == "status":
                status = new.get("status")
                new = copy.deepcopy(old) | {"status": status}
                if status is None:
                    new.pop("status", None)
                new["metadata"]["managedFields"] = meta.get("managedFields", old["metadata"].get("managedFields"))
            elif "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        self._finish(srt, new, old)
        if track:
            ownership.track_update(
                old, new, manager, self.schema_root(srt), srt.has_status, rt.api_version, now_rfc3339(), subresource
            )
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        if _same(old, new):
            return self._view(rt, old)
        if dry_run:
            return self._view(rt, new)
        self._commit(srt, new, old)
        return self._view(rt, new)

    def replace(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        body: Any,
        manager: str,
        subresource: str = "",
        dry_run: bool = False,
    ) -> JSON:
        with self.writing():
            srt = self._stored_type(rt)
            namespace = self._check_namespace(rt, namespace) if rt.namespaced else ""
            old = self._bucket(srt).get((namespace, name))
            if old is None:
                raise errors.not_found(rt, name)
            new = self._incoming(rt, body, namespace)
            body_name = new["metadata"].get("name")
            if body_name and body_name != name:
                raise errors.bad_request(
                    f"the name of the object ({body_name}) does not match the name on the URL ({name})"
                )
            wanted_rv = new["metadata"].get("resourceVersion")
            if wanted_rv and wanted_rv != old["metadata"]["resourceVersion"]:
                raise errors.stale_resource_version(rt, name)
            if "managedFields" not in new["metadata"] and old["metadata"].get("managedFields"):
                new["metadata"]["managedFields"] = old["metadata"]["managedFields"]
            return self._write_existing(rt, old, new, manager, subresource, dry_run)

    def patch(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        content_type: str,
        body: bytes,
        manager: str,
        force: bool = False,
        subresource: str = "",
        dry_run: bool = False,
    ) -> tuple[JSON, bool]:
        """Returns (object, created)."""
        with self.writing():
            srt = self._stored_type(rt)
            if rt.namespaced:
                namespace = self._check_namespace(rt, namespace)
            else:
                namespace = ""
            old = self._bucket(srt).get((namespace, name))
            if content_type == APPLY_PATCH:
                return self._apply(rt, namespace, name, old, body, manager, force, subresource, dry_run)
            if old is None:
                raise errors.not_found(rt, name)
            # No JSON patch (RFC 6902): gpunode never sends one (standin.py's docstring).
            accepted = [MERGE_PATCH, APPLY_PATCH]
            if not srt.custom:
                accepted.insert(1, STRATEGIC_PATCH)
            if content_type not in accepted:
                raise errors.unsupported_media_type(content_type, accepted)
            current = self._view(rt, old)
            try:
                doc = patches.decode_json(body)
                if content_type == MERGE_PATCH:
                    new = patches.json_merge_patch(current, doc)
                else:
                    new = patches.strategic_merge(current, doc, self.schema_root(srt))
            except patches.PatchError as exc:
                raise errors.ApiError(400, "BadRequest", str(exc)) from exc
            if not isinstance(new, dict):
                raise errors.bad_request("patch did not produce an object")
            new = self._incoming(rt, new, namespace)
            wanted_rv = new["metadata"].get("resourceVersion")
            if wanted_rv and wanted_rv != old["metadata"]["resourceVersion"]:
                raise errors.stale_resource_version(rt, name)
            return self._write_existing(rt, old, new, manager, subresource, dry_run), False

    def _apply(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        old: JSON | None,
        body: bytes,
        manager: str,
        force: bool,
        subresource: str,
        dry_run: bool,
    ) -> tuple[JSON, bool]:
        srt = self._stored_type(rt)
        if not manager:
            raise errors.bad_request(
                "PATCH is not supported for apply without a fieldManager (fieldManager is required for apply requests)"
            )
        try:
            applied = yaml.safe_load(body)
        except yaml.YAMLError as exc:
            raise errors.bad_request(f"error decoding YAML: {exc}") from exc
        if not isinstance(applied, dict):
            raise errors.bad_request("apply patch must be an object")
        applied = self._incoming(rt, applied, namespace)
        root = self.schema_root(srt)
        if root is not None:
            # Apply types the patch against the schema first, whatever fieldValidation
            # says; kube-apiserver 1.32 reports a failure there as a bare 500.
            unknown = k8s_schema.unknown_fields(root, applied)
            if unknown:
                group_version = f"{rt.group}/{rt.version}"
                raise errors.ApiError(
                    500,
                    "",
                    f"failed to create typed patch object ({namespace}/{name}; "
                    f"{group_version}, Kind={rt.kind}): "
                    + "\n".join(f"{path}: field not declared in schema" for path, _ in unknown),
                )
        applied_name = applied["metadata"].get("name")
        if applied_name and applied_name != name:
            raise errors.bad_request(
                f"the name of the object ({applied_name}) does not match the name on the URL ({name})"
            )
        applied["metadata"]["name"] = name
        if not rt.namespaced:
            applied["metadata"].pop("namespace", None)
        now = now_rfc3339()
        has_status = srt.has_status and subresource != "status"
        try:
            result = ownership.server_side_apply(old, applied, manager, force, root, has_status, rt.api_version, now)
        except ownership.ApplyConflict as exc:
            raise _conflict_error(rt, name, exc.conflicts) from exc
        if old is None:
            result.setdefault("metadata", {})
            entries = result["metadata"].pop("managedFields", None)
            created = self.create(rt, namespace, result, manager, dry_run=True)
            # create() tracked the fields as an Update; the apply entry is what counts.
            created["metadata"]["managedFields"] = entries
            obj = self._incoming(rt, created, namespace)
            obj["metadata"]["managedFields"] = entries
            if dry_run:
                return self._view(rt, obj), True
            self._commit(srt, obj, None)
            return self._view(rt, obj), True
        return self._write_existing(rt, old, result, manager, subresource, dry_run, track=False), False

    def delete(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        propagation: str = "Background",
        dry_run: bool = False,
        precondition_uid: str | None = None,
        precondition_rv: str | None = None,
    ) -> JSON:
        with self.writing():
            srt = self._stored_type(rt)
            key = (namespace or "" if rt.namespaced else "", name)
            old = self._bucket(srt).get(key)
            if old is None:
                raise errors.not_found(rt, name)
            if precondition_uid and precondition_uid != old["metadata"].get("uid"):
                raise errors.conflict(
                    rt,
                    name,
                    f"Precondition failed: UID in precondition: "
                    f"{precondition_uid}, UID in object meta: "
                    f"{old['metadata'].get('uid')}",
                )
            if precondition_rv and precondition_rv != old["metadata"].get("resourceVersion"):
                raise errors.conflict(
                    rt,
                    name,
                    "Precondition failed: ResourceVersion in "
                    f"precondition: {precondition_rv}, "
                    "ResourceVersion in object meta: "
                    f"{old['metadata'].get('resourceVersion')}",
                )
            view = self._view(rt, old)
            if dry_run:
                return view
            self._remove(srt, key, propagation)
            return view

    def _remove(self, rt: ResourceType, key: tuple[str, str], propagation: str) -> None:
        old = self._bucket(rt).pop(key, None)
        if old is None:
            return
        gone = copy.deepcopy(old)
        self.rv += 1
        gone["metadata"]["resourceVersion"] = str(self.rv)
        self._record(rt, "DELETED", gone, old)
        if rt.key != ("", "events"):
            self._dirty = True
        uid = old["metadata"].get("uid")
        if rt.kind == "CustomResourceDefinition":
            spec = old.get("spec", {})
            self.unregister(spec.get("group", ""), (spec.get("names") or {}).get("plural", ""))
        if rt.kind == "Namespace" and rt.group == "":
            for other in list(self.types):
                if other.namespaced and other.storage == ("", ""):
                    for okey in [k for k in self._bucket(other) if k[0] == key[1]]:
                        self._remove(other, okey, "Background")
        self._collect_garbage(uid, propagation)
        for hook in self.after_write:
            hook(rt, "DELETED", gone, old)

    def _collect_garbage(self, owner_uid: str | None, propagation: str) -> None:
        """Delete (or orphan) what the deleted object owned, as the garbage collector does."""
        if not owner_uid:
            return
        for rt in list(self.types):
            if rt.storage != ("", ""):
                continue
            for key, obj in list(self._bucket(rt).items()):
                refs = obj["metadata"].get("ownerReferences") or []
                if not any(r.get("uid") == owner_uid for r in refs):
                    continue
                remaining = [r for r in refs if r.get("uid") != owner_uid]
                if propagation == "Orphan" or remaining:
                    new = copy.deepcopy(obj)
                    if remaining:
                        new["metadata"]["ownerReferences"] = remaining
                    else:
                        new["metadata"].pop("ownerReferences", None)
                    self._commit(rt, new, obj)
                else:
                    self._remove(rt, key, propagation)

    # Commit and watch ------------------------------------------------------------------

    def _default_service_account(self, namespace: str) -> None:
        """What the ServiceAccount controller does for every new namespace."""
        sa_type = self.resolve("ServiceAccount")
        if (namespace, "default") in self._bucket(sa_type):
            return
        account = {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {
                "name": "default",
                "namespace": namespace,
                "uid": str(uuid.uuid4()),
                "creationTimestamp": now_rfc3339(),
            },
        }
        self._commit(sa_type, account, None)

    def _commit(self, rt: ResourceType, obj: JSON, old: JSON | None) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        key = (obj["metadata"].get("namespace", "") if rt.namespaced else "", obj["metadata"]["name"])
        self._bucket(rt)[key] = obj
        self._record(rt, "ADDED" if old is None else "MODIFIED", obj, old)
        if rt.key != ("", "events"):
            self._dirty = True
        if rt.kind == "CustomResourceDefinition":
            spec = obj.get("spec") or {}
            kind = (spec.get("names") or {}).get("kind", "")
            for version in spec.get("versions") or []:
                self.crd_schemas[(spec.get("group", ""), version.get("name", ""), kind)] = k8s_schema.crd_root(version)
            self.register(type_from_crd(obj))
        if rt.kind == "Namespace" and rt.group == "" and old is None:
            self._default_service_account(obj["metadata"]["name"])
        for hook in self.after_write:
            hook(rt, "ADDED" if old is None else "MODIFIED", obj, old)

    def commit_internal(self, rt: ResourceType, obj: JSON, old: JSON | None) -> None:
        """A write by the stand-in's own controllers (no admission; the caller built it)."""
        with self.writing():
            self._commit(rt, obj, old)

    def remove_internal(self, rt: ResourceType, namespace: str, name: str) -> None:
        with self.writing():
            self._remove(rt, (namespace if rt.namespaced else "", name), "Background")

    def _record(self, rt: ResourceType, kind: str, obj: JSON, old: JSON | None) -> None:
        self.history.append(
            WatchEvent(self.rv, rt.key, kind, copy.deepcopy(obj), copy.deepcopy(old) if old is not None else None)
        )
        if len(self.history) > HISTORY_LIMIT:
            drop = len(self.history) - HISTORY_LIMIT // 2
            del self.history[:drop]
            self.history_base += drop
        self.cond.notify_all()

    def oldest_watchable(self) -> int:
        return self.history[0].rv if self.history else self.rv

    def view(self, rt: ResourceType, obj: JSON) -> JSON:
        return self._view(rt, obj)


def _spec_part(obj: JSON) -> JSON:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


def _without_times(obj: JSON) -> JSON:
    out = copy.deepcopy(obj)
    for entry in out.get("metadata", {}).get("managedFields") or []:
        entry.pop("time", None)
    return out


def _same(old: JSON, new: JSON) -> bool:
    return _without_times(old) == _without_times(new)


def _qos_class(spec: JSON) -> str:
    containers = spec.get("containers") or []
    requests_any = False
    guaranteed = bool(containers)
    for c in containers:
        res = c.get("resources") or {}
        req, lim = res.get("requests") or {}, res.get("limits") or {}
        if req or lim:
            requests_any = True
        for r in ("cpu", "memory"):
            if r not in lim or (r in req and req[r] != lim[r]):
                guaranteed = False
    if guaranteed and requests_any:
        return "Guaranteed"
    return "Burstable" if requests_any else "BestEffort"


def _conflict_error(rt: ResourceType, name: str, conflicts: list[ownership.Conflict]) -> errors.ApiError:
    causes = []
    lines = []
    for c in conflicts:
        msg = f'conflict with "{c.manager}"' + (f" using {c.api_version}" if c.api_version else "")
        field = ownership.format_path(c.path)
        causes.append({"reason": "FieldManagerConflict", "message": msg, "field": field})
        lines.append(f"{msg}: {field}")
    count = len(conflicts)
    if count == 1:
        message = f"Apply failed with 1 conflict: {lines[0]}"
    else:
        message = f"Apply failed with {count} conflicts: " + "\n".join(lines)
    details: JSON = {"name": name, "kind": rt.plural, "causes": causes}
    if rt.group:
        details["group"] = rt.group
    return errors.ApiError(409, "Conflict", message, details)
