"""Doctor rules over what the cluster says (and, where it sharpens the verdict, the host):
the node, RuntimeClass, the device plugin deployment that should reach the node, the
kubelet registration and Allocatable; the plugin pod itself is judged in diagnosis_plugin,
the workload pod in diagnosis_workload. Pure."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from gpunode.bootstrap.core.doctor.engine import Findings
from gpunode.bootstrap.core.doctor.evidence import JSON, ClusterView, DoctorCase
from gpunode.bootstrap.core.doctor.rules_plugin import (
    NO_RUNTIMECLASS,
    PluginSituation,
    kubelet_dir_lines,
    plugin_container,
    plugin_rules,
)
from gpunode.bootstrap.core.doctor.rules_runtime import describe_sockets, gpu_count_hint, plugin_sockets
from gpunode.bootstrap.core.doctor.rules_sharing import sharing_rules
from gpunode.bootstrap.core.doctor.rules_telemetry import telemetry_rules
from gpunode.bootstrap.core.doctor.rules_workload import debug_pod_rules, workload_rules
from gpunode.bootstrap.core.kube.agent_manifests import agent_mode_of, missing_grants
from gpunode.bootstrap.core.kube.plugin_deployment import DRIVER_VERSION_LABEL, daemonset_name
from gpunode.bootstrap.core.kube.view import (
    controlled_by,
    dig,
    event_text,
    event_time,
    gpu_node_labels,
    is_up,
    labels_of,
    name_of,
    node_condition,
    owner_of,
    pod_spec_of,
    pod_summary,
    ref,
    resource_value,
    selector_problems,
    started_at,
    taint_text,
    toleration_text,
    untolerated_taints,
)
from gpunode.bootstrap.core.plugin_log import read_plugin_log
from gpunode.bootstrap.errors import GpunodeError

_KUBELET_STARTING = re.compile(r"Starting kubelet", re.IGNORECASE)


def cluster_rules(case: DoctorCase, findings: Findings) -> None:
    view = case.cluster
    if view is None:
        if case.cluster_unavailable is not None:
            findings.skip(
                "cluster (node, device plugin, Allocatable, pods)",
                case.cluster_unavailable.why,
                case.cluster_unavailable.asked,
            )
        _host_only_registration(case, findings)
        if case.target_pod is not None:
            workload_rules(case, None, None, findings)
        return
    for gap in view.gaps:
        findings.skip("part of the cluster evidence", gap)
    node = view.node
    if node is None:
        if case.node_name:
            findings.skip(
                f"node {case.node_name}",
                "the cluster has no node of that name (kubectl get nodes "
                "lists them; the kubelet may register under another name, see --hostname-override)",
            )
        if case.target_pod is not None:
            workload_rules(case, view, None, findings)
        return
    _node_rules(node, findings)
    _agent_rbac_rules(view, findings)
    _runtimeclass_rules(case, view, findings)
    plugin = _deployment_rules(case, view, node, findings)
    plugin_rules(case, view, node, plugin, findings)
    sharing_rules(view, node, findings)
    telemetry_rules(view, node, findings)
    _registration_rules(case, view, node, plugin, findings)
    _allocatable_rules(case, view, node, plugin, findings)
    workload_rules(case, view, node, findings)
    debug_pod_rules(case, view, findings)


# --- the node -------------------------------------------------------------------------------


def _agent_rbac_rules(view: ClusterView, findings: Findings) -> None:
    """gpunode's agent DaemonSet exists: does its ClusterRole/Role allow what it does?"""
    if view.agent is None:
        return
    agent_daemonset, cluster_role, role = view.agent
    mode = agent_mode_of(agent_daemonset)
    namespace = str((agent_daemonset.get("metadata") or {}).get("namespace", ""))
    missing = missing_grants(mode, namespace, cluster_role, role)
    if not missing:
        return
    roles = f"ClusterRole gpunode-agent {'found' if cluster_role else 'missing'}, Role {'found' if role else 'missing'}"
    findings.add(
        "AGENT-RBAC",
        cause=f"gpunode's agent ({namespace}/{name_of(agent_daemonset)}, --mode {mode}) may not do "
        f"{len(missing)} thing(s) it does: {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}.",
        evidence=[f"missing: {grant}" for grant in missing] + [roles],
        fix=f"`gpunode render agent --mode {mode} --namespace {namespace} | kubectl apply -f -`, "
        f"or grant {missing[0]} to ServiceAccount {namespace}/gpunode-agent.",
    )


def _node_rules(node: JSON, findings: Findings) -> None:
    ready = node_condition(node, "Ready")
    if ready is not None and ready.get("status") != "True":
        findings.add(
            "NODE-NOT-READY",
            cause=f"Node {name_of(node)} is not Ready: its kubelet is not reporting, so "
            "nothing it publishes (Allocatable included) is current.",
            evidence=[
                f"condition Ready={ready.get('status')}: {ready.get('reason', '')} {ready.get('message', '')}".strip()
            ],
        )
    agent = node_condition(node, "GPUNodeReady")
    if agent is not None:
        # The agent's own verdict, read back: a note beside doctor's, never a finding in
        # itself (the evidence above is judged afresh; the condition may be old).
        findings.add(
            "AGENT-CONDITION",
            cause=f"gpunode's agent on {name_of(node)} says GPUNodeReady={agent.get('status')} "
            f"({agent.get('reason', '')}), last heartbeat {agent.get('lastHeartbeatTime', 'never')}.",
            evidence=[f"since {agent.get('lastTransitionTime', '?')}: {agent.get('message', '')}"],
        )
    if dig(node, "spec", "unschedulable") is True:
        findings.add(
            "NODE-CORDONED",
            cause=f"Node {name_of(node)} is cordoned: new pods are not scheduled there (DaemonSet pods still are).",
            evidence=["spec.unschedulable: true"],
            fix=f"`kubectl uncordon {name_of(node)}` when it should take work again.",
        )


def is_gpu_node(case: DoctorCase, node: JSON) -> bool:
    return bool(
        case.named_gpu_node
        or gpu_node_labels(node)
        or (case.host is not None and case.host.gpus)
        or resource_value(node, "capacity") is not None
        or case.record is not None
    )


# --- RuntimeClass ---------------------------------------------------------------------------


def _runtimeclass_rules(case: DoctorCase, view: ClusterView, findings: Findings) -> None:
    named = [rc for rc in view.runtime_classes if name_of(rc) == "nvidia"]
    if named:
        return
    references = []
    for daemonset in view.daemonsets:
        if pod_spec_of(daemonset).get("runtimeClassName") == "nvidia":
            references.append(f"DaemonSet {ref(daemonset)} uses runtimeClassName: nvidia")
    pods = [p for p in (case.target_pod, *view.other_pods, *view.plugin_pods) if p is not None]
    for evidence in pods:
        for event in evidence.events:
            if NO_RUNTIMECLASS.search(str(event.get("message", ""))):
                references.append(f"pod {ref(evidence.pod)}: {event_text(event)}")
        if pod_spec_of(evidence.pod).get("runtimeClassName") == "nvidia" and not evidence.events:
            references.append(f"pod {ref(evidence.pod)} uses runtimeClassName: nvidia")
    handlers = ", ".join(f"{name_of(rc)} -> {rc.get('handler')}" for rc in view.runtime_classes) or "none"
    findings.add(
        "RUNTIMECLASS-MISSING",
        cause="There is no RuntimeClass nvidia: GPU pods cannot ask for the NVIDIA "
        "runtime (runtimeClassName: nvidia is refused).",
        evidence=[f"RuntimeClasses: {handlers}", *references],
        fix="Create it (apiVersion node.k8s.io/v1, kind RuntimeClass, name nvidia, handler nvidia); "
        "`gpunode render` prints it and `gpunode bootstrap` applies it.",
        severity="critical" if references else "warning",
    )


# --- the device plugin deployment ---------------------------------------------------------------


def _deployment_rules(case: DoctorCase, view: ClusterView, node: JSON, findings: Findings) -> PluginSituation:
    situation = PluginSituation()
    node_name = name_of(node)
    blocked: list[tuple[JSON, list[JSON]]] = []
    unselected: list[tuple[JSON, list[str]]] = []
    for daemonset in view.daemonsets:
        spec = pod_spec_of(daemonset)
        problems = selector_problems(spec, node)
        if problems:
            unselected.append((daemonset, problems))
            continue
        taints = untolerated_taints(node, spec.get("tolerations") or [])
        if taints:
            blocked.append((daemonset, taints))
            continue
        situation.daemonsets.append(daemonset)
    if situation.daemonsets:
        situation.pods = [p for p in view.plugin_pods if any(controlled_by(p.pod, ds) for ds in situation.daemonsets)]
        return situation
    record_mode = case.record.plugin_mode if case.record is not None else None
    unit = case.host.plugin_venv.unit_active if case.host is not None else None
    # systemd says "inactive" (or "unknown") for a unit that is not installed at all.
    unit_installed = unit is not None and unit not in ("inactive", "unknown")
    if record_mode == "host" or unit_installed:
        situation.host_service = True
        if unit not in (None, "active"):
            findings.add(
                "HOST-PLUGIN-DOWN",
                cause=f"The device plugin runs as a service on the host (host mode), and "
                f"gpunode-device-plugin.service is {unit}.",
                evidence=[f"systemctl is-active: {unit}"],
            )
        return situation
    gpu = is_gpu_node(case, node)
    if blocked and gpu:
        for daemonset, taints in blocked:
            tolerations = pod_spec_of(daemonset).get("tolerations") or []
            status = daemonset.get("status") or {}
            findings.add(
                "F15",
                cause=f"Node {node_name} is tainted {', '.join(taint_text(t) for t in taints)} and the device "
                f"plugin DaemonSet {ref(daemonset)} does not tolerate it, so no plugin pod runs there.",
                evidence=[
                    f"node {node_name} taints: " + ", ".join(taint_text(t) for t in taints),
                    f"DaemonSet {ref(daemonset)} ({owner_of(daemonset)}) tolerations: "
                    + (", ".join(toleration_text(t) for t in tolerations) or "none"),
                    f"DaemonSet {ref(daemonset)}: desired {status.get('desiredNumberScheduled', '?')}, "
                    f"ready {status.get('numberReady', '?')} (the node is not counted)",
                ],
                fix="Add to the DaemonSet's pod template: tolerations: [{key: "
                f"{taints[0].get('key')}, operator: Exists}}] (gpunode's manifests carry it for nvidia.com/gpu).",
            )
        return situation
    if unselected and gpu:
        lines = [f"DaemonSet {ref(ds)} ({owner_of(ds)}): {'; '.join(problems)}" for ds, problems in unselected]
        labels = labels_of(node)
        version = labels.get(DRIVER_VERSION_LABEL) or (case.record.driver_version if case.record else None)
        fix = (
            "Label the node for the DaemonSet that matches its driver, or have gpunode do it: "
            "`gpunode bootstrap HOST` labels the node and creates the DaemonSet for its driver version."
        )
        if version:
            try:
                fix += f" The node's driver {version} is served by {daemonset_name(version, 'bundled')}."
            except GpunodeError:
                pass
        findings.add(
            "DP-NOT-SELECTED",
            cause=f"No device plugin DaemonSet selects node {node_name}, so no plugin pod runs there.",
            evidence=lines,
            fix=fix,
        )
        return situation
    if not gpu:
        return situation
    policies = [p for p in (view.cluster_policies or ()) if dig(p, "spec", "devicePlugin", "enabled") is not False]
    allocatable = resource_value(node, "allocatable")
    alloc_line = f"node {node_name}: allocatable nvidia.com/gpu " + (
        f"= {allocatable}" if allocatable is not None else "absent"
    )
    nothing = "no DaemonSet in any namespace runs an NVIDIA device plugin (none mounts the kubelet's device-plugins directory)"
    if policies:
        policy = policies[0]
        state = dig(policy, "status", "state") or "unknown"
        findings.add(
            "F8",
            cause=f"The GPU Operator's ClusterPolicy {name_of(policy)} says '{state}', but its device plugin "
            "DaemonSet is gone: nothing advertises the GPUs.",
            evidence=[
                f"ClusterPolicy {name_of(policy)}: status.state={state}, spec.devicePlugin.enabled="
                f"{dig(policy, 'spec', 'devicePlugin', 'enabled')}",
                nothing,
                alloc_line,
            ],
            fix="Do not trust the status field: make the operator reconcile (`kubectl -n "
            f"{dig(policy, 'status', 'namespace') or 'gpu-operator'} rollout restart deployment gpu-operator`, or "
            "re-apply its Helm release), then check `kubectl get ds -A | grep device-plugin` and the node's "
            "Allocatable; find what removed it (GitOps prune, helm upgrade).",
        )
        return situation
    labels = labels_of(node)
    version = labels.get(DRIVER_VERSION_LABEL)
    if version or record_mode == "daemonset":
        version = version or (case.record.driver_version if case.record else None)
        expected = ""
        if version:
            try:
                expected = daemonset_name(version, "bundled")
            except GpunodeError:
                expected = ""
        findings.add(
            "F8",
            cause=f"gpunode's device plugin DaemonSet for node {node_name}"
            + (f" ({expected})" if expected else "")
            + " is gone: nothing advertises the GPUs.",
            evidence=[
                f"node {node_name}: {DRIVER_VERSION_LABEL}={version}"
                if version
                else "gpunode's record: plugin mode daemonset",
                nothing,
                alloc_line,
            ],
            fix="Re-apply it: `gpunode bootstrap HOST` (or `gpunode render --lib-path <the node's library> | "
            "kubectl apply --server-side -f -`), and find what deleted it (GitOps prune, helm upgrade).",
        )
        return situation
    situation.none = True
    if allocatable == "0":
        return situation  # the plugin was here and left: the F9 verdict says so, with the evidence
    findings.add(
        "DP-NONE",
        cause=f"No NVIDIA device plugin serves node {node_name}: {nothing}.",
        evidence=[nothing, alloc_line, *(f"node label {label}" for label in gpu_node_labels(node))],
    )
    return situation


# --- registration --------------------------------------------------------------------------------


def _kubelet_start(case: DoctorCase, view: ClusterView | None) -> tuple[datetime | None, str | None]:
    """When the kubelet last started, from the host (process age) or its node event."""
    if case.host is not None and case.host.diagnostics is not None:
        diag = case.host.diagnostics
        if diag.now is not None and diag.kubelet_age_seconds is not None:
            when = datetime.fromtimestamp(diag.now - diag.kubelet_age_seconds, tz=timezone.utc)
            return (
                when,
                f"host: the kubelet process started {diag.kubelet_age_seconds} s ago ({when:%Y-%m-%dT%H:%M:%SZ})",
            )
    latest: datetime | None = None
    for event in view.node_events if view else ():
        if event.get("reason") == "Starting" and _KUBELET_STARTING.search(str(event.get("message", ""))):
            stamp = event_time(event)
            if stamp is not None and (latest is None or stamp > latest):
                latest = stamp
    if latest is not None:
        return latest, f"node event Starting: 'Starting kubelet.' at {latest:%Y-%m-%dT%H:%M:%SZ}"
    return None, None


def _registration_rules(
    case: DoctorCase, view: ClusterView, node: JSON, situation: PluginSituation, findings: Findings
) -> None:
    if situation.host_service:
        _host_only_registration(case, findings)
        return
    allocatable = resource_value(node, "allocatable")
    host = case.host
    for evidence in situation.pods:
        pod = evidence.pod
        log = situation.logs.get(ref(pod)) or read_plugin_log(evidence.all_logs)
        if not is_up(pod) or log.init_failure is not None:
            continue
        pod_ref = ref(pod)
        began = started_at(pod)
        kubelet_began, kubelet_line = _kubelet_start(case, view)
        sockets = plugin_sockets(host) if host is not None and host.kubelet.running else None
        lines = [
            f"pod {pod_ref}: {pod_summary(pod)}" + (f", container started {began:%Y-%m-%dT%H:%M:%SZ}" if began else "")
        ]
        if kubelet_line:
            lines.append(kubelet_line)
        if host is not None:
            lines.extend(describe_sockets(host) or ["device-plugins: no sockets"])
        lines.append(
            f"node {name_of(node)}: allocatable nvidia.com/gpu "
            + (f"= {allocatable}" if allocatable is not None else "absent")
        )
        lines.extend(f"log: {line}" for line in log.registered[-2:])
        restarted_after = (
            began is not None and kubelet_began is not None and kubelet_began - began > timedelta(seconds=0)
        )
        no_socket = sockets is not None and not sockets
        lost = allocatable in (None, "0") or no_socket
        if restarted_after and lost and not log.kubelet_restart_seen:
            findings.add(
                "F12",
                cause=f"The kubelet restarted after the device plugin pod {pod_ref} started and wiped its "
                "device-plugins directory; the plugin never noticed and never registered again.",
                evidence=lines,
                fix=f"Now: restart the plugin pod (`kubectl delete pod -n {dig(pod, 'metadata', 'namespace')} "
                f"{name_of(pod)}`). For good: a plugin that watches kubelet.sock and re-registers (gpunode's "
                "bundled plugin does within a second).",
            )
        elif no_socket or (allocatable is None and not log.registered and not log.empty):
            findings.add(
                "DP-NOT-REGISTERED",
                cause=f"The device plugin pod {pod_ref} runs but is not registered with the kubelet.",
                evidence=lines + kubelet_dir_lines(case, pod_spec_of(pod), plugin_container(pod_spec_of(pod))),
                fix="Check that it mounts the kubelet's own device-plugins directory (the kubelet's --root-dir) "
                "and read its log; restarting the pod makes it register again.",
            )


def _host_only_registration(case: DoctorCase, findings: Findings) -> None:
    """Without a cluster (or in host plugin mode): is a plugin socket next to kubelet.sock?"""
    host = case.host
    if host is None or not host.kubelet.running or not host.gpus:
        return
    if f"{host.kubelet.root_dir}/device-plugins/kubelet.sock" not in host.kubelet.device_plugin_sockets:
        return  # KUBELET-SOCKET already says so
    if plugin_sockets(host):
        return
    diag = host.diagnostics
    lines = list(describe_sockets(host))
    processes = diag.plugin_processes if diag else ()
    for process in processes:
        lines.append(
            f"host process {process.pid} ({process.comm}), state {process.state}, running "
            f"{process.age_seconds if process.age_seconds is not None else '?'} s"
        )
    if diag is not None and diag.kubelet_age_seconds is not None:
        lines.append(f"the kubelet process started {diag.kubelet_age_seconds} s ago")
    older = [
        p
        for p in processes
        if diag is not None
        and p.age_seconds is not None
        and diag.kubelet_age_seconds is not None
        and p.age_seconds > diag.kubelet_age_seconds
    ]
    if older:
        findings.add(
            "F12",
            cause="The kubelet restarted after the device plugin process started and wiped its "
            "device-plugins directory; the plugin never registered again (no plugin socket).",
            evidence=lines,
            fix="Restart the plugin now (its pod, or `systemctl restart gpunode-device-plugin`); for good, a "
            "plugin that watches kubelet.sock (gpunode's bundled plugin re-registers within a second).",
        )
    else:
        findings.add(
            "DP-NOT-REGISTERED",
            cause="No device plugin is registered with the kubelet on this host: only "
            "kubelet.sock is in its device-plugins directory.",
            evidence=lines or ["device-plugins: kubelet.sock only"],
            fix="Deploy or start a device plugin (gpunode bootstrap does), then check its log.",
        )


# --- Allocatable ---------------------------------------------------------------------------------


def _allocatable_rules(
    case: DoctorCase, view: ClusterView, node: JSON, situation: PluginSituation, findings: Findings
) -> None:
    if not is_gpu_node(case, node):
        return
    node_name = name_of(node)
    allocatable = resource_value(node, "allocatable")
    capacity = resource_value(node, "capacity")
    expected = gpu_count_hint(case)
    lines = [
        f"node {node_name}: capacity nvidia.com/gpu "
        + (capacity if capacity is not None else "absent")
        + ", allocatable "
        + (allocatable if allocatable is not None else "absent")
    ]
    if expected is not None:
        lines.append(f"GPUs on the host: {expected}")
    explained = bool(findings.below("allocatable"))
    after = " (the cause is the lower link above)" if explained else ""
    if allocatable is None:
        findings.add(
            "ALLOCATABLE-ABSENT",
            cause=f"Node {node_name}'s Allocatable has no nvidia.com/gpu at all: no device "
            f"plugin has registered since the kubelet started (absent, not 0){after}.",
            evidence=lines,
            fix="Fix the link named first; `gpunode verify` or `kubectl get node "
            f"{node_name} -o jsonpath='{{.status.allocatable}}'` shows it come back.",
        )
    elif allocatable == "0":
        if situation.none:
            cause = (
                f"Node {node_name}'s Allocatable nvidia.com/gpu is 0 and the key is kept: the device plugin that "
                "registered here is gone (no DaemonSet serves the node any more), and an absent()-based "
                "alert never fires."
            )
            fix = (
                "Bring a device plugin back for the node (`gpunode bootstrap HOST`, or re-apply the Helm release "
                "that was removed), and alert on == 0 for GPU nodes (`gpunode render alerts`)."
            )
        else:
            cause = (
                f"Node {node_name}'s Allocatable nvidia.com/gpu is 0 and the key is kept: a device plugin "
                f"registered here and is gone or reports no healthy GPU{after}; an absent()-based alert "
                "never fires."
            )
            fix = (
                "Fix the link named first; verify and alert on == 0 for GPU nodes, and on absent separately "
                "(`gpunode render alerts`)."
            )
        if situation.none:
            lines.append("no device plugin DaemonSet in the cluster serves this node")
        findings.add(
            "F9",
            cause=cause,
            evidence=lines,
            fix=fix,
        )
    elif expected is not None and (quantity := _int(allocatable)) is not None and quantity < expected:
        findings.add(
            "ALLOCATABLE-SHORT",
            cause=f"Node {node_name} advertises {quantity} of its {expected} GPUs.",
            evidence=lines,
        )


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None
