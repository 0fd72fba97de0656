"""`gpunode verify`'s gathering: the nodes' Allocatable, waited for up to a deadline, then the
evidence that explains a node that is not OK, and the optional test workload.

The verdict rules themselves are pure (gpunode.bootstrap.core.verify.result); this module only
asks kubectl.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from gpunode.bootstrap.cluster.kubectl import Kubectl
from gpunode.bootstrap.cluster.pods import log_of, pod_state
from gpunode.bootstrap.cluster.rollout import INSTANCE_LABEL, placement_blockers
from gpunode.bootstrap.core.kube.cluster_plan import GPU_COUNT_ANNOTATION, RESOURCE
from gpunode.bootstrap.core.kube.manifests import DEFAULT_VERIFY_IMAGE, render_verify_pod
from gpunode.bootstrap.core.kube.plugin_config import CONFIG_LABEL, expected_allocatable
from gpunode.bootstrap.core.kube.taints import Toleration
from gpunode.bootstrap.core.kube.view import quantity
from gpunode.bootstrap.core.plugin_log import read_plugin_log
from gpunode.bootstrap.core.verify.result import (
    NodeObservation,
    NodeResult,
    PluginEvidence,
    WorkloadResult,
    explain,
    judge_workload,
    quick_result,
)
from gpunode.bootstrap.log import log_event


@dataclass(frozen=True)
class VerifyRequest:
    nodes: tuple[str, ...]
    expect: int | None = None
    # Per node, overriding `expect` (bootstrap knows each host's count itself).
    expects: Mapping[str, int] = field(default_factory=dict)
    # Per node, the resource to judge (a shared config may advertise nvidia.com/gpu.shared).
    resources: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 60.0
    poll: float = 1.0
    workload: bool = False
    workload_namespace: str = "default"
    workload_image: str = DEFAULT_VERIFY_IMAGE
    workload_timeout: float = 120.0
    tolerations: tuple[Toleration, ...] = ()
    runtime_class: str = "nvidia"

    def resource(self, node: str) -> str:
        return self.resources.get(node, RESOURCE)


@dataclass
class NodeCheck:
    verdict: NodeResult
    workload: WorkloadResult | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.verdict.ok and (self.workload is None or self.workload.ok)

    def as_dict(self) -> dict[str, Any]:
        data = self.verdict.as_dict()
        data["ok"] = self.ok
        data["seconds"] = round(self.seconds, 2)
        data["workload"] = self.workload.as_dict() if self.workload is not None else None
        return data

    def lines(self) -> list[str]:
        out = self.verdict.lines()
        if self.workload is not None:
            out.append(("workload OK: " if self.workload.ok else "workload FAILED: ") + self.workload.detail)
        return out


def read_nodes(kubectl: Kubectl, names: Sequence[str]) -> dict[str, dict[str, Any] | None]:
    """Each node's object, None for a node that does not exist; one kubectl call when all do."""
    if len(names) > 1:
        result = kubectl.run("get", "nodes", *names, "-o", "json", check=False)
        if result.ok:
            items = json.loads(result.stdout).get("items", [])
            found = {str((i.get("metadata") or {}).get("name")): i for i in items if isinstance(i, dict)}
            if all(n in found for n in names):
                return {n: found[n] for n in names}
        elif "(NotFound)" not in result.stderr:
            raise kubectl.error(result)
    return {name: kubectl.get("node", name) for name in names}


def shared_expectation(kubectl: Kubectl, name: str, node_obj: Mapping[str, Any]) -> tuple[str, int] | None:
    """For a node whose plugin DaemonSet mounts device plugin configs: the resource and count
    its config in force means (GPUs recorded by bootstrap x replicas, under the advertised
    name); None when the node has no such config or it cannot be read (doctor says why)."""
    observation = NodeObservation.from_node(name, node_obj)
    ref = observation.plugin_daemonset
    gpus = quantity(observation.annotations.get(GPU_COUNT_ANNOTATION))
    if not ref or "/" not in ref or gpus is None:
        return None
    namespace, daemonset_name = ref.split("/", 1)
    daemonset = kubectl.get("daemonset", daemonset_name, namespace=namespace)
    pod = ((daemonset or {}).get("spec") or {}).get("template", {}).get("spec") or {}
    maps = [v["configMap"]["name"] for v in pod.get("volumes") or [] if isinstance(v.get("configMap"), dict)]
    if not maps:
        return None
    defaults = [
        str(e.get("value"))
        for c in pod.get("containers") or []
        for e in c.get("env") or []
        if e.get("name") in ("GPUNODE_DEFAULT_CONFIG", "DEFAULT_CONFIG") and e.get("value")
    ]
    chosen = observation.labels.get(CONFIG_LABEL) or (defaults[0] if defaults else None)
    config_map = kubectl.get("configmap", maps[0], namespace=namespace)
    text = ((config_map or {}).get("data") or {}).get(chosen) if chosen else None
    if not isinstance(text, str):
        return None
    from gpunode.plugin.config import ConfigError
    from gpunode.plugin.nvidia_config import parse_config_text

    try:
        parsed = parse_config_text(text, f"config {chosen}")
    except ConfigError:
        return None
    expected = expected_allocatable(parsed, gpus)
    resource = next((n for n in expected if n != RESOURCE), RESOURCE)
    return resource, expected[resource]


def plugin_evidence(kubectl: Kubectl, node: NodeObservation, node_obj: Mapping[str, Any]) -> PluginEvidence:
    """What should serve the node's GPUs (as bootstrap recorded it), and what is there."""
    if node.host_plugin:
        return PluginEvidence("host")
    ref = node.plugin_daemonset
    if not ref or "/" not in ref:
        return PluginEvidence("unknown")
    namespace, name = ref.split("/", 1)
    daemonset = kubectl.get("daemonset", name, namespace=namespace)
    if daemonset is None:
        return PluginEvidence("daemonset", ref, daemonset_found=False)
    untolerated, mismatch = placement_blockers(daemonset, node_obj)
    pods = kubectl.list(
        "pods", namespace=namespace, selector=f"{INSTANCE_LABEL}={name}", field_selector=f"spec.nodeName={node.node}"
    )
    pods.sort(key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp") or ""))
    return PluginEvidence(
        "daemonset", ref, True, tuple(untolerated), tuple(mismatch), pod_state(kubectl, pods[-1]) if pods else None
    )


def verify_nodes(
    kubectl: Kubectl,
    request: VerifyRequest,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[NodeCheck]:
    """Wait up to `timeout` for every node to be OK, then explain each one that is not."""
    started = clock()
    deadline = started + request.timeout
    names = tuple(dict.fromkeys(request.nodes))
    objects = read_nodes(kubectl, names)
    # Shared GPUs: a node's config says which resource to judge and GPUs x replicas.
    expects, resources = dict(request.expects), dict(request.resources)
    for name in names:
        node_obj = objects[name]
        if name not in resources and node_obj is not None:
            shared = shared_expectation(kubectl, name, node_obj)
            if shared is not None:
                resources[name] = shared[0]
                if request.expect is None and name not in expects:
                    expects[name] = shared[1]
    request = replace(request, expects=expects, resources=resources)
    done: dict[str, tuple[NodeResult, float]] = {}
    while True:
        for name in names:
            if name in done:
                continue
            verdict = quick_result(
                NodeObservation.from_node(name, objects[name], request.resource(name)),
                request.expects.get(name, request.expect),
            )
            if verdict.ok or not verdict.checked:
                done[name] = (verdict, clock() - started)
        waiting = [n for n in names if n not in done]
        if not waiting or clock() >= deadline:
            break
        sleep(min(request.poll, max(0.0, deadline - clock())))
        objects.update(read_nodes(kubectl, waiting))
    checks: dict[str, NodeCheck] = {}
    for name in names:
        if name in done:
            verdict, seconds = done[name]
        else:
            observation = NodeObservation.from_node(name, objects[name], request.resource(name))
            verdict = quick_result(observation, request.expects.get(name, request.expect))
            node_obj = objects[name]
            if not verdict.ok and verdict.checked and node_obj is not None:
                verdict = explain(verdict, observation, plugin_evidence(kubectl, observation, node_obj))
            seconds = clock() - started
        checks[name] = NodeCheck(verdict, seconds=seconds)
        log_event(
            "verified", node=name, verdict=verdict.kind, allocatable=verdict.allocatable, expected=verdict.expected
        )
    if request.workload:
        for name in names:
            check = checks[name]
            if check.verdict.ok and (check.verdict.allocatable or 0) > 0:
                check.workload = run_workload(kubectl, name, request, objects[name] or {}, clock=clock, sleep=sleep)
            elif check.verdict.checked:
                check.workload = WorkloadResult(False, "", "not run: the node advertises no GPU to run it on")
    return [checks[name] for name in names]


def _advertised(kubectl: Kubectl, node: str, node_obj: Mapping[str, Any]) -> tuple[str, ...]:
    """The GPU UUIDs the node's bundled plugin logged as its devices (empty when unknown)."""
    observation = NodeObservation.from_node(node, node_obj)
    ref = observation.plugin_daemonset
    if not ref or "/" not in ref:
        return ()
    namespace, name = ref.split("/", 1)
    pods = kubectl.list(
        "pods", namespace=namespace, selector=f"{INSTANCE_LABEL}={name}", field_selector=f"spec.nodeName={node}"
    )
    uuids: list[str] = []
    for pod in pods:
        log = read_plugin_log(log_of(kubectl, namespace, str((pod.get("metadata") or {}).get("name"))))
        uuids += [d.uuid for d in log.devices if d.uuid]
    return tuple(uuids)


def run_workload(
    kubectl: Kubectl,
    node: str,
    request: VerifyRequest,
    node_obj: Mapping[str, Any],
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> WorkloadResult:
    """Run `nvidia-smi -L` in a one-GPU pod on the node; the pod is deleted afterwards."""
    name = f"gpunode-verify-{secrets.token_hex(4)}"
    namespace = request.workload_namespace
    ref = f"{namespace}/{name}"
    manifest = render_verify_pod(
        name=name,
        namespace=namespace,
        node=node,
        image=request.workload_image,
        runtime_class=request.runtime_class,
        tolerations=request.tolerations,
    )
    kubectl.run("create", "-f", "-", "-o", "name", stdin=manifest)
    log_event("workload_started", node=node, pod=ref)
    try:
        deadline = clock() + request.workload_timeout
        pod: dict[str, Any] | None = None
        while clock() < deadline:
            pod = kubectl.get("pod", name, namespace=namespace)
            phase = ((pod or {}).get("status") or {}).get("phase")
            if phase in ("Succeeded", "Failed"):
                break
            sleep(min(0.5, max(0.0, deadline - clock())))
        phase = ((pod or {}).get("status") or {}).get("phase")
        if pod is None or phase not in ("Succeeded", "Failed"):
            state = pod_state(kubectl, pod, with_log=False) if pod is not None else None
            return WorkloadResult(
                False,
                ref,
                f"the pod did not finish within {request.workload_timeout:g} s"
                + (f": {state.describe()}" if state else ""),
            )
        output = log_of(kubectl, namespace, name)
        if phase == "Failed":
            last = output.strip().splitlines()[-1] if output.strip() else "no output"
            hint = (
                " (nvidia-smi missing: does the pod run under the nvidia runtime? F6, F17)"
                if "not found" in output or "executable file not found" in output
                else ""
            )
            return WorkloadResult(False, ref, f"nvidia-smi -L failed in pod {ref}: {last}{hint}", output)
        return judge_workload(ref, output, _advertised(kubectl, node, node_obj))
    finally:
        kubectl.run("delete", "pod", name, "-n", namespace, "--ignore-not-found", "--wait=false", check=False)
        log_event("workload_deleted", node=node, pod=ref)
