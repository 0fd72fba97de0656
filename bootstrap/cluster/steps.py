"""The cluster steps of `gpunode bootstrap`, for every host whose node steps went well.

    runtimeclass   RuntimeClass `nvidia` (handler: the containerd runtime), applied
    node-label     gpunode.io/driver-version and gpunode.io/device-plugin on the node, and
                   what bootstrap found (GPU count and bus IDs, library) as annotations
    device-plugin  the node's DaemonSet applied (created when the first node of its driver
                   version and layout appears), rolled out on the node within a deadline;
                   gpunode's DaemonSets no node selects any more are deleted
    verify         Allocatable nvidia.com/gpu equals the GPUs found, within a deadline

The steps run once for all hosts (one apply per DaemonSet, one wait for all nodes), and
each host's report gets its own line per step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from gpunode.bootstrap.cluster.kubectl import Kubectl
from gpunode.bootstrap.cluster.objects import apply_object, delete_object, describe, patch_metadata
from gpunode.bootstrap.cluster.rollout import RolloutTarget, placement_blockers, wait_for_rollout
from gpunode.bootstrap.cluster.verify import VerifyRequest, read_nodes, verify_nodes
from gpunode.bootstrap.core.kube.cluster_plan import (
    ClusterSettings,
    NodePlan,
    NodeTarget,
    daemonset_node_selector,
    expected_gpus,
    is_managed_by_gpunode,
    metadata_patch,
    node_configs,
    plan_node,
    selector_matches,
    unused_daemonsets,
)
from gpunode.bootstrap.core.kube.manifests import (
    config_objects,
    labeller_objects,
    mps_daemon_objects,
    render_device_plugin,
    render_runtimeclass,
)
from gpunode.bootstrap.core.kube.plugin_deployment import DEVICE_PLUGIN_LABEL, DRIVER_VERSION_LABEL, PluginDeployment
from gpunode.bootstrap.core.report import StepResult, StepStatus
from gpunode.bootstrap.errors import GpunodeError

CLUSTER_STEPS = ("runtimeclass", "node-label", "device-plugin", "verify")


@dataclass
class _Host:
    target: NodeTarget
    plan: NodePlan | None = None
    node: dict[str, Any] | None = None
    previous_plugin: str | None = None
    previous_version: str | None = None
    steps: dict[str, StepResult] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return any(s.status == "failed" for s in self.steps.values())


class _Run:
    def __init__(self, targets: Sequence[NodeTarget], progress: Callable[[str], None] | None, dry_run: bool) -> None:
        self.hosts = [_Host(t) for t in targets]
        self.progress = progress
        self.dry_run = dry_run

    def record(self, host: _Host, step: str, status: StepStatus, detail: str) -> None:
        host.steps[step] = StepResult(step, status, detail)
        if self.progress is not None:
            shown = "would change" if status == "changed" and self.dry_run else status
            self.progress(f"[{host.target.host}] {step}: {shown}")

    def live(self) -> list[_Host]:
        return [h for h in self.hosts if not h.failed]

    def fail_rest(self, step: str, error: GpunodeError) -> None:
        """A cluster-wide failure (unreachable, refused): this step fails, later ones skip."""
        for host in self.live():
            self.record(host, step, "failed", str(error))
        later = CLUSTER_STEPS[CLUSTER_STEPS.index(step) + 1 :]
        for host in self.hosts:
            for name in later:
                if name not in host.steps:
                    self.record(host, name, "skipped", "an earlier cluster step failed")


def run_cluster_steps(
    kubectl: Kubectl,
    targets: Sequence[NodeTarget],
    settings: ClusterSettings,
    *,
    dry_run: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict[str, list[StepResult]]:
    """Run the cluster steps for these nodes; the steps of each host, by host name."""
    run = _Run(targets, progress, dry_run)
    step = "runtimeclass"
    try:
        settings = node_configs(settings, targets)
        _plan(run, settings)
        _runtimeclass(run, kubectl, settings)
        step = "node-label"
        _read_nodes(run, kubectl)
        _label_nodes(run, kubectl)
        step = "device-plugin"
        _device_plugins(run, kubectl, settings)
        step = "verify"
        _verify(run, kubectl, settings)
    except GpunodeError as exc:
        run.fail_rest(step, exc)
    for host in run.hosts:
        for name in CLUSTER_STEPS:
            if name not in host.steps:
                run.record(host, name, "skipped", "an earlier cluster step failed on this node")
    return {h.target.host: [h.steps[name] for name in CLUSTER_STEPS if name in h.steps] for h in run.hosts}


def verify_only(
    kubectl: Kubectl,
    targets: Sequence[NodeTarget],
    settings: ClusterSettings,
    progress: Callable[[str], None] | None = None,
) -> dict[str, StepResult]:
    """The verify step alone, for nodes whose other cluster steps a dry run has just shown
    unchanged (a rollout's no-change hosts): the proof, without planning them twice."""
    run = _Run(targets, progress, False)
    try:
        _verify(run, kubectl, node_configs(settings, targets))
    except GpunodeError as exc:
        run.fail_rest("verify", exc)
    return {h.target.host: h.steps["verify"] for h in run.hosts if "verify" in h.steps}


def _plan(run: _Run, settings: ClusterSettings) -> None:
    for host in run.hosts:
        try:
            host.plan = plan_node(host.target, settings)
        except GpunodeError as exc:
            # E.g. a library path no DaemonSet may mount: this node's plugin cannot be planned.
            for name in CLUSTER_STEPS:
                if name == "device-plugin":
                    run.record(host, name, "failed", str(exc))
                else:
                    run.record(host, name, "skipped", "this node's device plugin could not be planned")


# --------------------------------------------------------------------------------------
# runtimeclass


def _runtimeclass(run: _Run, kubectl: Kubectl, settings: ClusterSettings) -> None:
    hosts = run.live()
    if not hosts:
        return
    desired = yaml.safe_load(render_runtimeclass(settings.runtime_handler))
    current = kubectl.get("runtimeclass", desired["metadata"]["name"])
    name = desired["metadata"]["name"]
    status: StepStatus
    if current is not None and not is_managed_by_gpunode(current):
        if current.get("handler") == settings.runtime_handler:
            status, detail = (
                "unchanged",
                (
                    f"RuntimeClass {name} (handler {settings.runtime_handler}) exists "
                    "and is not gpunode's: left as it is"
                ),
            )
        else:
            status, detail = (
                "failed",
                (
                    f"RuntimeClass {name} has handler {current.get('handler')!r}, but the containerd runtime "
                    f"gpunode configures is {settings.runtime_handler!r}: pods with runtimeClassName {name} would "
                    f"fail with `no runtime for {current.get('handler')!r} is configured` (F17). Fix: delete that "
                    "RuntimeClass (kubectl delete runtimeclass nvidia) and run gpunode bootstrap again"
                ),
            )
    elif current is not None and current.get("handler") != settings.runtime_handler:
        status, detail = (
            "failed",
            (
                f"RuntimeClass {name} has handler {current.get('handler')!r}, not {settings.runtime_handler!r}, and "
                "a handler cannot be changed in place. Fix: kubectl delete runtimeclass nvidia, then run again"
            ),
        )
    else:
        applied = apply_object(kubectl, desired, current, dry_run=run.dry_run)
        if applied.changed:
            status, detail = (
                "changed",
                (
                    f"{'create' if applied.created else 'update'} RuntimeClass {name} "
                    f"(handler {settings.runtime_handler})"
                ),
            )
        else:
            status, detail = "unchanged", f"RuntimeClass {name} (handler {settings.runtime_handler})"
    for host in hosts:
        run.record(host, "runtimeclass", status, detail)


# --------------------------------------------------------------------------------------
# node-label


def _read_nodes(run: _Run, kubectl: Kubectl) -> None:
    hosts = run.live()
    nodes = read_nodes(kubectl, [h.target.node for h in hosts]) if hosts else {}
    for host in hosts:
        host.node = nodes.get(host.target.node)
        if host.node is None:
            run.record(
                host,
                "node-label",
                "failed",
                f"node {host.target.node} is not registered in the cluster (its kubelet has not joined, "
                "or registers under another name). Fix: join the node, check the kubelet's "
                "--hostname-override, or pass --skip-cluster",
            )
            for name in CLUSTER_STEPS[2:]:
                run.record(host, name, "skipped", "the node is not in the cluster")
            continue
        labels = (host.node.get("metadata") or {}).get("labels") or {}
        host.previous_plugin = labels.get(DEVICE_PLUGIN_LABEL)
        host.previous_version = labels.get(DRIVER_VERSION_LABEL)


def _label_nodes(run: _Run, kubectl: Kubectl) -> None:
    for host in run.live():
        assert host.plan is not None and host.node is not None
        plan = host.plan
        patch = metadata_patch(host.node, plan.labels, plan.annotations)
        wanted = f"{DRIVER_VERSION_LABEL}={plan.labels[DRIVER_VERSION_LABEL]}, {DEVICE_PLUGIN_LABEL}={plan.serves}"
        if patch is None:
            run.record(host, "node-label", "unchanged", f"node {host.target.node}: {wanted}")
            continue
        changes = []
        current = (host.node.get("metadata") or {}).get("labels") or {}
        for key, value in (patch["metadata"].get("labels") or {}).items():
            was = current.get(key)
            changes.append(f"{key}={value}" + (f" (was {was})" if was else ""))
        if patch["metadata"].get("annotations"):
            changes.append("annotations " + ", ".join(sorted(patch["metadata"]["annotations"])))
        host.node = patch_metadata(kubectl, "node", host.target.node, patch, dry_run=run.dry_run)
        run.record(host, "node-label", "changed", f"node {host.target.node}: " + "; ".join(changes))


# --------------------------------------------------------------------------------------
# device-plugin


@dataclass
class _PluginOutcome:
    status: StepStatus
    detail: str
    notes: list[str] = field(default_factory=list)


def _plugin_configs(run: _Run, kubectl: Kubectl, deployment: PluginDeployment) -> str | None:
    """Apply the ConfigMap of device plugin configs and the account that reads node labels,
    the bundled plugin's grant to label its own node (nodes get, patch), all before the
    DaemonSets that mount and use them, and NVIDIA's MPS control daemon when a config uses
    MPS; a note of what changed, or None."""
    changed = []
    for obj in config_objects(deployment) + labeller_objects(deployment) + mps_daemon_objects(deployment):
        meta = obj["metadata"]
        current = kubectl.get(str(obj["kind"]).lower(), str(meta["name"]), namespace=meta.get("namespace"))
        if current is not None and not is_managed_by_gpunode(current):
            raise GpunodeError(
                f"{describe(obj)} exists and is not gpunode's (no app.kubernetes.io/managed-by: gpunode).",
                "delete or rename it, or use --namespace",
            )
        applied = apply_object(kubectl, obj, current, dry_run=run.dry_run)
        if applied.created or applied.changed:
            changed.append(f"{'create' if applied.created else 'update'} {describe(obj)}")
    return "; ".join(changed) or None


def _device_plugins(run: _Run, kubectl: Kubectl, settings: ClusterSettings) -> None:
    hosts = run.live()
    config_note = None
    planned = [h.plan.deployment for h in hosts if h.plan is not None and h.plan.deployment is not None]
    if planned and (settings.plugin_configs is not None or labeller_objects(planned[0])):
        config_note = _plugin_configs(run, kubectl, planned[0])
    outcomes: dict[int, _PluginOutcome] = {}
    groups: dict[str, list[_Host]] = {}
    for host in hosts:
        assert host.plan is not None
        if host.plan.deployment is None:
            why = (
                "the plugin runs as a service on the node (plugin mode host)"
                if host.plan.serves == "host"
                else "no GPU on this host"
            )
            outcomes[id(host)] = _PluginOutcome("skipped", f"no DaemonSet: {why}")
        else:
            groups.setdefault(host.plan.serves, []).append(host)

    labelled = _labelled_nodes(run, kubectl, hosts)
    # Every DaemonSet, once: gpunode's name may be taken by someone else's, and gpunode's own
    # that no node selects any more are removed below.
    existing = {
        (str((d.get("metadata") or {}).get("namespace")), str((d.get("metadata") or {}).get("name"))): d
        for d in kubectl.list("daemonsets", all_namespaces=True)
    }
    in_run = {h.target.node for h in hosts}
    rollouts: list[RolloutTarget] = []
    for name, members in groups.items():
        deployment = members[0].plan.deployment  # type: ignore[union-attr]
        assert deployment is not None
        desired = yaml.safe_load(render_device_plugin(deployment))
        current = existing.get((deployment.namespace, name))
        what = describe(desired)
        refusal = None
        if current is not None and not is_managed_by_gpunode(current):
            refusal = (
                f"{what} exists and is not gpunode's (no app.kubernetes.io/managed-by: gpunode): gpunode "
                "never changes a DaemonSet it does not own. Fix: delete or rename it, or use --namespace"
            )
        elif current is not None:
            refusal = _breaks_other_nodes(desired, what, labelled, in_run)
        if refusal is not None:
            for host in members:
                outcomes[id(host)] = _PluginOutcome("failed", refusal)
            continue
        applied = apply_object(kubectl, desired, current, dry_run=run.dry_run)
        if applied.created:
            status: StepStatus = "changed"
            detail = f"create {what} (first node on driver {deployment.driver_version} with this layout)"
        elif applied.changed:
            status, detail = "changed", f"update {what} (rolling update)"
        else:
            status, detail = "unchanged", f"{what} up to date"
        generation = int((applied.obj.get("metadata") or {}).get("generation") or 1)
        for host in members:
            assert host.node is not None
            taints, missing = placement_blockers(applied.obj, host.node)
            if taints:
                outcomes[id(host)] = _PluginOutcome(
                    "failed",
                    (
                        f"{what} will not run on node {host.target.node}: the node has taint {', '.join(taints)}, "
                        "which the DaemonSet does not tolerate (F15). Fix: run again with "
                        + " ".join(f"--toleration {t}" for t in taints)
                        + ", or remove the taint"
                    ),
                )
            elif missing and not run.dry_run:
                outcomes[id(host)] = _PluginOutcome(
                    "failed", (f"{what} does not select node {host.target.node}: the node lacks {', '.join(missing)}")
                )
            else:
                outcomes[id(host)] = _PluginOutcome(status, detail)
                rollouts.append(RolloutTarget(host.target.node, deployment.namespace, name, generation))

    _remove_unused(run, kubectl, hosts, outcomes, labelled, list(existing.values()))

    if rollouts and not run.dry_run:
        by_node = {h.target.node: h for h in hosts}
        for node, result in wait_for_rollout(kubectl, rollouts, settings.rollout_timeout).items():
            outcome = outcomes[id(by_node[node])]
            if result.done:
                outcome.detail += f"; {result.detail}"
            else:
                outcome.status, outcome.detail = "failed", result.detail
    for host in hosts:
        outcome = outcomes[id(host)]
        if config_note and host.plan is not None and host.plan.deployment is not None:
            outcome.notes.append(config_note)
            if outcome.status == "unchanged":
                outcome.status = "changed"
        detail = outcome.detail + "".join(f"\nnote: {n}" for n in outcome.notes)
        run.record(host, "device-plugin", outcome.status, detail)


def _labelled_nodes(run: _Run, kubectl: Kubectl, hosts: Sequence[_Host]) -> list[dict[str, Any]]:
    """Every node with a driver version label, as it is after this run's labelling."""
    nodes = kubectl.list("nodes", selector=DRIVER_VERSION_LABEL)
    if run.dry_run:
        # Nothing was relabelled: judge with the nodes as they would be.
        planned = {h.target.node: h.node for h in hosts if h.node is not None}
        nodes = [n for n in nodes if (n.get("metadata") or {}).get("name") not in planned]
        nodes += [n for n in planned.values() if n is not None]
    return nodes


def _breaks_other_nodes(
    desired: Mapping[str, Any], what: str, labelled: Sequence[Mapping[str, Any]], in_run: set[str]
) -> str | None:
    """Refuse an update that would leave another node it serves without a plugin: its pod
    would be replaced by one that cannot go there (a toleration given before, left out now)."""
    selector = daemonset_node_selector(desired)
    for node in labelled:
        meta = node.get("metadata") or {}
        if meta.get("name") in in_run or not selector_matches(selector, meta.get("labels") or {}):
            continue
        taints, _ = placement_blockers(desired, node)
        if taints:
            return (
                f"refusing to update {what}: it also serves node {meta.get('name')}, whose taint "
                f"{', '.join(taints)} the updated DaemonSet would not tolerate, so its plugin pod would not "
                "come back (F15). Fix: run again with "
                + " ".join(f"--toleration {t}" for t in taints)
                + " (as that node was bootstrapped with)"
            )
    return None


def _remove_unused(
    run: _Run,
    kubectl: Kubectl,
    hosts: Sequence[_Host],
    outcomes: Mapping[int, _PluginOutcome],
    nodes: Sequence[Mapping[str, Any]],
    daemonsets: Sequence[Mapping[str, Any]],
) -> None:
    """Delete gpunode's DaemonSets that no node selects any more (never another's).

    `daemonsets` as they were before this run's applies: one created by this run is
    selected by the node it was made for, so it is never among the unused."""
    for ds in unused_daemonsets(daemonsets, nodes):
        meta = ds.get("metadata") or {}
        name, namespace = str(meta.get("name")), str(meta.get("namespace"))
        version = (meta.get("labels") or {}).get(DRIVER_VERSION_LABEL, "?")
        delete_object(kubectl, "daemonset", name, namespace, dry_run=run.dry_run)
        note = (
            f"{'remove' if run.dry_run else 'removed'} DaemonSet {namespace}/{name} "
            f"(driver {version}): no node uses it any more"
        )
        movers = [h for h in hosts if h.previous_plugin == name]
        for host in movers or hosts:
            outcome = outcomes[id(host)]
            if movers:
                if outcome.status in ("unchanged", "skipped"):
                    outcome.status = "changed"
                outcome.detail += f"; {note}"
            else:
                outcome.notes.append(note)


# --------------------------------------------------------------------------------------
# verify


def _verify(run: _Run, kubectl: Kubectl, settings: ClusterSettings) -> None:
    hosts = run.live()
    if run.dry_run:
        for host in hosts:
            run.record(host, "verify", "skipped", "dry run: nothing was rolled out to verify")
        return
    checked = []
    for host in hosts:
        if host.target.gpu_count == 0:
            run.record(host, "verify", "skipped", "no GPU on this host: nothing to advertise")
        else:
            checked.append(host)
    if not checked:
        return
    expected = {h.target.node: expected_gpus(h.target, settings) for h in checked}
    request = VerifyRequest(
        nodes=tuple(h.target.node for h in checked),
        expects={node: count for node, (_, count) in expected.items()},
        resources={node: resource for node, (resource, _) in expected.items()},
        timeout=settings.verify_timeout,
        poll=0.5,
    )
    results = {check.verdict.node: check for check in verify_nodes(kubectl, request)}
    for host in checked:
        check = results[host.target.node]
        run.record(host, "verify", "unchanged" if check.ok else "failed", "\n".join(check.lines()))
