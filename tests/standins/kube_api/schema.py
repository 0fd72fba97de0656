"""Field names of the built-in types gpunode writes, to reject unknown fields as the
real server does.

Server-side apply always refuses a field its schema does not declare
(`.spec.foo: field not declared in schema`); create, replace and the other patches refuse
them when kubectl sends `fieldValidation=Strict`, its default (`strict decoding error:
unknown field "spec.foo"`). A manifest with a misplaced field (a toleration under the
container, `runtimeClassName` in the wrong place) therefore fails here as on a cluster.

Structures are described as far as gpunode's manifests go; a field typed ANY is not
looked into (affinity, probes, volume sources other than hostPath...).
"""

from __future__ import annotations

import json
from typing import Any, Union

JSON = dict[str, Any]

ANY = "any"
# A field's type: ANY, the name of a struct below, ("list", type) or ("map", type).
FieldType = Union[str, tuple[str, str]]

_OBJECT_META: dict[str, FieldType] = {
    f: ANY for f in ("name", "generateName", "namespace", "selfLink", "uid", "resourceVersion",
                     "generation", "creationTimestamp", "deletionTimestamp",
                     "deletionGracePeriodSeconds", "labels", "annotations", "ownerReferences",
                     "finalizers", "managedFields")}

STRUCTS: dict[str, dict[str, FieldType]] = {
    "ObjectMeta": _OBJECT_META,
    "DaemonSet": {"apiVersion": ANY, "kind": ANY, "metadata": "ObjectMeta",
                  "spec": "DaemonSetSpec", "status": ANY},
    "DaemonSetSpec": {"selector": "LabelSelector", "template": "PodTemplateSpec",
                      "updateStrategy": "DaemonSetUpdateStrategy", "minReadySeconds": ANY,
                      "revisionHistoryLimit": ANY},
    "DaemonSetUpdateStrategy": {"type": ANY, "rollingUpdate": "RollingUpdateDaemonSet"},
    "RollingUpdateDaemonSet": {"maxUnavailable": ANY, "maxSurge": ANY},
    "LabelSelector": {"matchLabels": ANY, "matchExpressions": ANY},
    "PodTemplateSpec": {"metadata": "ObjectMeta", "spec": "PodSpec"},
    "Pod": {"apiVersion": ANY, "kind": ANY, "metadata": "ObjectMeta", "spec": "PodSpec",
            "status": ANY},
    "PodSpec": {
        **{f: ANY for f in (
            "activeDeadlineSeconds", "affinity", "automountServiceAccountToken", "dnsConfig",
            "dnsPolicy", "enableServiceLinks", "hostAliases", "hostIPC", "hostNetwork",
            "hostPID", "hostUsers", "hostname", "imagePullSecrets", "nodeName",
            "nodeSelector", "os", "overhead", "preemptionPolicy", "priority",
            "priorityClassName", "readinessGates", "resourceClaims", "resources",
            "restartPolicy", "runtimeClassName", "schedulerName", "schedulingGates",
            "securityContext", "serviceAccount", "serviceAccountName", "setHostnameAsFQDN",
            "shareProcessNamespace", "subdomain", "terminationGracePeriodSeconds",
            "topologySpreadConstraints", "ephemeralContainers")},
        "containers": ("list", "Container"), "initContainers": ("list", "Container"),
        "tolerations": ("list", "Toleration"), "volumes": ("list", "Volume"),
    },
    "Container": {
        **{f: ANY for f in (
            "name", "image", "command", "args", "workingDir", "envFrom", "imagePullPolicy",
            "lifecycle", "livenessProbe", "readinessProbe", "startupProbe", "resizePolicy",
            "restartPolicy", "stdin", "stdinOnce", "tty", "terminationMessagePath",
            "terminationMessagePolicy", "volumeDevices")},
        "env": ("list", "EnvVar"), "ports": ("list", "ContainerPort"),
        "resources": "ResourceRequirements", "securityContext": "SecurityContext",
        "volumeMounts": ("list", "VolumeMount"),
    },
    "EnvVar": {"name": ANY, "value": ANY, "valueFrom": ANY},
    "ContainerPort": {"name": ANY, "containerPort": ANY, "hostPort": ANY, "hostIP": ANY,
                      "protocol": ANY},
    "ResourceRequirements": {"limits": ANY, "requests": ANY, "claims": ANY},
    "SecurityContext": {f: ANY for f in (
        "allowPrivilegeEscalation", "appArmorProfile", "capabilities", "privileged",
        "procMount", "readOnlyRootFilesystem", "runAsGroup", "runAsNonRoot", "runAsUser",
        "seLinuxOptions", "seccompProfile", "windowsOptions")},
    "VolumeMount": {f: ANY for f in ("name", "mountPath", "readOnly", "recursiveReadOnly",
                                     "subPath", "subPathExpr", "mountPropagation")},
    "Volume": {
        **{f: ANY for f in (
            "name", "configMap", "secret", "emptyDir", "projected", "downwardAPI",
            "persistentVolumeClaim", "csi", "ephemeral", "image", "nfs", "iscsi", "fc",
            "local")},
        "hostPath": "HostPathVolumeSource",
    },
    "HostPathVolumeSource": {"path": ANY, "type": ANY},
    "Toleration": {"key": ANY, "operator": ANY, "value": ANY, "effect": ANY,
                   "tolerationSeconds": ANY},
    "RuntimeClass": {"apiVersion": ANY, "kind": ANY, "metadata": "ObjectMeta", "handler": ANY,
                     "overhead": ANY, "scheduling": ANY},
    "Namespace": {"apiVersion": ANY, "kind": ANY, "metadata": "ObjectMeta", "spec": ANY,
                  "status": ANY},
    "Node": {"apiVersion": ANY, "kind": ANY, "metadata": "ObjectMeta", "spec": ANY,
             "status": ANY},
    "ConfigMap": {"apiVersion": ANY, "kind": ANY, "metadata": "ObjectMeta", "data": ANY,
                  "binaryData": ANY, "immutable": ANY},
    "PriorityClass": {"apiVersion": ANY, "kind": ANY, "metadata": "ObjectMeta", "value": ANY,
                      "globalDefault": ANY, "description": ANY, "preemptionPolicy": ANY},
}

# List items named by their key in apply's paths: containers[name="plugin"].
_ITEM_KEYS = {"containers": "name", "initContainers": "name", "env": "name",
              "volumes": "name", "volumeMounts": "mountPath", "ports": "containerPort"}


def unknown_fields(kind: str, obj: Any, drop: bool = False) -> list[tuple[str, str]]:
    """Unknown fields of a built-in `kind` object: (apply-style path, decoder-style path).
    `drop`: also delete them, as decoding does when validation is not strict."""
    if kind not in STRUCTS:
        return []
    out: list[tuple[str, str]] = []
    _walk(STRUCTS[kind], obj, "", "", out, drop)
    return out


def _walk(struct: dict[str, FieldType], obj: Any, apply_path: str, decode_path: str,
          out: list[tuple[str, str]], drop: bool) -> None:
    if not isinstance(obj, dict):
        return
    for key, value in list(obj.items()):
        a_path = f"{apply_path}.{key}"
        d_path = f"{decode_path}.{key}" if decode_path else key
        if key not in struct:
            out.append((a_path, d_path))
            if drop:
                del obj[key]
            continue
        ftype = struct[key]
        if ftype == ANY or value is None:
            continue
        if isinstance(ftype, tuple):
            _, item_type = ftype
            if not isinstance(value, list):
                continue
            for n, item in enumerate(value):
                ident = _ITEM_KEYS.get(key)
                if ident and isinstance(item, dict) and ident in item:
                    label = f"[{ident}={json.dumps(item[ident])}]"
                else:
                    label = f"[{n}]"
                _walk(STRUCTS[item_type], item, a_path + label, f"{d_path}[{n}]", out, drop)
        else:
            _walk(STRUCTS[ftype], value, a_path, d_path, out, drop)
