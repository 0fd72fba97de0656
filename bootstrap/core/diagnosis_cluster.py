"""Doctor rules over what the cluster says (and, where it sharpens the verdict, the host):
RuntimeClass, the device plugin DaemonSet and its pod on the node, NVML in that pod, the
kubelet registration, Allocatable, and the workload pod. Pure."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from gpunode.bootstrap.core.containerd_effective import default_runtime_name
from gpunode.bootstrap.core.diagnosis import Findings
from gpunode.bootstrap.core.diagnosis_host import (
    describe_sockets,
    effective_config,
    gpu_count_hint,
    library_evidence,
    plugin_sockets,
    runtime_name_for,
)
from gpunode.bootstrap.core.doctor_evidence import JSON, ClusterView, DoctorCase, PodEvidence
from gpunode.bootstrap.core.kube_view import (
    GPU_RESOURCE,
    container_env,
    container_states,
    containers_of,
    controlled_by,
    dig,
    event_text,
    event_time,
    gpu_node_labels,
    host_path_mounts,
    is_privileged,
    is_up,
    labels_of,
    name_of,
    node_condition,
    owner_of,
    pod_gpu_limit,
    pod_spec_of,
    pod_summary,
    ref,
    resource_value,
    selector_problems,
    started_at,
    taint_text,
    untolerated_taints,
)
from gpunode.bootstrap.core.manifests import DRIVER_VERSION_LABEL, daemonset_name
from gpunode.bootstrap.core.nvml_library import LibraryProblem, choose_nvml_library, driver_version_of
from gpunode.bootstrap.core.plugin_log import InitFailure, PluginLog, read_plugin_log
from gpunode.bootstrap.errors import GpunodeError

# Directories whose replacement by the host's copy swaps the container's libc (F3).
SYSTEM_LIBRARY_DIRS = frozenset({
    "/lib", "/lib64", "/usr/lib", "/usr/lib64", "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib/powerpc64le-linux-gnu",
})
# Where the dynamic loader looks without LD_LIBRARY_PATH (ld.so's defaults on glibc images).
_DEFAULT_LOADER_DIRS = frozenset({"/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/lib/x86_64-linux-gnu",
                                  "/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu"})
_NO_RUNTIME = re.compile(r'no runtime for "?([\w.-]+)"? is configured')
_NO_RUNTIMECLASS = re.compile(r'RuntimeClass "?([\w.-]+)"? not found')
_EXEC_FAILED = re.compile(r"exec .*no such file or directory|GLIBC_PRIVATE|version `GLIBC_|"
                          r"symbol lookup error", re.IGNORECASE)
_NOT_FOUND_IN_POD = re.compile(r"nvidia-smi: not found|nvidia-smi: command not found|"
                               r'exec: "nvidia-smi": executable file not found|'
                               r"/dev/nvidia\d*: No such file|Failed to initialize NVML: .*not found",
                               re.IGNORECASE)
_NVML_UNKNOWN = re.compile(r"Failed to initialize NVML: Unknown Error|NVML: Unknown Error", re.IGNORECASE)
_MIG_ADMISSION = re.compile(r"Insufficient Permissions|GetPreferredAllocation|MIG", re.IGNORECASE)
_KUBELET_STARTING = re.compile(r"Starting kubelet", re.IGNORECASE)
_CDI_STRATEGIES = ("cdi", "cdi-annotations", "cdi-cri")


def cluster_rules(case: DoctorCase, findings: Findings) -> None:
    view = case.cluster
    if view is None:
        if case.cluster_unavailable is not None:
            findings.skip("cluster (node, device plugin, Allocatable, pods)", case.cluster_unavailable.why,
                          case.cluster_unavailable.asked)
        _host_only_registration(case, findings)
        if case.target_pod is not None:
            _workload_rules(case, None, None, findings)
        return
    for gap in view.gaps:
        findings.skip("part of the cluster evidence", gap)
    node = view.node
    if node is None:
        if case.node_name:
            findings.skip(f"node {case.node_name}", "the cluster has no node of that name (kubectl get nodes "
                          "lists them; the kubelet may register under another name, see --hostname-override)")
        if case.target_pod is not None:
            _workload_rules(case, view, None, findings)
        return
    _node_rules(node, findings)
    _runtimeclass_rules(case, view, findings)
    plugin = _deployment_rules(case, view, node, findings)
    _plugin_rules(case, view, node, plugin, findings)
    _registration_rules(case, view, node, plugin, findings)
    _allocatable_rules(case, view, node, plugin, findings)
    _workload_rules(case, view, node, findings)
    _debug_pod_rules(case, view, findings)


@dataclass
class PluginSituation:
    """What serves the node: the DaemonSets that reach it, their pods there, or a host service."""

    daemonsets: list[JSON] = field(default_factory=list)
    pods: list[PodEvidence] = field(default_factory=list)
    host_service: bool = False
    none: bool = False  # no plugin at all, and no deployment verdict said why
    logs: dict[str, PluginLog] = field(default_factory=dict)  # pod ref -> its log read


# --- the node -------------------------------------------------------------------------------


def _node_rules(node: JSON, findings: Findings) -> None:
    ready = node_condition(node, "Ready")
    if ready is not None and ready.get("status") != "True":
        findings.add("NODE-NOT-READY", f"Node {name_of(node)} is not Ready: its kubelet is not reporting, so "
                     "nothing it publishes (Allocatable included) is current.",
                     [f"condition Ready={ready.get('status')}: {ready.get('reason', '')} {ready.get('message', '')}".strip()],
                     "Look at the kubelet on the node (`systemctl status kubelet`, its log) and the container "
                     "runtime.", "critical", "registration")
    if dig(node, "spec", "unschedulable") is True:
        findings.add("NODE-CORDONED", f"Node {name_of(node)} is cordoned: new pods are not scheduled there "
                     "(DaemonSet pods still are).", ["spec.unschedulable: true"],
                     f"`kubectl uncordon {name_of(node)}` when it should take work again.", "info", "workload")


def is_gpu_node(case: DoctorCase, node: JSON) -> bool:
    return bool(case.named_gpu_node or gpu_node_labels(node) or (case.host is not None and case.host.gpus)
                or resource_value(node, "capacity") is not None or case.record is not None)


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
            if _NO_RUNTIMECLASS.search(str(event.get("message", ""))):
                references.append(f"pod {ref(evidence.pod)}: {event_text(event)}")
        if pod_spec_of(evidence.pod).get("runtimeClassName") == "nvidia" and not evidence.events:
            references.append(f"pod {ref(evidence.pod)} uses runtimeClassName: nvidia")
    handlers = ", ".join(f"{name_of(rc)} -> {rc.get('handler')}" for rc in view.runtime_classes) or "none"
    findings.add("RUNTIMECLASS-MISSING", "There is no RuntimeClass nvidia: GPU pods cannot ask for the NVIDIA "
                 "runtime (runtimeClassName: nvidia is refused).",
                 [f"RuntimeClasses: {handlers}", *references],
                 "Create it (apiVersion node.k8s.io/v1, kind RuntimeClass, name nvidia, handler nvidia); "
                 "`gpunode render` prints it and `gpunode bootstrap` applies it.",
                 "critical" if references else "warning", "runtimeclass")


# --- the device plugin deployment ---------------------------------------------------------------


def _deployment_rules(case: DoctorCase, view: ClusterView, node: JSON,
                      findings: Findings) -> PluginSituation:
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
        situation.pods = [p for p in view.plugin_pods
                          if any(controlled_by(p.pod, ds) for ds in situation.daemonsets)]
        return situation
    record_mode = case.record.plugin_mode if case.record is not None else None
    unit = case.host.plugin_venv.unit_active if case.host is not None else None
    # systemd says "inactive" (or "unknown") for a unit that is not installed at all.
    unit_installed = unit is not None and unit not in ("inactive", "unknown")
    if record_mode == "host" or unit_installed:
        situation.host_service = True
        if unit not in (None, "active"):
            findings.add("HOST-PLUGIN-DOWN", f"The device plugin runs as a service on the host (host mode), and "
                         f"gpunode-device-plugin.service is {unit}.", [f"systemctl is-active: {unit}"],
                         "`systemctl restart gpunode-device-plugin` and read `journalctl -u gpunode-device-plugin`.",
                         "critical", "deployment")
        return situation
    gpu = is_gpu_node(case, node)
    if blocked and gpu:
        for daemonset, taints in blocked:
            tolerations = pod_spec_of(daemonset).get("tolerations") or []
            status = daemonset.get("status") or {}
            findings.add(
                "F15", f"Node {node_name} is tainted {', '.join(taint_text(t) for t in taints)} and the device "
                f"plugin DaemonSet {ref(daemonset)} does not tolerate it, so no plugin pod runs there.",
                [f"node {node_name} taints: " + ", ".join(taint_text(t) for t in taints),
                 f"DaemonSet {ref(daemonset)} ({owner_of(daemonset)}) tolerations: "
                 + (", ".join(_toleration_text(t) for t in tolerations) or "none"),
                 f"DaemonSet {ref(daemonset)}: desired {status.get('desiredNumberScheduled', '?')}, "
                 f"ready {status.get('numberReady', '?')} (the node is not counted)"],
                "Add to the DaemonSet's pod template: tolerations: [{key: "
                f"{taints[0].get('key')}, operator: Exists}}] (gpunode's manifests carry it for nvidia.com/gpu).",
                "critical", "deployment")
        return situation
    if unselected and gpu:
        lines = [f"DaemonSet {ref(ds)} ({owner_of(ds)}): {'; '.join(problems)}" for ds, problems in unselected]
        labels = labels_of(node)
        version = labels.get(DRIVER_VERSION_LABEL) or (case.record.driver_version if case.record else None)
        fix = ("Label the node for the DaemonSet that matches its driver, or have gpunode do it: "
               "`gpunode bootstrap HOST` labels the node and creates the DaemonSet for its driver version.")
        if version:
            try:
                fix += f" The node's driver {version} is served by {daemonset_name(version, 'bundled')}."
            except GpunodeError:
                pass
        findings.add("DP-NOT-SELECTED", f"No device plugin DaemonSet selects node {node_name}, so no plugin pod "
                     "runs there.", lines, fix, "critical", "deployment")
        return situation
    if not gpu:
        return situation
    policies = [p for p in (view.cluster_policies or ()) if dig(p, "spec", "devicePlugin", "enabled") is not False]
    allocatable = resource_value(node, "allocatable")
    alloc_line = f"node {node_name}: allocatable nvidia.com/gpu " + (
        f"= {allocatable}" if allocatable is not None else "absent")
    nothing = "no DaemonSet in any namespace runs an NVIDIA device plugin (none mounts the kubelet's device-plugins directory)"
    if policies:
        policy = policies[0]
        state = dig(policy, "status", "state") or "unknown"
        findings.add(
            "F8", f"The GPU Operator's ClusterPolicy {name_of(policy)} says '{state}', but its device plugin "
            "DaemonSet is gone: nothing advertises the GPUs.",
            [f"ClusterPolicy {name_of(policy)}: status.state={state}, spec.devicePlugin.enabled="
             f"{dig(policy, 'spec', 'devicePlugin', 'enabled')}", nothing, alloc_line],
            "Do not trust the status field: make the operator reconcile (`kubectl -n "
            f"{dig(policy, 'status', 'namespace') or 'gpu-operator'} rollout restart deployment gpu-operator`, or "
            "re-apply its Helm release), then check `kubectl get ds -A | grep device-plugin` and the node's "
            "Allocatable; find what removed it (GitOps prune, helm upgrade).", "critical", "deployment")
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
            "F8", f"gpunode's device plugin DaemonSet for node {node_name}"
            + (f" ({expected})" if expected else "") + " is gone: nothing advertises the GPUs.",
            [f"node {node_name}: {DRIVER_VERSION_LABEL}={version}" if version else "gpunode's record: plugin mode daemonset",
             nothing, alloc_line],
            "Re-apply it: `gpunode bootstrap HOST` (or `gpunode render --lib-path <the node's library> | "
            "kubectl apply --server-side -f -`), and find what deleted it (GitOps prune, helm upgrade).",
            "critical", "deployment")
        return situation
    situation.none = True
    if allocatable == "0":
        return situation  # the plugin was here and left: the F9 verdict says so, with the evidence
    findings.add("DP-NONE", f"No NVIDIA device plugin serves node {node_name}: {nothing}.",
                 [nothing, alloc_line, *(f"node label {label}" for label in gpu_node_labels(node))],
                 "Deploy one: `gpunode bootstrap HOST` (gpunode's plugin, per driver version), NVIDIA's Helm "
                 "chart, or the GPU Operator.", "critical", "deployment")
    return situation


def _toleration_text(toleration: JSON) -> str:
    key = toleration.get("key") or "*"
    operator = toleration.get("operator") or "Equal"
    value = f"={toleration.get('value')}" if operator == "Equal" and toleration.get("value") else ""
    effect = f":{toleration['effect']}" if toleration.get("effect") else ""
    return f"{key}{value} {operator}{effect}"


# --- the plugin pod ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Cause:
    id: str
    cause: str
    fix: str
    link: str
    evidence: tuple[str, ...] = ()
    reboot_required: bool = False


def _plugin_container(spec: JSON) -> JSON:
    containers = containers_of(spec)
    for container in containers:
        if any(m.host_path.rstrip("/").endswith("device-plugins") for m in host_path_mounts(spec, container)):
            return container
    return containers[0] if containers else {}


def _plugin_rules(case: DoctorCase, view: ClusterView, node: JSON, situation: PluginSituation,
                  findings: Findings) -> None:
    if not situation.daemonsets:
        return
    node_name = name_of(node)
    if not situation.pods:
        lines = []
        for daemonset in situation.daemonsets:
            status = daemonset.get("status") or {}
            lines.append(f"DaemonSet {ref(daemonset)} ({owner_of(daemonset)}): desired "
                         f"{status.get('desiredNumberScheduled', '?')}, current {status.get('currentNumberScheduled', '?')}, "
                         f"ready {status.get('numberReady', '?')}")
        findings.add("DP-NO-POD", f"The device plugin DaemonSet selects node {node_name} but has no pod there.",
                     lines, f"`kubectl describe ds -n {dig(situation.daemonsets[0], 'metadata', 'namespace')} "
                     f"{name_of(situation.daemonsets[0])}` (its events say why), and check the node is Ready.",
                     "critical", "deployment")
        return
    for evidence in situation.pods:
        _one_plugin_pod(case, view, node, evidence, situation, findings)


def _one_plugin_pod(case: DoctorCase, view: ClusterView, node: JSON, evidence: PodEvidence,
                    situation: PluginSituation, findings: Findings) -> None:
    before = len(findings.verdicts)
    _judge_plugin_pod(case, view, node, evidence, situation, findings)
    pod = evidence.pod
    if len(findings.verdicts) == before and not is_up(pod) and dig(pod, "status", "phase") != "Succeeded":
        # Not running, and nothing above says why: say what the pod and its events say.
        pod_ref = ref(pod)
        waiting_init = [s for s in container_states(pod) if s.state != "running"
                        and s.name in {str(c.get("name")) for c in pod_spec_of(pod).get("initContainers") or []}]
        lines = [f"pod {pod_ref}: {pod_summary(pod)}", *(event_text(e) for e in evidence.events[-5:])]
        if waiting_init:
            lines.append("waiting in init container(s): " + ", ".join(s.name for s in waiting_init)
                         + " (the GPU Operator's validators wait there for the driver and the toolkit)")
        findings.add("DP-POD-NOT-RUNNING", f"The device plugin pod {pod_ref} is not running.", lines,
                     f"`kubectl describe pod -n {dig(pod, 'metadata', 'namespace')} {name_of(pod)}`; with the GPU "
                     "Operator, its validator pods' logs name the driver or toolkit step that is not ready "
                     "(`gpunode doctor HOST` judges those on the node).", "critical", "plugin")


def _judge_plugin_pod(case: DoctorCase, view: ClusterView, node: JSON, evidence: PodEvidence,
                      situation: PluginSituation, findings: Findings) -> None:
    pod = evidence.pod
    spec = pod_spec_of(pod)
    container = _plugin_container(spec)
    pod_ref = ref(pod)
    summary = f"pod {pod_ref}: {pod_summary(pod)}"
    log = read_plugin_log(evidence.all_logs)
    situation.logs[pod_ref] = log
    if evidence.logs_problem:
        findings.skip(f"log of {pod_ref}", evidence.logs_problem)
    messages = [event_text(e) for e in evidence.events if e.get("type") == "Warning"]
    messages += [f"container {s.name}: {s.reason}: {s.message}" for s in container_states(pod) if s.message]
    messages += [f"container {s.name} last exit {s.last_exit_code}: {s.last_message}"
                 for s in container_states(pod) if s.last_message]

    # The pod never got to run the plugin: mounts, image, runtime.
    for event in evidence.events:
        if event.get("reason") != "FailedMount":
            continue
        text = str(event.get("message", ""))
        for mount in host_path_mounts(spec, container):
            if f'volume "{mount.volume}"' not in text:
                continue
            if posixpath.basename(mount.host_path).startswith("libnvidia-ml"):
                failed = _library_mount_failed(case, pod_ref, mount.host_path, text, summary)
                findings.add(failed.id, failed.cause, failed.evidence, failed.fix, "critical", failed.link)
            else:
                findings.add("DP-MOUNT", f"The device plugin pod {pod_ref} cannot mount {mount.host_path}.",
                             [summary, event_text(event)],
                             "Make the hostPath exist on the node with the type the DaemonSet asks for, or fix "
                             "the DaemonSet's volume.", "critical", "plugin")
    for state in container_states(pod):
        if state.reason in ("ImagePullBackOff", "ErrImagePull", "InvalidImageName"):
            image = str(container.get("image", ""))
            findings.add("DP-IMAGE", f"The device plugin pod {pod_ref} cannot pull its image {image}.",
                         [summary, *messages[:3]], "Check the image name and tag, the registry's reachability "
                         "from the node, and imagePullSecrets.", "critical", "plugin")
    runtime_messages = " ".join(messages)
    missing_runtime = _NO_RUNTIME.search(runtime_messages)
    if missing_runtime:
        findings.add("F17", f'containerd on node {name_of(node)} has no runtime "{missing_runtime.group(1)}": '
                     f"the device plugin pod {pod_ref} (runtimeClassName {spec.get('runtimeClassName')}) cannot start.",
                     [summary, *(m for m in messages if _NO_RUNTIME.search(m))],
                     "Install the toolkit and add the runtime (`gpunode bootstrap HOST`), or make the RuntimeClass "
                     "handler name the runtime containerd has.", "critical", "containerd")
    missing_class = _NO_RUNTIMECLASS.search(runtime_messages)
    if missing_class:
        findings.add("RUNTIMECLASS-MISSING", f'RuntimeClass "{missing_class.group(1)}" does not exist: the '
                     f"device plugin pod {pod_ref} cannot be created.", [summary, *messages[:3]],
                     "Create RuntimeClass nvidia (handler nvidia): `gpunode render` prints it.",
                     "critical", "runtimeclass")

    # F3 can be read off the spec alone: a whole system library directory over the image's.
    for mount in host_path_mounts(spec, container):
        if mount.host_path.rstrip("/") in SYSTEM_LIBRARY_DIRS and mount.mount_path.rstrip("/") in SYSTEM_LIBRARY_DIRS:
            exec_lines = [m for m in messages if _EXEC_FAILED.search(m)]
            if log.init_failure and log.init_failure.reason == "library_unusable":
                exec_lines.append(f"log: {log.init_failure.line}")
            findings.add("F3", f"The device plugin pod {pod_ref} mounts the host's {mount.host_path} over the "
                         f"container's {mount.mount_path}: the host's libc replaces the image's.",
                         [summary, f"volume {mount.volume}: hostPath {mount.host_path} -> {mount.mount_path}",
                          *exec_lines],
                         "Never mount a system library directory: mount only the real libnvidia-ml.so.<version> "
                         "(hostPath type File) at /usr/local/lib/libnvidia-ml.so.1 with "
                         "LD_LIBRARY_PATH=/usr/local/lib (`gpunode render` does).", "critical", "plugin")

    failure = log.init_failure
    if failure is not None:
        cause = _init_failure_cause(case, pod_ref, spec, container, failure)
        hidden = is_up(pod)
        lines = [summary, f"log: {failure.line.strip()}", *cause.evidence]
        if hidden:
            env = container_env(container)
            flags = [f"{k}={v}" for k, v in env.items() if k in ("FAIL_ON_INIT_ERROR", "GPUNODE_FAIL_ON_INIT_ERROR")]
            hide = ("with " + ", ".join(flags)) if flags else "because it ignores init errors"
            if cause.link in ("driver", "toolkit", "containerd"):
                findings.add(cause.id, cause.cause, lines, cause.fix, "critical", cause.link, cause.reboot_required)
            findings.add(
                "F11", f"The device plugin pod {pod_ref} is Running but advertises nothing: NVML failed to start "
                f"({failure.reason}; {cause.id}: {cause.cause.rstrip('.')}) and the plugin keeps running {hide}.",
                [*lines, *(f"env {flag}" for flag in flags)],
                "Make init errors fatal (FAIL_ON_INIT_ERROR=true, GPUNODE_FAIL_ON_INIT_ERROR=true, Helm "
                "failOnInitError: true) so the failure shows as a crash, and fix the cause: " + cause.fix,
                "critical", "plugin")
        else:
            findings.add(cause.id, cause.cause, lines, cause.fix, "critical", cause.link, cause.reboot_required)
        return

    for state in container_states(pod):
        if state.reason == "CrashLoopBackOff" or (state.state == "terminated" and state.last_exit_code not in (None, 0)):
            tail = [f"log: {line}" for line in evidence.all_logs.splitlines()[-5:]]
            exec_lines = [m for m in messages if _EXEC_FAILED.search(m)]
            findings.add("DP-CRASH", f"The device plugin pod {pod_ref} keeps crashing, and its log names no NVML "
                         "failure gpunode knows.", [summary, *exec_lines, *messages[:3], *tail],
                         f"Read `kubectl logs -n {dig(pod, 'metadata', 'namespace')} {name_of(pod)} --previous`.",
                         "critical", "plugin")
            break
    if log.unhealthy:
        findings.add("GPU-UNHEALTHY", f"The device plugin {pod_ref} reports unhealthy GPUs: the kubelet does "
                     "not count them in Allocatable.", [summary, *(f"log: {l}" for l in log.unhealthy[-5:])],
                     "Read the Xid on the host (`dmesg | grep -i xid`): 79 (fallen off the bus) and 48/63/64/94/95 "
                     "(memory errors) need a reset or reboot; the plugin recovers the others by itself.",
                     "warning", "driver")
    if log.register_failures and not log.registered:
        findings.add("DP-REGISTER-FAILED", f"The device plugin {pod_ref} cannot register with the kubelet.",
                     [summary, *(f"log: {l}" for l in log.register_failures[-3:]), *_kubelet_dir_lines(case, spec, container)],
                     "Mount the kubelet's real device-plugins directory (its --root-dir + /device-plugins) into "
                     "the plugin, and check the kubelet runs.", "critical", "registration")


def _kubelet_dir_lines(case: DoctorCase, spec: JSON, container: JSON) -> list[str]:
    lines = []
    mounted = [m.host_path for m in host_path_mounts(spec, container) if m.host_path.rstrip("/").endswith("device-plugins")]
    if mounted:
        lines.append("the plugin mounts " + ", ".join(mounted))
    if case.host is not None:
        lines.append(f"the kubelet's device-plugins directory: {case.host.kubelet.root_dir}/device-plugins")
    return lines


def _library_mount_failed(case: DoctorCase, pod_ref: str, host_path: str, text: str, summary: str) -> _Cause:
    evidence = [summary, f"event: {text}"]
    if case.host is not None:
        try:
            library = choose_nvml_library(library_evidence(case.host))
        except LibraryProblem:
            library = None
        if library is not None and library.path != host_path:
            evidence.append(f"the host's library: {' -> '.join(library.chain)}")
            mounted = driver_version_of(host_path)
            if mounted and mounted != library.version:
                return _Cause("DP-LIB-STALE", f"The device plugin pod {pod_ref} mounts the library of driver "
                              f"{mounted}, but the node now has driver {library.version}: the mount fails.",
                              "Re-render the DaemonSet for the new driver: `gpunode bootstrap HOST` (labels the "
                              "node and applies the DaemonSet that mounts the new file).", "plugin", tuple(evidence))
    return _Cause("F2", f"The device plugin pod {pod_ref} cannot mount its NVML library {host_path}: it is not a "
                  "file on the node.",
                  "On the node, resolve the symlink chain (`readlink -f /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1`) "
                  "and mount that real file (hostPath type File) at /usr/local/lib/libnvidia-ml.so.1 with "
                  "LD_LIBRARY_PATH=/usr/local/lib; `gpunode bootstrap` renders it so.", "plugin", tuple(evidence))


def _init_failure_cause(case: DoctorCase, pod_ref: str, spec: JSON, container: JSON,
                        failure: InitFailure) -> _Cause:
    reason = failure.reason
    mounts = host_path_mounts(spec, container)
    library_mounts = [m for m in mounts if posixpath.basename(m.host_path).startswith("libnvidia-ml")]
    dev_mounted = any(m.host_path.rstrip("/") == "/dev" or m.host_path.startswith("/dev/nvidia") for m in mounts)
    runtime_class = spec.get("runtimeClassName")
    privileged = is_privileged(container)
    env = container_env(container)
    mount_fix = ("Mount the host's real libnvidia-ml.so.<version> (resolve the symlink chain on the host) as a "
                 "hostPath of type File at /usr/local/lib/libnvidia-ml.so.1 with LD_LIBRARY_PATH=/usr/local/lib, "
                 "or run the pod with runtimeClassName: nvidia; `gpunode render` writes either.")
    where = f"in the device plugin pod {pod_ref}"
    spec_line = (f"pod spec: runtimeClassName {runtime_class or 'none'}, library mounts "
                 + (", ".join(f"{m.host_path} -> {m.mount_path}" for m in library_mounts) or "none")
                 + f", privileged {str(privileged).lower()}, /dev mounted {str(dev_mounted).lower()}")
    if reason == "library_not_found":
        if library_mounts:
            mount = library_mounts[0]
            links = case.host.nvml.links if case.host is not None else {}
            ld_dirs = [d.rstrip("/") for d in env.get("LD_LIBRARY_PATH", "").split(":") if d]
            mount_dir = posixpath.dirname(mount.mount_path)
            if posixpath.basename(mount.host_path) == "libnvidia-ml.so.1" or mount.host_path in links:
                return _Cause("F2", f"The device plugin pod {pod_ref} mounts {mount.host_path}, a symlink on the "
                              "host: a hostPath of a symlink mounts nothing useful, so NVML is not found.",
                              mount_fix, "plugin", (spec_line,))
            if mount_dir not in ld_dirs and mount_dir not in _DEFAULT_LOADER_DIRS:
                return _Cause("F2", f"The device plugin pod {pod_ref} mounts the library at {mount.mount_path}, "
                              f"where the loader does not look (LD_LIBRARY_PATH={env.get('LD_LIBRARY_PATH', '')!r}).",
                              mount_fix, "plugin", (spec_line,))
            if posixpath.basename(mount.mount_path) != "libnvidia-ml.so.1":
                return _Cause("F2", f"The device plugin pod {pod_ref} mounts the library as {mount.mount_path}, "
                              "but NVML is opened as libnvidia-ml.so.1.", mount_fix, "plugin", (spec_line,))
            return _Cause("F2", f"The NVML library mounted into {pod_ref} ({mount.host_path}) cannot be loaded.",
                          mount_fix, "plugin", (spec_line,))
        if runtime_class:
            return _Cause("DP-RUNTIME-NO-INJECT", f"The device plugin pod {pod_ref} runs with runtimeClassName "
                          f"{runtime_class}, yet no libnvidia-ml was injected.",
                          "Check that the RuntimeClass handler's containerd runtime runs nvidia-container-runtime "
                          "(gpunode doctor HOST shows it) and that the pod sets NVIDIA_VISIBLE_DEVICES=all and "
                          "NVIDIA_DRIVER_CAPABILITIES=utility.", "plugin", (spec_line,))
        default = _default_runtime(case)
        if default is not None and default == runtime_name_for(case):
            return _Cause("F4", f"The device plugin pod {pod_ref} relies on containerd's default runtime "
                          f"'{default}' to give it NVML, and it did not: pods created through CRI get no "
                          "NVIDIA libraries from it.", mount_fix, "plugin",
                          (spec_line, f"host: containerd default_runtime_name = {default!r}"))
        return _Cause("F1", f"The device plugin pod {pod_ref} runs under plain runc with no NVIDIA libraries: "
                      "nothing mounts libnvidia-ml and it names no RuntimeClass, so NVML cannot be loaded.",
                      mount_fix, "plugin", (spec_line,)
                      + ((f"host: containerd default runtime {default!r}",) if default else ()))
    if reason == "library_unusable":
        text = failure.error + " " + failure.line
        if re.search(r"ELFCLASS32|wrong ELF class|i386", text):
            return _Cause("DP-LIB-ARCH", f"The library mounted into {pod_ref} is built for another architecture "
                          "(the 32-bit i386 copy?).", "Mount the copy of the node's architecture: `readlink -f` "
                          "of the x86_64 libnvidia-ml.so.1 (never the i386 one).", "plugin", (spec_line,))
        if re.search(r"GLIBC|no such file", text, re.IGNORECASE):
            return _Cause("F3", f"The device plugin pod {pod_ref} loads the host's system libraries over its own: "
                          "glibc symbols do not match.", "Never mount a system library directory: mount only the "
                          "real libnvidia-ml.so.<version> at /usr/local/lib/libnvidia-ml.so.1.", "plugin", (spec_line,))
        return _Cause("DP-LIB-UNUSABLE", f"The NVML library in {pod_ref} cannot be loaded: {failure.error}",
                      mount_fix, "plugin", (spec_line,))
    if reason == "library_too_old":
        return _Cause("DP-LIB-OLD", f"The NVML library in {pod_ref} is older than the plugin needs.",
                      "Mount the driver's current libnvidia-ml.so.<version>; after a driver upgrade re-run "
                      "`gpunode bootstrap` so the mount follows.", "plugin", (spec_line,))
    if reason == "driver_not_loaded":
        return _Cause("F13", f"NVML {where} says the NVIDIA driver is not loaded on the node: the driver does "
                      "not initialise (nouveau, Secure Boot, a failed module build).",
                      "Run `gpunode doctor HOST` on the node for the exact cause; load or fix the module "
                      "(`modprobe nvidia`, blacklist nouveau) and reboot if it says so.", "driver")
    if reason == "driver_library_mismatch":
        return _Cause("F14", f"NVML {where} fails with Driver/library version mismatch: the driver was upgraded "
                      "and the node not rebooted.", "Reboot the node so the module matches the library, then "
                      "run `gpunode bootstrap` so the plugin mounts the new library.", "driver",
                      reboot_required=True)
    if reason == "no_permission":
        if not runtime_class and not privileged:
            return _Cause("F5", f"The device plugin pod {pod_ref} sees /dev/nvidia* but its device cgroup "
                          "refuses them: NVML says Insufficient Permissions.",
                          "The mount approach needs `securityContext: privileged: true`; or use runtimeClassName "
                          "nvidia and let the NVIDIA runtime add the devices.", "plugin", (spec_line,))
        return _Cause("DP-PERMISSION", f"NVML {where} is refused the GPUs (Insufficient Permissions) although "
                      "the pod is privileged or uses the NVIDIA runtime.",
                      "Check /dev/nvidia* ownership and modes on the host and SELinux/AppArmor denials "
                      "(`ausearch -m avc`, `dmesg | grep -i denied`).", "plugin", (spec_line,))
    if reason == "nvml_unknown_error":
        if not runtime_class and not dev_mounted and not privileged:
            return _Cause("DP-NO-DEVICES", f"The device plugin pod {pod_ref} has the library but no GPU device "
                          "nodes: NVML answers Unknown Error.", "Mount /dev with `privileged: true`, or use "
                          "runtimeClassName nvidia so the runtime adds /dev/nvidia*.", "plugin", (spec_line,))
        if dev_mounted and not privileged and not runtime_class:
            return _Cause("F5", f"The device plugin pod {pod_ref} sees /dev/nvidia* through a /dev mount but its "
                          "device cgroup denies them.", "Add `securityContext: privileged: true` (the mount "
                          "approach needs it), or use runtimeClassName nvidia.", "plugin", (spec_line,))
        return _Cause("DRIVER-ERROR", f"NVML {where} answers Unknown Error although the pod has the devices: "
                      "the driver is in a bad state on the node.", "Check the node itself: `gpunode doctor HOST`, "
                      "`dmesg | grep -i -e nvrm -e xid`; a reboot clears most of these.", "driver", (spec_line,))
    if reason in ("mig_no_permission", "mig_strategy_mismatch"):
        return _Cause("F7", f"The device plugin {pod_ref} cannot read the MIG configuration ({failure.error}).",
                      "Give it MIG monitoring: NVIDIA_MIG_MONITOR_DEVICES=all and capability SYS_ADMIN, and use "
                      "MIG strategy mixed where MIG and non-MIG GPUs are mixed (`gpunode render --mig-strategy "
                      "mixed`).", "plugin", (spec_line,))
    if reason == "no_devices":
        return _Cause("F13", f"NVML {where} starts but finds no GPU: the driver does not drive the node's GPUs "
                      "(a branch too new for the GPU, nouveau, a GPU off the bus).",
                      "Run `gpunode doctor HOST` on the node; `dmesg | grep -i nvrm` names the reason.", "driver",
                      (spec_line,))
    return _Cause("DP-NVML-ERROR", f"NVML {where} fails: {failure.error}",
                  "Run `gpunode doctor HOST` on the node and compare with the host's own NVML check.", "plugin",
                  (spec_line,))


def _default_runtime(case: DoctorCase) -> str | None:
    if case.host is None:
        return None
    text, _ = effective_config(case.host)
    if not text:
        return None
    try:
        return default_runtime_name(text)
    except GpunodeError:
        return None


# --- registration --------------------------------------------------------------------------------


def _kubelet_start(case: DoctorCase, view: ClusterView | None) -> tuple[datetime | None, str | None]:
    """When the kubelet last started, from the host (process age) or its node event."""
    if case.host is not None and case.host.diagnostics is not None:
        diag = case.host.diagnostics
        if diag.now is not None and diag.kubelet_age_seconds is not None:
            when = datetime.fromtimestamp(diag.now - diag.kubelet_age_seconds, tz=timezone.utc)
            return when, f"host: the kubelet process started {diag.kubelet_age_seconds} s ago ({when:%Y-%m-%dT%H:%M:%SZ})"
    latest: datetime | None = None
    for event in (view.node_events if view else ()):
        if event.get("reason") == "Starting" and _KUBELET_STARTING.search(str(event.get("message", ""))):
            stamp = event_time(event)
            if stamp is not None and (latest is None or stamp > latest):
                latest = stamp
    if latest is not None:
        return latest, f"node event Starting: 'Starting kubelet.' at {latest:%Y-%m-%dT%H:%M:%SZ}"
    return None, None


def _registration_rules(case: DoctorCase, view: ClusterView, node: JSON, situation: PluginSituation,
                        findings: Findings) -> None:
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
        lines = [f"pod {pod_ref}: {pod_summary(pod)}"
                 + (f", container started {began:%Y-%m-%dT%H:%M:%SZ}" if began else "")]
        if kubelet_line:
            lines.append(kubelet_line)
        if host is not None:
            lines.extend(describe_sockets(host) or ["device-plugins: no sockets"])
        lines.append(f"node {name_of(node)}: allocatable nvidia.com/gpu "
                     + (f"= {allocatable}" if allocatable is not None else "absent"))
        lines.extend(f"log: {line}" for line in log.registered[-2:])
        restarted_after = (began is not None and kubelet_began is not None
                           and kubelet_began - began > timedelta(seconds=0))
        no_socket = sockets is not None and not sockets
        lost = allocatable in (None, "0") or no_socket
        if restarted_after and lost and not log.kubelet_restart_seen:
            findings.add("F12", f"The kubelet restarted after the device plugin pod {pod_ref} started and wiped its "
                         "device-plugins directory; the plugin never noticed and never registered again.",
                         lines, f"Now: restart the plugin pod (`kubectl delete pod -n {dig(pod, 'metadata', 'namespace')} "
                         f"{name_of(pod)}`). For good: a plugin that watches kubelet.sock and re-registers (gpunode's "
                         "bundled plugin does within a second).", "critical", "registration")
        elif no_socket or (allocatable is None and not log.registered and not log.empty):
            findings.add("DP-NOT-REGISTERED", f"The device plugin pod {pod_ref} runs but is not registered with "
                         "the kubelet.", lines + _kubelet_dir_lines(case, pod_spec_of(pod), _plugin_container(pod_spec_of(pod))),
                         "Check that it mounts the kubelet's own device-plugins directory (the kubelet's --root-dir) "
                         "and read its log; restarting the pod makes it register again.", "critical", "registration")


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
        lines.append(f"host process {process.pid} ({process.comm}), state {process.state}, running "
                     f"{process.age_seconds if process.age_seconds is not None else '?'} s")
    if diag is not None and diag.kubelet_age_seconds is not None:
        lines.append(f"the kubelet process started {diag.kubelet_age_seconds} s ago")
    older = [p for p in processes if diag is not None and p.age_seconds is not None
             and diag.kubelet_age_seconds is not None and p.age_seconds > diag.kubelet_age_seconds]
    if older:
        findings.add("F12", "The kubelet restarted after the device plugin process started and wiped its "
                     "device-plugins directory; the plugin never registered again (no plugin socket).", lines,
                     "Restart the plugin now (its pod, or `systemctl restart gpunode-device-plugin`); for good, a "
                     "plugin that watches kubelet.sock (gpunode's bundled plugin re-registers within a second).",
                     "critical", "registration")
    else:
        findings.add("DP-NOT-REGISTERED", "No device plugin is registered with the kubelet on this host: only "
                     "kubelet.sock is in its device-plugins directory.", lines or ["device-plugins: kubelet.sock only"],
                     "Deploy or start a device plugin (gpunode bootstrap does), then check its log.",
                     "critical", "registration")


# --- Allocatable ---------------------------------------------------------------------------------


def _allocatable_rules(case: DoctorCase, view: ClusterView, node: JSON, situation: PluginSituation,
                       findings: Findings) -> None:
    if not is_gpu_node(case, node):
        return
    node_name = name_of(node)
    allocatable = resource_value(node, "allocatable")
    capacity = resource_value(node, "capacity")
    expected = gpu_count_hint(case)
    lines = [f"node {node_name}: capacity nvidia.com/gpu " + (capacity if capacity is not None else "absent")
             + ", allocatable " + (allocatable if allocatable is not None else "absent")]
    if expected is not None:
        lines.append(f"GPUs on the host: {expected}")
    explained = bool(findings.below("allocatable"))
    after = " (the cause is the lower link above)" if explained else ""
    if allocatable is None:
        findings.add("ALLOCATABLE-ABSENT", f"Node {node_name}'s Allocatable has no nvidia.com/gpu at all: no device "
                     f"plugin has registered since the kubelet started (absent, not 0){after}.", lines,
                     "Fix the link named first; `gpunode verify` or `kubectl get node "
                     f"{node_name} -o jsonpath='{{.status.allocatable}}'` shows it come back.", "critical", "allocatable")
    elif allocatable == "0":
        if situation.none:
            cause = (f"Node {node_name}'s Allocatable nvidia.com/gpu is 0 and the key is kept: the device plugin that "
                     "registered here is gone (no DaemonSet serves the node any more), and an absent()-based "
                     "alert never fires.")
            fix = ("Bring a device plugin back for the node (`gpunode bootstrap HOST`, or re-apply the Helm release "
                   "that was removed), and alert on == 0 for GPU nodes (`gpunode render alerts`).")
        else:
            cause = (f"Node {node_name}'s Allocatable nvidia.com/gpu is 0 and the key is kept: a device plugin "
                     f"registered here and is gone or reports no healthy GPU{after}; an absent()-based alert "
                     "never fires.")
            fix = ("Fix the link named first; verify and alert on == 0 for GPU nodes, and on absent separately "
                   "(`gpunode render alerts`).")
        if situation.none:
            lines.append("no device plugin DaemonSet in the cluster serves this node")
        findings.add("F9", cause, lines, fix, "critical", "allocatable")
    elif expected is not None and (quantity := _int(allocatable)) is not None and quantity < expected:
        findings.add("ALLOCATABLE-SHORT", f"Node {node_name} advertises {quantity} of its {expected} GPUs.", lines,
                     "The missing ones are unhealthy or unseen: see the plugin's device lines and the host's Xid "
                     "errors (`dmesg | grep -i xid`).", "warning", "allocatable")


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


# --- the workload pod ----------------------------------------------------------------------------


def _uses_cdi(view: ClusterView | None) -> bool:
    for daemonset in (view.daemonsets if view else ()):
        for container in containers_of(pod_spec_of(daemonset)):
            env = container_env(container)
            strategy = env.get("DEVICE_LIST_STRATEGY") or env.get("GPUNODE_DEVICE_LIST_STRATEGY") or ""
            if any(s in strategy for s in _CDI_STRATEGIES):
                return True
    return False


def _workload_rules(case: DoctorCase, view: ClusterView | None, node: JSON | None, findings: Findings) -> None:
    evidence = case.target_pod
    if evidence is None:
        return
    pod = evidence.pod
    spec = pod_spec_of(pod)
    pod_ref = ref(pod)
    summary = f"pod {pod_ref}: {pod_summary(pod)}" + (f" on {spec.get('nodeName')}" if spec.get("nodeName") else "")
    events = list(evidence.events)
    texts = [event_text(e) for e in events]
    status_reason = str(dig(pod, "status", "reason") or "")
    status_message = str(dig(pod, "status", "message") or "")
    limit = pod_gpu_limit(spec)
    logs = evidence.all_logs
    state_messages = [f"{s.reason}: {s.message}" for s in container_states(pod) if s.message]
    state_messages += [s.last_message for s in container_states(pod) if s.last_message]
    everything = "\n".join([*texts, status_message, *state_messages, logs])

    if limit == 0:
        runtime_class = spec.get("runtimeClassName")
        extra = (" With runtimeClassName nvidia and no limit it may see every GPU or none, outside the "
                 "scheduler's count." if runtime_class else "")
        findings.add("F16", f"Pod {pod_ref} asks for no nvidia.com/gpu limit: the scheduler places it anywhere and "
                     f"it gets no GPU.{extra}", [summary, "containers: " + ", ".join(
                         f"{c.get('name')} limits {dig(c, 'resources', 'limits') or {}}" for c in containers_of(spec))],
                     "Add `resources: limits: nvidia.com/gpu: 1` to the container that needs the GPU (and "
                     "runtimeClassName: nvidia).", "critical", "workload")

    for event in events:
        message = str(event.get("message", ""))
        if event.get("reason") == "FailedScheduling" and "untolerated taint" in message:
            tolerations = spec.get("tolerations") or []
            findings.add("F15", f"Pod {pod_ref} does not tolerate the GPU nodes' taint, so it is not scheduled.",
                         [summary, event_text(event), "pod tolerations: " + (
                             ", ".join(_toleration_text(t) for t in tolerations) or "none")],
                         "Add `tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]` to the "
                         "pod (the taint's key, if another).", "critical", "workload")
        elif event.get("reason") == "FailedScheduling" and f"Insufficient {GPU_RESOURCE}" in message:
            explained = bool(findings.below("workload"))
            findings.add("POD-UNSCHEDULABLE", f"Pod {pod_ref} is Pending: no node has a free nvidia.com/gpu"
                         + (" (the node problems above are why)." if explained else
                            "; every GPU node's GPUs are in use or none advertises any."),
                         [summary, event_text(event)],
                         "Fix the node links above; or free GPUs / add GPU nodes.", "critical", "workload")

    missing_runtime = _NO_RUNTIME.search(everything)
    if missing_runtime:
        findings.add("F17", f'containerd on {spec.get("nodeName") or "the node"} has no runtime '
                     f'"{missing_runtime.group(1)}": pod {pod_ref} (runtimeClassName {spec.get("runtimeClassName")}) '
                     "cannot start.", [summary, *(t for t in texts if _NO_RUNTIME.search(t))],
                     "Install the toolkit and add the runtime (`gpunode bootstrap HOST`), or make the RuntimeClass "
                     "handler name the runtime containerd has.", "critical", "containerd")
    missing_class = _NO_RUNTIMECLASS.search(everything)
    if missing_class:
        findings.add("RUNTIMECLASS-MISSING", f'RuntimeClass "{missing_class.group(1)}" does not exist: pod '
                     f"{pod_ref} cannot be created.", [summary, *texts[:3]],
                     "Create RuntimeClass nvidia (handler nvidia): `gpunode render` prints it.",
                     "critical", "runtimeclass")

    if status_reason == "UnexpectedAdmissionError":
        if _MIG_ADMISSION.search(status_message):
            findings.add("F7", f"Pod {pod_ref} was refused at admission: the device plugin could not answer for "
                         "its GPUs (MIG capabilities unreadable).", [summary, f"status: {status_reason}: {status_message}"],
                         "Give the plugin MIG monitoring: NVIDIA_MIG_MONITOR_DEVICES=all and capability SYS_ADMIN, "
                         "MIG strategy mixed where MIG and non-MIG GPUs are mixed.", "critical", "workload")
        else:
            findings.add("POD-ADMISSION", f"Pod {pod_ref} was refused at admission on its node.",
                         [summary, f"status: {status_reason}: {status_message}"],
                         "Read the message: it is the device plugin's Allocate error.", "critical", "workload")

    if limit > 0 and not spec.get("runtimeClassName") and not _uses_cdi(view):
        symptom = [line for line in everything.splitlines() if _NOT_FOUND_IN_POD.search(line)]
        exited_127 = any(s.last_exit_code == 127 for s in container_states(pod)) or any(
            dig(cs, "state", "terminated", "exitCode") == 127 for cs in dig(pod, "status", "containerStatuses") or [])
        default = _default_runtime(case)
        if default is not None and default == runtime_name_for(case) and (symptom or exited_127):
            findings.add("F4", f"Pod {pod_ref} relies on containerd's default runtime '{default}' for its GPU, and "
                         "got no NVIDIA libraries or devices.", [summary, *symptom[:3],
                                                                 f"host: default_runtime_name = {default!r}"],
                         "Set runtimeClassName: nvidia on GPU pods; do not trust the default runtime.",
                         "critical", "workload")
        elif symptom or exited_127:
            findings.add("F6", f"Pod {pod_ref} got a GPU from the device plugin but runs under plain runc: no "
                         "NVIDIA libraries or /dev/nvidia* in it.",
                         [summary, "pod spec: no runtimeClassName", *symptom[:3]]
                         + (["a container exited 127 (command not found)"] if exited_127 else []),
                         "Add `runtimeClassName: nvidia` to the pod (or use the plugin's CDI device list strategy).",
                         "critical", "workload")
        elif default is not None and default != runtime_name_for(case):
            findings.add("F6", f"Pod {pod_ref} asks for a GPU but names no RuntimeClass: under the default runtime "
                         f"'{default}' it gets no NVIDIA libraries or devices.", [summary, "pod spec: no runtimeClassName",
                                                                                   f"host: default_runtime_name = {default!r}"],
                         "Add `runtimeClassName: nvidia` to the pod.", "warning", "workload")
    _debug_pod_rule(case, evidence, findings)


def _debug_pod_rules(case: DoctorCase, view: ClusterView, findings: Findings) -> None:
    for evidence in view.other_pods:
        if case.target_pod is not None and ref(evidence.pod) == ref(case.target_pod.pod):
            continue
        _debug_pod_rule(case, evidence, findings)


def _debug_pod_rule(case: DoctorCase, evidence: PodEvidence, findings: Findings) -> None:
    """F10: NVML's Unknown Error seen from a pod that has no GPU device nodes."""
    pod = evidence.pod
    spec = pod_spec_of(pod)
    texts = [evidence.all_logs, *(s.message for s in container_states(pod)),
             *(s.last_message for s in container_states(pod))]
    lines = [line for text in texts for line in text.splitlines() if _NVML_UNKNOWN.search(line)]
    if not lines:
        return
    has_devices = pod_gpu_limit(spec) > 0 or spec.get("runtimeClassName") or any(
        is_privileged(c) and any(m.host_path.rstrip("/") == "/dev" for m in host_path_mounts(spec, c))
        for c in containers_of(spec))
    if has_devices:
        return
    debugger = name_of(pod).startswith("node-debugger-")
    what = "a `kubectl debug node` pod" if debugger else "a pod without a GPU"
    evidence_lines = [f"pod {ref(pod)} ({what}): no nvidia.com/gpu limit, no runtimeClassName, no /dev/nvidia*",
                      *(f"its output: {line.strip()}" for line in lines[:2])]
    if case.host is not None and case.host.diagnostics is not None and case.host.diagnostics.nvml is not None:
        check = case.host.diagnostics.nvml
        evidence_lines.append(f"the host's own NVML check: " + (
            f"ok, driver {check.driver}, {check.count} GPU(s)" if check.ok else f"failed: {check.init_error or check.load_error}"))
        judged = "the host's own check is above" if check.ok else "the host's own check failed: see the driver verdicts"
    else:
        evidence_lines.append("the driver was not judged from the host (no HOST given)")
        judged = "run `gpunode doctor HOST` to judge it"
    findings.add("F10", f"Pod {ref(pod)} ran nvidia-smi without GPU device nodes: its 'Failed to initialize NVML: "
                 f"Unknown Error' says nothing about the driver ({judged}).", evidence_lines,
                 "Judge the driver from the host (`gpunode doctor HOST`, or nvidia-smi over SSH) or from a pod with "
                 "runtimeClassName: nvidia and nvidia.com/gpu: 1; a debug pod gets no GPU device nodes.",
                 "info", "workload")
