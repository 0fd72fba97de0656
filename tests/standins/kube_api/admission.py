"""What the API server does to an object before storing it: defaults and validation.

Defaults matter for fidelity beyond looks: re-applying an unchanged manifest must give an
identical stored object (no new resourceVersion, no generation bump), which only holds
when the server fills in the same defaults a real one does and the apply merge leaves
them alone. Validation covers what gpunode can get wrong and a user would see: names,
labels, a DaemonSet selector that does not match its template, immutable fields.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from .errors import FieldError, GoValue
from .resources import ResourceType
from .selectors import label_selector_object_matches

JSON = dict[str, Any]

DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")

SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
    "characters, '-' or '.', and must start and end with an alphanumeric "
    "character (e.g. 'example.com', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters "
    "or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  "
    "or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
LABEL_VALUE_MSG = (
    "a valid label must be an empty string or consist of alphanumeric "
    "characters, '-', '_' or '.', and must start and end with an alphanumeric "
    "character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for "
    "validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)
QUALIFIED_NAME_MSG = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and "
    "must start and end with an alphanumeric character (e.g. 'MyName',  or "
    "'my.name',  or '123-abc', regex used for validation is "
    "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
)

# Priority classes every cluster has.
SYSTEM_PRIORITIES = {"system-node-critical": 2000001000, "system-cluster-critical": 2000000000}


# Defaults ------------------------------------------------------------------------------


def _default_container(c: JSON) -> None:
    c.setdefault("terminationMessagePath", "/dev/termination-log")
    c.setdefault("terminationMessagePolicy", "File")
    image = str(c.get("image", ""))
    tag = image.rsplit("/", 1)[-1]
    if "imagePullPolicy" not in c:
        untagged = ":" not in tag and "@" not in image
        c["imagePullPolicy"] = "Always" if untagged or tag.endswith(":latest") else "IfNotPresent"
    c.setdefault("resources", {})
    for port in c.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")
    for env in c.get("env") or []:
        field_ref = (env.get("valueFrom") or {}).get("fieldRef") if isinstance(env, dict) else None
        if isinstance(field_ref, dict):
            field_ref.setdefault("apiVersion", "v1")


def default_pod_spec(spec: JSON) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    for key in ("containers", "initContainers"):
        for c in spec.get(key) or []:
            if isinstance(c, dict):
                _default_container(c)
    for vol in spec.get("volumes") or []:
        if isinstance(vol, dict) and isinstance(vol.get("hostPath"), dict):
            vol["hostPath"].setdefault("type", "")


def apply_defaults(rt: ResourceType, obj: JSON) -> None:
    if rt.group == "apps" and rt.kind == "DaemonSet":
        spec = obj.setdefault("spec", {})
        strategy = spec.setdefault("updateStrategy", {"type": "RollingUpdate"})
        strategy.setdefault("type", "RollingUpdate")
        if strategy["type"] == "RollingUpdate":
            rolling = strategy.setdefault("rollingUpdate", {})
            rolling.setdefault("maxUnavailable", 1)
            rolling.setdefault("maxSurge", 0)
        spec.setdefault("revisionHistoryLimit", 10)
        template = spec.setdefault("template", {})
        template.setdefault("metadata", {}).setdefault("creationTimestamp", None)
        default_pod_spec(template.setdefault("spec", {}))
    elif rt.group == "" and rt.kind == "Pod":
        spec = obj.setdefault("spec", {})
        default_pod_spec(spec)
        spec.setdefault("serviceAccountName", "default")
        spec.setdefault("serviceAccount", spec["serviceAccountName"])
        spec.setdefault("enableServiceLinks", True)
        spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
        tolerations = spec.setdefault("tolerations", [])
        # DefaultTolerationSeconds admission: tolerate a not-ready or unreachable node 300 s.
        for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"):
            if not any(
                t.get("key") == key and t.get("effect") in (None, "", "NoExecute")
                for t in tolerations
                if isinstance(t, dict)
            ):
                tolerations.append({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300})
    elif rt.group == "" and rt.kind == "Namespace":
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        obj.setdefault("status", {}).setdefault("phase", "Active")
        obj.setdefault("metadata", {}).setdefault("labels", {}).setdefault(
            "kubernetes.io/metadata.name", obj.get("metadata", {}).get("name", "")
        )
    elif rt.group == "scheduling.k8s.io":
        obj.setdefault("preemptionPolicy", "PreemptLowerPriority")


# Validation ----------------------------------------------------------------------------


def _validate_labels(labels: Any, field: str, errors: list[FieldError]) -> None:
    if labels is None:
        return
    if not isinstance(labels, dict):
        errors.append(FieldError(field, "Invalid value", "must be a map", labels, True))
        return
    for key, value in labels.items():
        prefix, _, name = key.rpartition("/")
        if prefix and (len(prefix) > 253 or not DNS1123_SUBDOMAIN.fullmatch(prefix)):
            errors.append(FieldError(field, "Invalid value", "prefix part " + SUBDOMAIN_MSG, key, True))
        if not name or len(name) > 63 or not LABEL_NAME.fullmatch(name):
            errors.append(FieldError(field, "Invalid value", QUALIFIED_NAME_MSG, key, True))
        if not isinstance(value, str):
            errors.append(FieldError(f"{field}.{key}", "Invalid value", "must be a string", value, True))
        elif len(value) > 63:
            errors.append(FieldError(field, "Invalid value", "must be no more than 63 characters", value, True))
        elif not LABEL_VALUE.fullmatch(value):
            errors.append(FieldError(field, "Invalid value", LABEL_VALUE_MSG, value, True))


def validate_name(rt: ResourceType, name: str) -> list[FieldError]:
    if not name:
        return [FieldError("metadata.name", "Required value", "name or generateName is required")]
    if rt.kind == "Event" or rt.custom and ":" not in name and DNS1123_SUBDOMAIN.fullmatch(name):
        return []
    if rt.kind == "Namespace":
        if len(name) > 63 or not DNS1123_LABEL.fullmatch(name):
            return [FieldError("metadata.name", "Invalid value", LABEL_MSG, name, True)]
        return []
    if len(name) > 253 or not DNS1123_SUBDOMAIN.fullmatch(name):
        return [FieldError("metadata.name", "Invalid value", SUBDOMAIN_MSG, name, True)]
    return []


def _validate_pod_spec(spec: Any, field: str, errors: list[FieldError]) -> None:
    if not isinstance(spec, dict):
        errors.append(FieldError(field, "Required value", ""))
        return
    containers = spec.get("containers")
    if not containers:
        errors.append(FieldError(f"{field}.containers", "Required value", ""))
        return
    seen: set[str] = set()
    for n, c in enumerate(containers):
        cfield = f"{field}.containers[{n}]"
        name = c.get("name", "") if isinstance(c, dict) else ""
        if not name:
            errors.append(FieldError(f"{cfield}.name", "Required value", ""))
        elif not DNS1123_LABEL.fullmatch(name):
            errors.append(FieldError(f"{cfield}.name", "Invalid value", LABEL_MSG, name, True))
        elif name in seen:
            errors.append(FieldError(f"{cfield}.name", "Duplicate value", "", name, True))
        seen.add(name)
        if isinstance(c, dict) and not c.get("image"):
            errors.append(FieldError(f"{cfield}.image", "Required value", ""))
    volume_names = {v.get("name") for v in spec.get("volumes") or [] if isinstance(v, dict)}
    for n, c in enumerate(containers):
        for m, mount in enumerate((c.get("volumeMounts") or []) if isinstance(c, dict) else []):
            if isinstance(mount, dict) and mount.get("name") not in volume_names:
                errors.append(
                    FieldError(
                        f"{field}.containers[{n}].volumeMounts[{m}].name", "Not found", "", mount.get("name"), True
                    )
                )
    restart = spec.get("restartPolicy")
    if restart not in (None, "Always", "OnFailure", "Never"):
        errors.append(
            FieldError(
                f"{field}.restartPolicy",
                "Unsupported value",
                'supported values: "Always", "OnFailure", "Never"',
                restart,
                True,
            )
        )


def validate(rt: ResourceType, obj: JSON, old: JSON | None) -> list[FieldError]:
    errors: list[FieldError] = []
    meta = obj.get("metadata") or {}
    errors += validate_name(rt, meta.get("name", ""))
    _validate_labels(meta.get("labels"), "metadata.labels", errors)
    if rt.group == "apps" and rt.kind == "DaemonSet":
        spec = obj.get("spec") or {}
        selector = spec.get("selector")
        template = spec.get("template") or {}
        tlabels = (template.get("metadata") or {}).get("labels") or {}
        if not selector or not (selector.get("matchLabels") or selector.get("matchExpressions")):
            errors.append(FieldError("spec.selector", "Required value", ""))
        elif not label_selector_object_matches(selector, tlabels):
            errors.append(
                FieldError(
                    "spec.template.metadata.labels",
                    "Invalid value",
                    "`selector` does not match template `labels`",
                    _labels_text(tlabels),
                    True,
                )
            )
        _validate_labels(tlabels, "spec.template.metadata.labels", errors)
        _validate_pod_spec(template.get("spec"), "spec.template.spec", errors)
        if (template.get("spec") or {}).get("restartPolicy", "Always") != "Always":
            errors.append(
                FieldError(
                    "spec.template.spec.restartPolicy",
                    "Unsupported value",
                    'supported values: "Always"',
                    template["spec"]["restartPolicy"],
                    True,
                )
            )
        if old is not None and (old.get("spec") or {}).get("selector") != selector:
            errors.append(
                FieldError("spec.selector", "Invalid value", "field is immutable", _selector_text(selector), True)
            )
    elif rt.group == "" and rt.kind == "Pod":
        _validate_pod_spec(obj.get("spec"), "spec", errors)
        if old is not None:
            errors += _pod_update_errors(old.get("spec") or {}, obj.get("spec") or {})
    elif rt.group == "node.k8s.io" and rt.kind == "RuntimeClass":
        handler = obj.get("handler")
        if not handler:
            errors.append(FieldError("handler", "Required value", ""))
        elif not DNS1123_LABEL.fullmatch(str(handler)):
            errors.append(FieldError("handler", "Invalid value", LABEL_MSG, handler, True))
        if old is not None and old.get("handler") != handler:
            errors.append(FieldError("handler", "Invalid value", "field is immutable", handler, True))
    elif rt.group == "scheduling.k8s.io" and rt.kind == "PriorityClass":
        if "value" not in obj:
            errors.append(FieldError("value", "Required value", ""))
    return errors


def _labels_text(labels: dict[str, str]) -> GoValue:
    inner = ", ".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in sorted(labels.items()))
    return GoValue("map[string]string{" + inner + "}")


def _selector_text(selector: Any) -> GoValue:
    labels = (selector or {}).get("matchLabels") or {}
    inner = ", ".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in sorted(labels.items()))
    return GoValue(
        "v1.LabelSelector{MatchLabels:map[string]string{" + inner + "}, "
        "MatchExpressions:[]v1.LabelSelectorRequirement(nil)}"
    )


def _pod_update_errors(old: JSON, new: JSON) -> list[FieldError]:
    """Pod specs are immutable but for images, activeDeadlineSeconds and added tolerations."""

    def mutable_stripped(spec: JSON) -> JSON:
        s = copy.deepcopy(spec)
        for c in s.get("containers") or []:
            c.pop("image", None)
        for c in s.get("initContainers") or []:
            c.pop("image", None)
        s.pop("activeDeadlineSeconds", None)
        s.pop("tolerations", None)
        return s

    old_tolerations = old.get("tolerations") or []
    removed = [t for t in old_tolerations if t not in (new.get("tolerations") or [])]
    if (
        mutable_stripped(old) != mutable_stripped(new)
        or removed
        or (old.get("nodeName") and old.get("nodeName") != new.get("nodeName"))
    ):
        return [
            FieldError(
                "spec",
                "Forbidden",
                "pod updates may not change fields other than `spec.containers[*]."
                "image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,"
                "`spec.tolerations` (only additions to existing tolerations),"
                "`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it "
                "was previously negative)",
            )
        ]
    return []
