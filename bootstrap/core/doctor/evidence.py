"""The evidence `gpunode doctor` judges, as plain data: gathered by the node and cluster
layers, judged by gpunode.bootstrap.core.doctor.engine without any I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gpunode.bootstrap.core.host.facts import HostFacts
from gpunode.bootstrap.core.host.record import HostRecord

JSON = dict[str, Any]


@dataclass(frozen=True)
class PodEvidence:
    """A pod (`kubectl get pod -o json`), its events and its recent logs."""

    pod: JSON
    events: tuple[JSON, ...] = ()
    logs: str | None = None  # the current container's recent lines
    previous_logs: str | None = None  # the last terminated container's, after a restart
    logs_problem: str | None = None  # why the logs could not be read

    @property
    def all_logs(self) -> str:
        return "\n".join(text for text in (self.previous_logs, self.logs) if text)


@dataclass(frozen=True)
class ClusterView:
    """What the cluster says about one node and the GPU stack around it."""

    node_name: str
    node: JSON | None  # None: the cluster has no node of that name
    node_events: tuple[JSON, ...] = ()
    # Every NVIDIA device plugin DaemonSet in the cluster, whoever owns it.
    daemonsets: tuple[JSON, ...] = ()
    # Pods of those DaemonSets that run (or should run) on this node.
    plugin_pods: tuple[PodEvidence, ...] = ()
    runtime_classes: tuple[JSON, ...] = ()
    # The GPU Operator's ClusterPolicies; None when its CRD is not installed at all.
    cluster_policies: tuple[JSON, ...] | None = None
    # Other pods on the node that matter: GPU workloads and `kubectl debug node` pods.
    other_pods: tuple[PodEvidence, ...] = ()
    # Partial gaps (a log that could not be read ...), in plain words.
    gaps: tuple[str, ...] = ()
    # ConfigMaps of device plugin configs mounted by those DaemonSets (per-node config).
    config_maps: tuple[JSON, ...] = ()
    # gpunode's agent, when its DaemonSet exists: (DaemonSet, its ClusterRole, its Role),
    # the roles None when they are gone.
    agent: tuple[JSON, JSON | None, JSON | None] | None = None


@dataclass(frozen=True)
class Unavailable:
    """A source of evidence that could not be read, and why."""

    why: str
    asked: bool = True  # False: the user did not ask for it (no HOST, --no-cluster)


@dataclass(frozen=True)
class DoctorCase:
    """Everything known about one node, from its host and from the cluster."""

    subject: str  # how the user named it: a HOST argument, a node name, or a pod
    node_name: str | None = None
    host: HostFacts | None = None
    host_unavailable: Unavailable | None = None
    record: HostRecord | None = None  # what gpunode bootstrap recorded on the host
    cluster: ClusterView | None = None
    cluster_unavailable: Unavailable | None = None
    target_pod: PodEvidence | None = None  # --pod NS/NAME
    named_gpu_node: bool = False  # the user named this node, so it is meant to have GPUs
    runtime_name: str = "nvidia"  # the containerd runtime GPU pods use, when no RuntimeClass says
