"""`gpunode doctor`: gather the evidence (hosts over pyinfra, the cluster over kubectl), then
let the core judge it.

Each source is optional and may fail on its own: a host that cannot be reached, a cluster
that does not answer, a pod that does not exist. Whatever could not be read is said, and
the rest is still judged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gpunode.bootstrap.cluster.evidence import ClusterReader, ClusterSnapshot, gpu_nodes
from gpunode.bootstrap.cluster.kubectl import KubeAccess, Kubectl
from gpunode.bootstrap.core.doctor.engine import Diagnosis, Findings, diagnose, order
from gpunode.bootstrap.core.doctor.evidence import ClusterView, DoctorCase, PodEvidence, Unavailable
from gpunode.bootstrap.core.doctor.rules_runtime import K3S_CONTAINERD_CONFIG
from gpunode.bootstrap.core.host.facts import HostFacts
from gpunode.bootstrap.core.host.record import STATE_PATH, HostRecord, parse_record
from gpunode.bootstrap.core.kube.view import dig, pod_gpu_limit, pod_spec_of
from gpunode.bootstrap.errors import GpunodeError, UserError

NO_HOST = Unavailable(
    "no HOST given: the driver, NVML library, toolkit, containerd and the kubelet's "
    "sockets are judged only with `gpunode doctor HOST`",
    asked=False,
)


@dataclass
class DoctorRequest:
    inventory: Any | None = None  # a pyinfra Inventory of the HOSTs, or None
    nodes: Sequence[str] = ()
    pod: tuple[str, str] | None = None  # (namespace, name)
    kube: KubeAccess | None = None  # None: the cluster is not consulted (--no-cluster)
    containerd_config: str | None = None
    parallel: int = 10


@dataclass
class _Host:
    name: str
    facts: HostFacts | None = None
    problem: str | None = None
    record: HostRecord | None = None


@dataclass
class _Cluster:
    reader: ClusterReader | None = None
    snapshot: ClusterSnapshot | None = None
    problem: Unavailable | None = None
    views: dict[str, ClusterView] = field(default_factory=dict)

    def view(self, node: str | None) -> ClusterView | None:
        if node is None or self.reader is None or self.snapshot is None:
            return None
        if node not in self.views:
            self.views[node] = self.reader.node_view(self.snapshot, node)
        return self.views[node]


def parse_pod(text: str) -> tuple[str, str]:
    """`NS/NAME` or `NAME` (namespace default)."""
    namespace, _, name = text.rpartition("/")
    namespace = namespace or "default"
    if not name or "/" in namespace or any(c.isspace() for c in text):
        raise UserError(f"--pod {text!r} is not NAMESPACE/NAME.", fix="write it as e.g. default/cuda-test")
    return namespace, name


def read_hosts(request: DoctorRequest) -> list[_Host]:
    """Each HOST's snapshot with doctor's diagnostic sections (the agent reads its host so too)."""
    if request.inventory is None:
        return []
    from gpunode.bootstrap.core.settings import resolve_settings
    from gpunode.bootstrap.orchestration.session import Session

    session = Session(request.inventory, parallel=request.parallel)
    hosts = {host: _Host(host.name) for host in session.hosts}
    try:
        configs: dict[Any, str] = {}
        for host, entry in hosts.items():
            try:
                settings = resolve_settings(host.name, host.data.dict(), {})  # type: ignore[no-untyped-call]
                configs[host] = request.containerd_config or settings.containerd_config
            except UserError as exc:
                entry.problem = str(exc)
        for host, error in session.connect().items():
            if error is not None and hosts[host].problem is None:
                hosts[host].problem = f"could not connect over SSH: {error}"
        live = [host for host, entry in hosts.items() if entry.problem is None]
        results = session.snapshot(
            live,
            containerd_config=configs,
            managed_files=dict.fromkeys(live, (STATE_PATH, K3S_CONTAINERD_CONFIG)),
            diagnostics=True,
        )
        for host, value in results.items():
            if isinstance(value, Exception):
                hosts[host].problem = f"could not read the host: {value}"
            else:
                hosts[host].facts = value
                hosts[host].record = parse_record(value.managed_file(STATE_PATH))
    finally:
        session.disconnect()
    return list(hosts.values())


def _read_cluster(request: DoctorRequest) -> _Cluster:
    if request.kube is None:
        return _Cluster(problem=Unavailable("not consulted (--no-cluster)", asked=False))
    reader = ClusterReader(Kubectl(request.kube))
    try:
        snapshot = reader.snapshot()
    except GpunodeError as exc:
        # The error names the cluster access already ("could not reach the cluster with ...").
        said = exc.problem if request.kube.describe() in exc.problem else f"{request.kube.describe()}: {exc.problem}"
        return _Cluster(problem=Unavailable(said.rstrip(".") + "." + (f" Fix: {exc.fix}" if exc.fix else "")))
    return _Cluster(reader=reader, snapshot=snapshot)


def _node_for_host(host: _Host, cluster: _Cluster, override: str | None) -> str | None:
    if override:
        return override
    if host.facts is not None:
        return host.facts.node_name
    if host.record is not None:
        return host.record.node_name
    if cluster.snapshot is not None:
        # An unreachable host: its node may carry its name, or the first label of it.
        bare = host.name.rsplit("@", 1)[-1].split(":")[0].lower()
        for candidate in (bare, bare.split(".")[0]):
            if candidate in cluster.snapshot.nodes:
                return candidate
    return None


def _prefetch_views(request: DoctorRequest, hosts: Sequence[_Host], cluster: _Cluster, target_node: str | None) -> None:
    """Read every node's view at once (each is a few kubectl runs, mostly waiting)."""
    if cluster.reader is None or cluster.snapshot is None:
        return
    override = request.nodes[0] if len(hosts) == 1 and len(request.nodes) == 1 else None
    names = [n for n in (_node_for_host(h, cluster, override) for h in hosts) if n]
    names += [n for n in request.nodes if n != override]
    if target_node:
        names.append(target_node)
    if not hosts and not request.nodes and target_node is None:
        names += gpu_nodes(list(cluster.snapshot.nodes.values()))
    cluster.views.update(cluster.reader.node_views(cluster.snapshot, names))


def run_doctor(request: DoctorRequest) -> Diagnosis:
    hosts = read_hosts(request)
    cluster = _read_cluster(request)
    extra: list[Findings] = []
    target: PodEvidence | None = None
    target_node: str | None = None
    if request.pod is not None:
        if cluster.reader is None:
            findings = Findings(f"pod {request.pod[0]}/{request.pod[1]}")
            findings.skip(
                "the pod",
                cluster.problem.why if cluster.problem else "the cluster was not read",
                cluster.problem.asked if cluster.problem else True,
            )
            extra.append(findings)
        else:
            try:
                pod = cluster.reader.pod(*request.pod)
            except GpunodeError as exc:
                pod, problem = None, exc.problem
            else:
                problem = "the cluster has no such pod"
            if pod is None:
                findings = Findings(f"pod {request.pod[0]}/{request.pod[1]}")
                findings.skip("the pod", problem)
                extra.append(findings)
            else:
                target = cluster.reader.pod_evidence(pod)
                target_node = dig(pod, "spec", "nodeName") or None

    _prefetch_views(request, hosts, cluster, target_node)
    cases: list[DoctorCase] = []
    covered: set[str] = set()
    override = request.nodes[0] if len(hosts) == 1 and len(request.nodes) == 1 else None
    for host in hosts:
        node = _node_for_host(host, cluster, override)
        if node:
            covered.add(node)
        subject = host.name if not node or node == host.name else f"{host.name} (node {node})"
        unknown_node = Unavailable(
            "this host's node name is unknown (the host could not be read): give it with --node NAME"
        )
        cases.append(
            DoctorCase(
                subject=subject,
                node_name=node,
                host=host.facts,
                host_unavailable=Unavailable(host.problem) if host.problem else None,
                record=host.record,
                cluster=cluster.view(node),
                cluster_unavailable=(
                    cluster.problem if cluster.reader is None else unknown_node if node is None else None
                ),
                target_pod=target if target is not None and node == target_node else None,
                named_gpu_node=True,
            )
        )
    wanted = [n for n in request.nodes if n not in covered and n != override]
    if target_node and target_node not in covered and target_node not in wanted:
        wanted.append(target_node)
    if not hosts and not request.nodes and cluster.snapshot is not None and (target is None or target_node is None):
        # Nothing named (or a pod not yet on a node): every GPU node of the cluster.
        wanted += [n for n in gpu_nodes(list(cluster.snapshot.nodes.values())) if n not in wanted]
        if not wanted and target is None:
            findings = Findings("cluster")
            findings.add(
                "NO-GPU-NODE",
                cause="No node in the cluster carries a GPU label or advertises nvidia.com/gpu.",
                evidence=[f"nodes: {', '.join(sorted(cluster.snapshot.nodes)) or 'none'}"],
            )
            extra.append(findings)
    for node in wanted:
        covered.add(node)
        cases.append(
            DoctorCase(
                subject=f"node {node}",
                node_name=node,
                host_unavailable=NO_HOST,
                cluster=cluster.view(node),
                cluster_unavailable=cluster.problem if cluster.reader is None else None,
                target_pod=target if target is not None and node == target_node else None,
                # Named by the user, or the node of a pod that asks for a GPU: meant to have GPUs.
                # A pod that asks for none may land on a CPU node (F16), which is then no GPU node.
                named_gpu_node=node in request.nodes
                or (node == target_node and target is not None and pod_gpu_limit(pod_spec_of(target.pod)) > 0),
            )
        )
    if target is not None and target_node is None:
        cases.append(
            DoctorCase(
                subject=f"pod {request.pod[0]}/{request.pod[1]}" if request.pod else "pod",
                cluster=ClusterView(
                    node_name="",
                    node=None,
                    runtime_classes=tuple(cluster.snapshot.runtime_classes if cluster.snapshot else ()),
                    daemonsets=tuple(cluster.snapshot.daemonsets if cluster.snapshot else ()),
                ),
                target_pod=target,
            )
        )
    if not cases and not extra:
        if cluster.problem is not None and cluster.problem.asked:
            findings = Findings("cluster")
            findings.skip("the cluster", cluster.problem.why)
            extra.append(findings)
        else:
            raise UserError(
                "Nothing to check: no HOST, no --node, no --pod, and no cluster to list GPU nodes from.",
                fix="name a host (gpunode doctor gpu01.example), or give a kubeconfig",
            )
    diagnosis = diagnose(cases)
    verdicts = list(diagnosis.verdicts)
    skipped = list(diagnosis.not_checked)
    for findings in extra:
        verdicts.extend(order(findings.verdicts))
        skipped.extend(findings.not_checked)
    return Diagnosis(tuple(verdicts), tuple(skipped))


__all__ = ["DoctorRequest", "run_doctor", "parse_pod", "read_hosts"]
