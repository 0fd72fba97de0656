"""Reading the cluster for `gpunode doctor`: nodes, device plugin DaemonSets (whoever owns
them), their pods on the node with events and recent logs, RuntimeClasses, the GPU
Operator's ClusterPolicy, debug and workload pods. Only `kubectl get` and `kubectl logs`.

Independent reads run concurrently (each is one kubectl process, mostly waiting on the API
server). A read that fails after the cluster answered once becomes a gap in the evidence,
not a failure of the whole diagnosis.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from gpunode.bootstrap.cluster.kubectl import Kubectl, KubectlError
from gpunode.bootstrap.core.doctor.evidence import JSON, ClusterView, PodEvidence
from gpunode.bootstrap.core.kube.agent_manifests import AGENT_NAME
from gpunode.bootstrap.core.kube.view import (
    GPU_RESOURCE,
    container_states,
    containers_of,
    controlled_by,
    dig,
    events_about,
    gpu_node_labels,
    is_gpu_device_plugin,
    name_of,
    namespace_of,
    pod_gpu_limit,
    pod_spec_of,
    resource_value,
)
from gpunode.bootstrap.errors import GpunodeError

LOG_LINES = 200


@dataclass
class ClusterSnapshot:
    """What is read once for the whole cluster."""

    nodes: dict[str, JSON]
    daemonsets: list[JSON]
    runtime_classes: list[JSON]
    cluster_policies: list[JSON] | None
    gaps: list[str] = field(default_factory=list)
    # The ConfigMaps of device plugin configs the DaemonSets mount (per-node config).
    config_maps: list[JSON] = field(default_factory=list)
    # gpunode's agent DaemonSet with its ClusterRole and Role, when it is deployed.
    agent: tuple[JSON, JSON | None, JSON | None] | None = None


def mounted_config_maps(daemonsets: Sequence[JSON]) -> list[tuple[str, str]]:
    """(namespace, name) of every ConfigMap a device plugin DaemonSet mounts."""
    found = []
    for daemonset in daemonsets:
        namespace = str(dig(daemonset, "metadata", "namespace") or "default")
        for volume in dig(daemonset, "spec", "template", "spec", "volumes") or []:
            name = dig(volume, "configMap", "name")
            if isinstance(name, str) and (namespace, name) not in found:
                found.append((namespace, name))
    return found


def gpu_nodes(nodes: Sequence[JSON]) -> list[str]:
    """Nodes that carry a GPU label or advertise (or once advertised) nvidia.com/gpu."""
    found = []
    for node in nodes:
        if (
            gpu_node_labels(node)
            or resource_value(node, "capacity") is not None
            or resource_value(node, "allocatable") is not None
        ):
            found.append(name_of(node))
    return sorted(found)


class ClusterReader:
    def __init__(self, kubectl: Kubectl, *, log_lines: int = LOG_LINES, workers: int = 8) -> None:
        self.kubectl = kubectl
        self.log_lines = log_lines
        self.workers = workers

    def _pods_evidence(self, pods: Sequence[JSON]) -> list[PodEvidence]:
        if len(pods) <= 1:
            return [self.pod_evidence(pod) for pod in pods]
        with ThreadPoolExecutor(max_workers=min(self.workers, len(pods))) as pool:
            return list(pool.map(self.pod_evidence, pods))

    # -- once per cluster -----------------------------------------------------------------

    def snapshot(self) -> ClusterSnapshot:
        """Raises ClusterUnreachable / ClusterAuthError / UserError when the cluster cannot be
        read at all; everything after the first answer degrades to gaps."""
        nodes = self.kubectl.list("nodes")  # the first call: unreachable/unauthorized raise here
        return self._snapshot({name_of(n): n for n in nodes})

    def node_snapshot(self, node_name: str, node: JSON | None = None) -> ClusterSnapshot:
        """What one node's view needs, without listing every node: the agent on each of a
        thousand nodes reads its own Node, not the whole fleet's (`node`: as just read)."""
        if node is None:
            node = self.kubectl.get("node", node_name)  # unreachable/unauthorized raise here
        return self._snapshot({node_name: node} if node is not None else {})

    def _snapshot(self, nodes: dict[str, JSON]) -> ClusterSnapshot:
        with ThreadPoolExecutor(max_workers=3) as pool:
            daemonsets_job = pool.submit(self._optional_list, "daemonsets", all_namespaces=True)
            classes_job = pool.submit(self._optional_list, "runtimeclasses.node.k8s.io")
            policies_job = pool.submit(self._cluster_policies)
            daemonsets, runtime_classes = daemonsets_job.result(), classes_job.result()
            policies = policies_job.result()
        gaps: list[str] = []
        for what, value in (("DaemonSets", daemonsets), ("RuntimeClasses", runtime_classes)):
            if isinstance(value, str):
                gaps.append(f"{what} could not be listed: {value}")
        policy_list: list[JSON] | None
        if isinstance(policies, str):
            gaps.append(f"ClusterPolicies could not be listed: {policies}")
            policy_list = None
        else:
            policy_list = policies
        plugin_daemonsets = [d for d in (daemonsets if isinstance(daemonsets, list) else []) if is_gpu_device_plugin(d)]
        return ClusterSnapshot(
            nodes=nodes,
            daemonsets=plugin_daemonsets,
            runtime_classes=runtime_classes if isinstance(runtime_classes, list) else [],
            cluster_policies=policy_list,
            gaps=gaps,
            config_maps=self._config_maps(plugin_daemonsets, gaps),
            agent=self._agent(daemonsets if isinstance(daemonsets, list) else [], gaps),
        )

    def _agent(self, daemonsets: Sequence[JSON], gaps: list[str]) -> tuple[JSON, JSON | None, JSON | None] | None:
        """The agent's DaemonSet (`gpunode render agent`) and the roles it is bound to by name,
        for doctor to compare with what the agent does."""
        found = [d for d in daemonsets if dig(d, "metadata", "labels", "app.kubernetes.io/name") == AGENT_NAME]
        if not found:
            return None
        daemonset = found[0]
        try:
            cluster_role = self.kubectl.get("clusterrole.rbac.authorization.k8s.io", AGENT_NAME)
            role = self.kubectl.get("role.rbac.authorization.k8s.io", AGENT_NAME, namespace=namespace_of(daemonset))
        except GpunodeError as exc:
            gaps.append(f"the agent's ClusterRole/Role could not be read: {exc}")
            return None
        return daemonset, cluster_role, role

    def _config_maps(self, daemonsets: Sequence[JSON], gaps: list[str]) -> list[JSON]:
        found = []
        for namespace, name in mounted_config_maps(daemonsets):
            try:
                config_map = self.kubectl.get("configmap", name, namespace=namespace)
            except GpunodeError as exc:
                gaps.append(f"ConfigMap {namespace}/{name} could not be read: {exc.problem}")
                continue
            if config_map is not None:
                found.append(config_map)
        return found

    def _optional_list(self, kind: str, **kwargs: Any) -> list[JSON] | str:
        try:
            return self.kubectl.list(kind, **kwargs)
        except GpunodeError as exc:
            return exc.problem

    def _cluster_policies(self) -> list[JSON] | None | str:
        result = self.kubectl.run("get", "clusterpolicies.nvidia.com", "-o", "json", check=False)
        if not result.ok:
            if "doesn't have a resource type" in result.stderr or "(NotFound)" in result.stderr:
                return None  # the GPU Operator's CRD is not installed
            error = self.kubectl.error(result)
            return error.problem if isinstance(error, GpunodeError) else str(error)
        try:
            items = json.loads(result.stdout).get("items", [])
        except ValueError:
            return "kubectl printed no JSON for clusterpolicies"
        return [item for item in items if isinstance(item, dict)]

    # -- per node ---------------------------------------------------------------------------

    def node_view(self, snapshot: ClusterSnapshot, node_name: str) -> ClusterView:
        node = snapshot.nodes.get(node_name)
        if node is None:
            return self._view(snapshot, node_name, None, [], [], [])
        with ThreadPoolExecutor(max_workers=2) as pool:
            pods_job = pool.submit(
                self._optional_list, "pods", all_namespaces=True, field_selector=f"spec.nodeName={node_name}"
            )
            events_job = pool.submit(self._events, None, "Node", node_name)
            pods_or_error, node_events = pods_job.result(), events_about(events_job.result(), node)
        gaps = [f"pods on {node_name} could not be listed: {pods_or_error}"] if isinstance(pods_or_error, str) else []
        pods = pods_or_error if isinstance(pods_or_error, list) else []
        plugin_pods, others = self._split(snapshot, pods)
        evidence = self._pods_evidence(plugin_pods + others)
        return self._view(
            snapshot, node_name, node, node_events, evidence[: len(plugin_pods)], evidence[len(plugin_pods) :], gaps
        )

    def _split(self, snapshot: ClusterSnapshot, pods: Sequence[JSON]) -> tuple[list[JSON], list[JSON]]:
        plugin_pods = [p for p in pods if any(controlled_by(p, ds) for ds in snapshot.daemonsets)]
        others = [p for p in pods if p not in plugin_pods and _interesting(p)]
        return plugin_pods, others

    @staticmethod
    def _view(
        snapshot: ClusterSnapshot,
        node_name: str,
        node: JSON | None,
        node_events: Sequence[JSON],
        plugin_pods: Sequence[PodEvidence],
        others: Sequence[PodEvidence],
        gaps: Sequence[str] = (),
    ) -> ClusterView:
        return ClusterView(
            node_name=node_name,
            node=node,
            node_events=tuple(node_events),
            daemonsets=tuple(snapshot.daemonsets),
            plugin_pods=tuple(plugin_pods),
            runtime_classes=tuple(snapshot.runtime_classes),
            cluster_policies=None if snapshot.cluster_policies is None else tuple(snapshot.cluster_policies),
            other_pods=tuple(others),
            gaps=tuple(snapshot.gaps) + tuple(gaps),
            config_maps=tuple(snapshot.config_maps),
            agent=snapshot.agent,
        )

    def node_views(self, snapshot: ClusterSnapshot, node_names: Sequence[str]) -> dict[str, ClusterView]:
        """Several nodes' views. For a few nodes, node by node; for more, every pod and every
        node event are listed once and split by node (a kubectl run costs more than the
        bigger answer), then each pod's events and logs are read concurrently."""
        names = list(dict.fromkeys(node_names))
        if len(names) <= 2:
            return {name: self.node_view(snapshot, name) for name in names}
        with ThreadPoolExecutor(max_workers=2) as pool:
            pods_job = pool.submit(self._optional_list, "pods", all_namespaces=True)
            events_job = pool.submit(
                self._optional_list, "events", all_namespaces=True, field_selector="involvedObject.kind=Node"
            )
            pods_or_error, events_or_error = pods_job.result(), events_job.result()
        gaps = []
        if isinstance(pods_or_error, str):
            gaps.append(f"pods could not be listed: {pods_or_error}")
        all_pods = pods_or_error if isinstance(pods_or_error, list) else []
        node_events = events_or_error if isinstance(events_or_error, list) else []
        chosen: dict[str, tuple[list[JSON], list[JSON]]] = {}
        for name in names:
            on_node = [p for p in all_pods if dig(p, "spec", "nodeName") == name]
            chosen[name] = self._split(snapshot, on_node)
        wanted = [p for plugin, others in chosen.values() for p in plugin + others]
        evidence = dict(zip((id(p) for p in wanted), self._pods_evidence(wanted)))
        views = {}
        for name in names:
            plugin, others = chosen[name]
            views[name] = self._view(
                snapshot,
                name,
                snapshot.nodes.get(name),
                events_about(
                    [e for e in node_events if dig(e, "involvedObject", "name") == name], snapshot.nodes.get(name)
                ),
                [evidence[id(p)] for p in plugin],
                [evidence[id(p)] for p in others],
                gaps,
            )
        return views

    def _events(self, namespace: str | None, kind: str, name: str) -> list[JSON]:
        selector = f"involvedObject.kind={kind},involvedObject.name={name}"
        try:
            if namespace:
                return self.kubectl.list("events", namespace=namespace, field_selector=selector)
            return self.kubectl.list("events", all_namespaces=True, field_selector=selector)
        except GpunodeError:
            return []

    # -- pods -------------------------------------------------------------------------------

    def pod(self, namespace: str, name: str) -> JSON | None:
        return self.kubectl.get("pod", name, namespace=namespace)

    def pod_evidence(self, pod: JSON) -> PodEvidence:
        namespace, name = namespace_of(pod), name_of(pod)
        container = _main_container(pod)
        states = [s for s in container_states(pod) if not container or s.name == container]
        restarted = any(s.restarts > 0 or s.last_reason for s in states)
        with ThreadPoolExecutor(max_workers=3) as pool:
            events_job = pool.submit(self._events, namespace, "Pod", name)
            logs_job = pool.submit(self._logs, namespace, name, container, False)
            previous_job = pool.submit(self._logs, namespace, name, container, True) if restarted else None
            events = events_about(events_job.result(), pod)
            logs, problem = logs_job.result()
            previous, previous_problem = previous_job.result() if previous_job else (None, None)
        if restarted:
            if logs is None and previous is not None:
                problem = None  # the current container has not started yet; its last run speaks
            elif previous is None and logs is None:
                problem = problem or previous_problem
        return PodEvidence(pod, tuple(events), logs, previous, problem)

    def _logs(self, namespace: str, name: str, container: str | None, previous: bool) -> tuple[str | None, str | None]:
        args = ["logs", "-n", namespace, name, f"--tail={self.log_lines}"]
        if container:
            args += ["-c", container]
        if previous:
            args.append("--previous")
        try:
            result = self.kubectl.run(*args, check=False)
        except GpunodeError as exc:
            return None, exc.problem
        if result.ok:
            return result.stdout, None
        message = result.stderr.strip()
        if "waiting to start" in message or "ContainerCreating" in message or "not found" in message:
            return None, None  # nothing to read yet: not a gap
        try:
            raise self.kubectl.error(result)
        except KubectlError as exc:
            return None, f"`kubectl logs` for {namespace}/{name} failed: {exc.problem}"
        except GpunodeError as exc:
            return None, exc.problem


def _main_container(pod: JSON) -> str | None:
    containers = containers_of(pod_spec_of(pod))
    for container in containers:
        for mount in container.get("volumeMounts") or []:
            if str(mount.get("mountPath", "")).rstrip("/").endswith("device-plugins"):
                return str(container.get("name"))
    return str(containers[0].get("name")) if len(containers) > 1 else None


def _interesting(pod: JSON) -> bool:
    """Pods on the node doctor reads beyond the plugin: GPU workloads that are not fine, and
    `kubectl debug node` pods (whose NVML errors are F10's trap)."""
    if name_of(pod).startswith("node-debugger-"):
        return True
    if pod_gpu_limit(pod_spec_of(pod), GPU_RESOURCE) > 0:
        phase = dig(pod, "status", "phase")
        return phase in ("Pending", "Failed") or any(
            s.state != "running" or s.restarts > 0 for s in container_states(pod)
        )
    return False
