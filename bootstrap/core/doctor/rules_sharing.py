"""Doctor rules for GPU sharing and per-node device plugin configs (NVIDIA's config v1):

- SHARING-CONFIG-INVALID   a config the plugin refused (did not parse, or cannot be honoured)
- SHARING-CONFIG-MISSING   the node label nvidia.com/device-plugin.config names a config the
                           ConfigMap does not have
- SHARING-REQUEST-TOO-LARGE a pod refused by failRequestsGreaterThanOne
- MPS-DAEMON-DOWN          MPS sharing without its control daemon

Read from both plugins' words: gpunode's (`config_rejected ...`, `mps_daemon_not_running`)
and NVIDIA's (its plugin's "unable to load config", its config-manager's "specified config
... does not exist", its MPS check "error checking MPS daemon health"), from the node's
label and the ConfigMap, and from the kubelet's admission events. Pure.
"""

from __future__ import annotations

import re
import shlex

from gpunode.bootstrap.core.doctor.engine import Findings
from gpunode.bootstrap.core.doctor.evidence import JSON, ClusterView, PodEvidence
from gpunode.bootstrap.core.kube.view import dig, event_text, labels_of, name_of, namespace_of, ref

CONFIG_LABEL = "nvidia.com/device-plugin.config"
TOO_LARGE = "maximum request size for shared resources is 1"
_NVIDIA_CONFIG_FAILED = re.compile(r"unable to (?:load|parse) config(?: file)?:? .*", re.IGNORECASE)
_NVIDIA_CONFIG_MISSING = re.compile(r"specified config (\S+) does not exist")
_NVIDIA_MPS_DOWN = re.compile(r"error checking MPS daemon health.*|MPS daemon .*not (?:healthy|running).*")


def _events(line: str, name: str) -> dict[str, str] | None:
    """gpunode's plugin log line `name key=value ...` as its fields, or None."""
    if not line.startswith(name + " "):
        return None
    try:
        parts = shlex.split(line[len(name) :])
    except ValueError:
        return None
    return dict(part.split("=", 1) for part in parts if "=" in part)


def _log_lines(pods: tuple[PodEvidence, ...]) -> list[tuple[PodEvidence, str]]:
    return [(pod, line.strip()) for pod in pods for line in pod.all_logs.splitlines() if line.strip()]


def sharing_rules(view: ClusterView, node: JSON, findings: Findings) -> None:
    _config_rules(view, node, findings)
    _mps_rules(view, findings)
    _admission_rules(view, findings)


def _config_rules(view: ClusterView, node: JSON, findings: Findings) -> None:
    label = labels_of(node).get(CONFIG_LABEL)
    maps = [m for m in view.config_maps if isinstance(m.get("data"), dict)]
    if label and maps and not any(label in m["data"] for m in maps):
        have = sorted({key for m in maps for key in m["data"]})
        findings.add(
            "SHARING-CONFIG-MISSING",
            cause=f"Node {name_of(node)} is labelled {CONFIG_LABEL}={label}, and no device plugin ConfigMap has a config "
            "of that name: the plugin keeps the config it had (or, starting, refuses to start).",
            evidence=[
                f"node label {CONFIG_LABEL}={label}",
                *(f"ConfigMap {ref(m)} has: {', '.join(sorted(m['data'])) or 'nothing'}" for m in maps),
            ],
            fix=f"Label the node with one of {', '.join(have) or 'the configs'} "
            f"(kubectl label node {name_of(node)} {CONFIG_LABEL}=<name> --overwrite), add the config to the "
            "ConfigMap (gpunode bootstrap/render --plugin-config NAME=FILE), or remove the label.",
        )
    for pod, line in _log_lines(view.plugin_pods):
        fields = _events(line, "config_rejected")
        pod_ref = f"device plugin pod {ref(pod.pod)}"
        if fields is not None:
            kept = fields.get("in_force")
            if fields.get("reason") == "missing":
                findings.add(
                    "SHARING-CONFIG-MISSING",
                    cause=f"The node's {CONFIG_LABEL} label names config {fields.get('config')}, which the plugin's "
                    f"ConfigMap does not have; {'config ' + kept + ' stays in force' if kept else 'the plugin did not start'}.",
                    evidence=[f"{pod_ref}: {line}"],
                    severity="critical" if not kept else "warning",
                )
            else:
                findings.add(
                    "SHARING-CONFIG-INVALID",
                    cause=f"Device plugin config {fields.get('config')} was refused: {fields.get('error', 'see the log')}; "
                    f"{'config ' + kept + ' stays in force' if kept else 'the plugin did not start'}.",
                    evidence=[f"{pod_ref}: {line}"],
                    fix="Correct the config in the ConfigMap (the error names the key and line); gpunode render "
                    "--plugin-config FILE checks a config before it reaches the cluster.",
                    severity="critical" if not kept else "warning",
                )
            continue
        missing = _NVIDIA_CONFIG_MISSING.search(line)
        if missing:
            findings.add(
                "SHARING-CONFIG-MISSING",
                cause=f"NVIDIA's config-manager found no config {missing.group(1)} (the node's {CONFIG_LABEL} label "
                "or the default names it): the plugin pod does not start.",
                evidence=[f"{pod_ref}: {line}"],
            )
        elif _NVIDIA_CONFIG_FAILED.search(line):
            findings.add(
                "SHARING-CONFIG-INVALID",
                cause="NVIDIA's device plugin could not load its config file: it does not start.",
                evidence=[f"{pod_ref}: {line}"],
            )


def _mps_rules(view: ClusterView, findings: Findings) -> None:
    for pod, line in _log_lines(view.plugin_pods):
        fields = _events(line, "mps_daemon_not_running")
        if fields is None and not _NVIDIA_MPS_DOWN.search(line):
            continue
        where = f" (no control pipe at {fields['pipes']})" if fields and "pipes" in fields else ""
        findings.add(
            "MPS-DAEMON-DOWN",
            cause=f"The device plugin shares GPUs with MPS, but no MPS control daemon runs on the node{where}: "
            "the MPS replicas are not advertised.",
            evidence=[f"device plugin pod {ref(pod.pod)}: {line}"],
        )


def _admission_rules(view: ClusterView, findings: Findings) -> None:
    for pod in view.other_pods:
        refused = [
            e
            for e in pod.events
            if e.get("reason") == "UnexpectedAdmissionError" and TOO_LARGE in str(e.get("message", ""))
        ]
        if not refused:
            continue
        asked = re.search(r"found (\d+)", str(refused[-1].get("message", "")))
        findings.add(
            "SHARING-REQUEST-TOO-LARGE",
            cause=f"Pod {namespace_of(pod.pod)}/{name_of(pod.pod)} asks for {asked.group(1) if asked else 'more than one'} "
            "shared GPU replicas in one container, and the device plugin's failRequestsGreaterThanOne refuses "
            "that: the pod failed admission and stays Failed.",
            evidence=[f"pod {ref(pod.pod)}: {event_text(e)}" for e in refused[-2:]]
            + [f"pod phase {dig(pod.pod, 'status', 'phase')}"],
        )
