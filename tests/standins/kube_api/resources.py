"""The resource types the stand-in serves, and the discovery documents kubectl reads.

A ResourceType names a REST collection the way the real API server does (group, version,
plural, kind, scope, short names, categories, subresources). Built-in types are fixed;
custom resources are registered at run time when a CustomResourceDefinition is created
(which is how `add_cluster_policy` makes `nvidia.com/v1 ClusterPolicy` appear).
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

JSON = dict[str, Any]

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    kind: str
    plural: str
    singular: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    # Subresources served under .../{name}/{sub}: "status", "log" (pods only).
    subresources: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ALL_VERBS
    # Objects whose metadata.generation tracks changes outside metadata and status.
    tracks_generation: bool = False
    # Custom resources: lists are atomic for apply, printer columns come from the CRD.
    custom: bool = False
    printer_columns: tuple[tuple[str, str, str], ...] = ()  # (name, type, jsonPath)
    # Where objects live: events.k8s.io/v1 events are a view on core v1 events.
    storage: tuple[str, str] = field(default=("", ""))

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> tuple[str, str]:
        """The storage key: objects of two types with the same key are the same objects."""
        return self.storage if self.storage != ("", "") else (self.group, self.plural)

    @property
    def qualified(self) -> str:
        """The name kubectl prints in messages: `daemonsets.apps`, `nodes`."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources

    def names(self) -> set[str]:
        """Every spelling a test may use to name this type in the programmatic API."""
        out = {
            self.kind,
            self.kind.lower(),
            self.plural,
            self.singular,
            self.qualified,
            f"{self.singular}.{self.group}" if self.group else self.singular,
        }
        out.update(self.short_names)
        return out


def _core(kind: str, plural: str, namespaced: bool, **kw: Any) -> ResourceType:
    return ResourceType("", "v1", kind, plural, kind.lower(), namespaced, **kw)


BUILTIN_TYPES: tuple[ResourceType, ...] = (
    _core(
        "Namespace",
        "namespaces",
        False,
        short_names=("ns",),
        subresources=("status",),
        verbs=("create", "delete", "get", "list", "patch", "update", "watch"),
    ),
    _core("Node", "nodes", False, short_names=("no",), subresources=("status",)),
    _core("Pod", "pods", True, short_names=("po",), categories=("all",), subresources=("status", "log", "eviction")),
    _core("Event", "events", True, short_names=("ev",)),
    _core("ConfigMap", "configmaps", True, short_names=("cm",)),
    _core("ServiceAccount", "serviceaccounts", True, short_names=("sa",)),
    _core("Service", "services", True, short_names=("svc",), categories=("all",), subresources=("status",)),
    _core("Secret", "secrets", True),
    ResourceType(
        "apps",
        "v1",
        "DaemonSet",
        "daemonsets",
        "daemonset",
        True,
        short_names=("ds",),
        categories=("all",),
        subresources=("status",),
        tracks_generation=True,
    ),
    ResourceType("node.k8s.io", "v1", "RuntimeClass", "runtimeclasses", "runtimeclass", False),
    # gpunode's rollout reads budgets and evicts through them (disruption.py).
    ResourceType(
        "policy",
        "v1",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        "poddisruptionbudget",
        True,
        short_names=("pdb",),
        subresources=("status",),
        tracks_generation=True,
    ),
    ResourceType("events.k8s.io", "v1", "Event", "events", "event", True, short_names=("ev",), storage=("", "events")),
    ResourceType(
        "scheduling.k8s.io", "v1", "PriorityClass", "priorityclasses", "priorityclass", False, short_names=("pc",)
    ),
    ResourceType("coordination.k8s.io", "v1", "Lease", "leases", "lease", True),
    ResourceType(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        "customresourcedefinition",
        False,
        short_names=("crd", "crds"),
        categories=("api-extensions",),
        subresources=("status",),
        tracks_generation=True,
    ),
    ResourceType("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", "clusterrole", False),
    ResourceType(
        "rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", "clusterrolebinding", False
    ),
    ResourceType("rbac.authorization.k8s.io", "v1", "Role", "roles", "role", True),
    ResourceType("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", "rolebinding", True),
    # Answered, never stored: the caller (the kubeconfig's token) may do anything.
    ResourceType(
        "authorization.k8s.io",
        "v1",
        "SelfSubjectAccessReview",
        "selfsubjectaccessreviews",
        "selfsubjectaccessreview",
        False,
        verbs=("create",),
    ),
)


def type_from_crd(crd: JSON) -> list[ResourceType]:
    """The resource types a CustomResourceDefinition serves (one per served version)."""
    spec = crd.get("spec", {})
    names = spec.get("names", {})
    out = []
    for ver in spec.get("versions", []):
        if not ver.get("served", True):
            continue
        columns = tuple(
            (c.get("name", ""), c.get("type", "string"), c.get("jsonPath", ""))
            for c in ver.get("additionalPrinterColumns", [])
        )
        out.append(
            ResourceType(
                group=spec.get("group", ""),
                version=ver.get("name", ""),
                kind=names.get("kind", ""),
                plural=names.get("plural", ""),
                singular=names.get("singular", names.get("kind", "").lower()),
                namespaced=spec.get("scope") == "Namespaced",
                short_names=tuple(names.get("shortNames", [])),
                categories=tuple(names.get("categories", [])),
                subresources=("status",) if "status" in ver.get("subresources", {}) else (),
                tracks_generation=True,
                custom=True,
                printer_columns=columns,
            )
        )
    return out


def _storage_hash(rt: ResourceType) -> str:
    digest = hashlib.sha256(f"{rt.api_version}/{rt.kind}".encode()).digest()
    return base64.b64encode(digest[:8]).decode()


def _group_versions(types: list[ResourceType]) -> dict[str, list[str]]:
    """Group name -> versions, in registration order (first is preferred)."""
    out: dict[str, list[str]] = {}
    for rt in types:
        versions = out.setdefault(rt.group, [])
        if rt.version not in versions:
            versions.append(rt.version)
    return out


def legacy_api_versions(server_address: str) -> JSON:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    }


def legacy_group_list(types: list[ResourceType]) -> JSON:
    groups = []
    for group, versions in _group_versions(types).items():
        if not group:
            continue
        gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        groups.append({"name": group, "versions": gvs, "preferredVersion": gvs[0]})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def legacy_group(types: list[ResourceType], group: str) -> JSON | None:
    versions = _group_versions(types).get(group)
    if not versions or not group:
        return None
    gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": gvs, "preferredVersion": gvs[0]}


def legacy_resource_list(types: list[ResourceType], group: str, version: str) -> JSON | None:
    selected = [rt for rt in types if rt.group == group and rt.version == version]
    if not selected:
        return None
    resources: list[JSON] = []
    for rt in selected:
        entry: JSON = {
            "name": rt.plural,
            "singularName": rt.singular,
            "namespaced": rt.namespaced,
            "kind": rt.kind,
            "verbs": list(rt.verbs),
            "storageVersionHash": _storage_hash(rt),
        }
        if rt.short_names:
            entry["shortNames"] = list(rt.short_names)
        if rt.categories:
            entry["categories"] = list(rt.categories)
        resources.append(entry)
        for sub in rt.subresources:
            sub_group, sub_version, sub_kind, verbs = _subresource(rt, sub)
            resources.append(
                {
                    "name": f"{rt.plural}/{sub}",
                    "singularName": "",
                    "namespaced": rt.namespaced,
                    "kind": sub_kind,
                    "verbs": list(verbs),
                }
            )
    gv = f"{group}/{version}" if group else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}


# Subresources whose kind is not their parent's: (group, version, kind, verbs).
_SUBRESOURCE_KINDS = {
    "log": ("", "v1", "Pod", ("get",)),
    "eviction": ("policy", "v1", "Eviction", ("create",)),
}


def _subresource(rt: ResourceType, sub: str) -> tuple[str, str, str, tuple[str, ...]]:
    return _SUBRESOURCE_KINDS.get(sub, (rt.group, rt.version, rt.kind, ("get", "patch", "update")))


def aggregated_discovery(types: list[ResourceType], legacy: bool) -> JSON:
    """apidiscovery.k8s.io/v2 APIGroupDiscoveryList: what kubectl 1.32 asks for first.

    `legacy` selects the core group (served at /api) or every named group (/apis).
    """
    items = []
    for group, versions in _group_versions(types).items():
        if (group == "") != legacy:
            continue
        version_docs = []
        for version in versions:
            resources = []
            for rt in types:
                if rt.group != group or rt.version != version:
                    continue
                entry: JSON = {
                    "resource": rt.plural,
                    "responseKind": {"group": group, "version": version, "kind": rt.kind},
                    "scope": "Namespaced" if rt.namespaced else "Cluster",
                    "singularResource": rt.singular,
                    "verbs": list(rt.verbs),
                }
                if rt.short_names:
                    entry["shortNames"] = list(rt.short_names)
                if rt.categories:
                    entry["categories"] = list(rt.categories)
                subs = []
                for sub in rt.subresources:
                    sub_group, sub_version, sub_kind, verbs = _subresource(rt, sub)
                    subs.append(
                        {
                            "subresource": sub,
                            "responseKind": {"group": sub_group, "version": sub_version, "kind": sub_kind},
                            "verbs": list(verbs),
                        }
                    )
                if subs:
                    entry["subresources"] = subs
                resources.append(entry)
            version_docs.append({"version": version, "resources": resources, "freshness": "Current"})
        items.append({"metadata": {"name": group, "creationTimestamp": None}, "versions": version_docs})
    return {"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items}


def etag(doc: JSON) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]
