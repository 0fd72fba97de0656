"""The agent's decisions as data: condition from doctor's verdicts, when to write and when to
send an Event, the Lease budget, the ConfigMap settings, and the rendered objects."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gpunode.bootstrap.core.doctor.engine import Finding
from gpunode.bootstrap.core.kube.agent_manifests import (
    AgentDeployment,
    agent_objects,
    needed_grants,
    parse_selector,
    render_agent,
)
from gpunode.bootstrap.core.kube.agent_settings import node_settings
from gpunode.bootstrap.core.kube.lease_budget import lease_body, plan_acquire, release_body, slot_name
from gpunode.bootstrap.core.kube.node_condition import (
    CONDITION_TYPE,
    NodeCondition,
    change_event,
    condition_from_verdicts,
    condition_patch,
    waiting_condition,
)
from gpunode.bootstrap.errors import UserError

NOW = datetime(2026, 12, 7, 3, 0, tzinfo=timezone.utc)


def verdict(id: str, link: str = "containerd", severity: str = "critical") -> Finding:
    return Finding(id, f"cause of {id}.", (), f"fix {id}", severity, link)  # type: ignore[arg-type]


def node_with(condition: dict[str, Any] | None) -> dict[str, Any]:
    conditions = [{"type": "Ready", "status": "True"}] + ([condition] if condition else [])
    return {"metadata": {"name": "gpu-1", "uid": "u"}, "status": {"conditions": conditions}}


# --- condition --------------------------------------------------------------------------------


def test_no_problem_is_true_and_the_first_verdict_is_the_reason() -> None:
    assert condition_from_verdicts([], 2) == NodeCondition(
        "True", "GPUsAdvertised", "The node advertises 2 GPU(s); every link of the chain holds."
    )
    cond = condition_from_verdicts([verdict("F17"), verdict("DP-NO-POD", "deployment")])
    assert cond.status == "False" and cond.reason == "F17"
    assert cond.message.startswith("cause of F17. Fix: fix F17") and "DP-NO-POD" in cond.message


def test_long_messages_are_cut_for_the_condition() -> None:
    long = Finding("F2", "x" * 5000, (), "y", "critical", "driver")
    assert len(condition_from_verdicts([long]).message) == 1024


def test_patch_keeps_transition_time_while_the_status_holds() -> None:
    stored = {
        "type": CONDITION_TYPE,
        "status": "False",
        "reason": "F17",
        "message": "old",
        "lastHeartbeatTime": "2026-12-07T02:00:00Z",
        "lastTransitionTime": "2026-12-07T01:00:00Z",
    }
    patch = condition_patch(node_with(stored), NodeCondition("False", "F1", "new"), NOW, 300)
    assert patch is not None
    (written,) = patch["status"]["conditions"]
    assert written["lastTransitionTime"] == "2026-12-07T01:00:00Z"
    assert written["lastHeartbeatTime"] == "2026-12-07T03:00:00Z"
    patch = condition_patch(node_with(stored), NodeCondition("True", "GPUsAdvertised", "ok"), NOW, 300)
    assert patch is not None and patch["status"]["conditions"][0]["lastTransitionTime"] == "2026-12-07T03:00:00Z"


def test_unchanged_within_the_heartbeat_writes_nothing_and_after_it_writes() -> None:
    stored = {
        "type": CONDITION_TYPE,
        "status": "True",
        "reason": "GPUsAdvertised",
        "message": "ok",
        "lastHeartbeatTime": "2026-12-07T02:58:00Z",
        "lastTransitionTime": "2026-12-07T01:00:00Z",
    }
    same = NodeCondition("True", "GPUsAdvertised", "ok")
    assert condition_patch(node_with(stored), same, NOW, 300) is None
    assert condition_patch(node_with(stored), same, NOW + timedelta(minutes=4), 300) is not None


def test_events_only_when_status_or_reason_change() -> None:
    stored = {"type": CONDITION_TYPE, "status": "False", "reason": "F17", "message": "a"}
    assert change_event(node_with(stored), NodeCondition("False", "F17", "b")) is None
    event = change_event(node_with(stored), NodeCondition("False", "F1", "b"))
    assert event is not None and event.type == "Warning" and "was False/F17" in event.message
    event = change_event(node_with(None), NodeCondition("True", "GPUsAdvertised", "ok"))
    assert event is not None and event.type == "Normal" and "was not set" in event.message


def test_waiting_condition_names_the_holders() -> None:
    cond = waiting_condition(["gpu-2"], 1, "driver")
    assert cond.status == "False" and cond.reason == "WaitingForDisruptionBudget" and "gpu-2" in cond.message


# --- lease budget -----------------------------------------------------------------------------


def lease(index: int, holder: str | None, renewed: datetime = NOW, rv: str = "7", duration: int = 60) -> dict[str, Any]:
    body = lease_body(slot_name(index), "kube-system", holder, renewed, duration, resource_version=rv)
    return body


def test_empty_budget_creates_the_first_slot() -> None:
    action = plan_acquire([], "gpu-1", NOW, max_unavailable=2, namespace="kube-system", duration_seconds=60)
    assert action.kind == "create" and action.name == slot_name(0) and action.body is not None
    assert action.body["spec"]["holderIdentity"] == "gpu-1"
    assert "resourceVersion" not in action.body["metadata"]


def test_full_budget_waits_and_names_holders() -> None:
    action = plan_acquire(
        [lease(0, "gpu-2")], "gpu-1", NOW, max_unavailable=1, namespace="kube-system", duration_seconds=60
    )
    assert action.kind == "wait" and action.holders == ("gpu-2",)


def test_my_slot_is_renewed_with_its_resource_version() -> None:
    action = plan_acquire(
        [lease(0, "gpu-1", rv="42")], "gpu-1", NOW, max_unavailable=1, namespace="kube-system", duration_seconds=60
    )
    assert action.kind == "renew" and action.body is not None
    assert action.body["metadata"]["resourceVersion"] == "42"


def test_expired_and_empty_slots_are_taken_at_their_resource_version() -> None:
    expired = lease(0, "gpu-2", renewed=NOW - timedelta(seconds=61), rv="9")
    action = plan_acquire([expired], "gpu-1", NOW, max_unavailable=1, namespace="kube-system", duration_seconds=60)
    assert action.kind == "take" and action.resource_version == "9"
    assert action.body is not None and action.body["spec"]["leaseTransitions"] == 1
    empty = lease(0, None, rv="3")
    action = plan_acquire([empty], "gpu-1", NOW, max_unavailable=1, namespace="kube-system", duration_seconds=60)
    assert action.kind == "take" and action.resource_version == "3"


def test_a_lowered_budget_counts_slots_beyond_it() -> None:
    leases = [lease(0, None), lease(1, "gpu-2"), lease(2, "gpu-3")]
    action = plan_acquire(leases, "gpu-1", NOW, max_unavailable=2, namespace="kube-system", duration_seconds=60)
    assert action.kind == "wait" and action.holders == ("gpu-2", "gpu-3")


def test_release_only_my_own_slot() -> None:
    assert release_body(lease(0, "gpu-2"), "gpu-1", NOW) is None
    body = release_body(lease(0, "gpu-1", rv="5"), "gpu-1", NOW)
    assert body is not None and "holderIdentity" not in body["spec"] and body["metadata"]["resourceVersion"] == "5"


# --- settings ---------------------------------------------------------------------------------

CONFIG = """
settings:
  driver_version: 535.261.03
  kernel_module: none
nodes:
  - selector: {nvidia.com/gpu.product: Tesla-K80}
    settings: {driver_branch: "470", driver_version: null}
"""


def test_configmap_settings_with_per_node_overrides_by_label() -> None:
    plain = node_settings("gpu-1", {}, CONFIG, {})
    assert plain.driver_version == "535.261.03" and plain.kernel_module == "none"
    k80 = node_settings("gpu-2", {"nvidia.com/gpu.product": "Tesla-K80"}, CONFIG, {})
    assert k80.driver_branch == "470" and k80.driver_version is None
    flagged = node_settings("gpu-1", {}, CONFIG, {"kernel_module": "dkms"})
    assert flagged.kernel_module == "dkms"


@pytest.mark.parametrize(
    "text,words",
    [
        ("settings: [1, 2]", "not a mapping"),
        ("settings: {driver_version: '535; reboot'}", "not a package version"),
        ("settings: {colour: blue}", "not an agent setting"),
        ("other: 1", "unknown key"),
        ("nodes: [{settings: {}}]", "no selector"),
        ("settings: {a: [", "not YAML"),
    ],
)
def test_bad_configmaps_are_refused_with_the_fix(text: str, words: str) -> None:
    with pytest.raises(UserError) as caught:
        node_settings("gpu-1", {}, text, {})
    assert words in str(caught.value) and caught.value.fix


# --- render -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["check", "apply"])
def test_rendered_objects_are_valid_kubernetes(mode: str) -> None:
    for obj in agent_objects(AgentDeployment(mode=mode)):
        kubernetes_validate.validate(obj, "1.28.0", strict=True)


def test_daemonset_runs_on_gpu_nodes_in_the_hosts_pid_namespace() -> None:
    docs = list(yaml.safe_load_all(render_agent(AgentDeployment(interval=120, max_unavailable=2))))
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostPID"] is True and spec["containers"][0]["securityContext"]["privileged"] is True
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    keys = [t["matchExpressions"][0]["key"] for t in terms]
    assert keys == ["feature.node.kubernetes.io/pci-10de.present", "nvidia.com/gpu.present"]  # either one
    assert "--interval=120" in spec["containers"][0]["args"] and "--max-unavailable=2" in spec["containers"][0]["args"]
    chosen = agent_objects(AgentDeployment(node_selector=parse_selector("pool=gpu")))[-1]
    assert chosen["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "gpu"}


def test_rbac_is_what_each_mode_uses_and_no_more() -> None:
    check = needed_grants("check", "kube-system")
    apply = needed_grants("apply", "kube-system")
    assert "patch nodes/status (cluster)" in check and "patch nodes (cluster)" not in check
    assert "create pods/eviction (cluster)" in apply and "create pods/eviction (cluster)" not in check
    assert "update leases.coordination.k8s.io (namespace kube-system)" in check
    assert not any(g.startswith(("delete ", "*")) for g in apply)


@pytest.mark.parametrize(
    "kwargs,words",
    [
        ({"mode": "fix"}, "mode"),
        ({"interval": 1}, "--interval"),
        ({"max_unavailable": 0}, "--max-unavailable"),
        ({"namespace": "Kube_System"}, "namespace"),
        ({"image": "a b"}, "--image"),
    ],
)
def test_bad_render_input(kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(UserError) as caught:
        agent_objects(AgentDeployment(**kwargs))
    assert words in str(caught.value)


def test_bad_selector() -> None:
    with pytest.raises(UserError, match="key=value"):
        parse_selector("gpu")


# --- doctor reads the agent's condition --------------------------------------------------------


def test_doctor_notes_the_agents_condition_without_counting_it_as_a_problem() -> None:
    from doctor_support import case, gpu_node, healthy_view, judge

    node = gpu_node()
    node["status"]["conditions"].append(
        {
            "type": CONDITION_TYPE,
            "status": "False",
            "reason": "F17",
            "message": "containerd has no nvidia runtime. Fix: run gpunode bootstrap.",
            "lastHeartbeatTime": "2026-12-07T03:00:00Z",
            "lastTransitionTime": "2026-12-07T02:55:00Z",
        }
    )
    diagnosis = judge(case(view=healthy_view(node=node)))
    (note,) = [v for v in diagnosis.verdicts if v.id == "AGENT-CONDITION"]
    assert note.severity == "info" and "GPUNodeReady=False (F17)" in note.cause
    assert "2026-12-07T03:00:00Z" in note.cause and "containerd has no nvidia runtime" in note.evidence[0]
    assert diagnosis.exit_code == 0  # the evidence itself is healthy: doctor judges afresh
    assert "AGENT-CONDITION" not in [v.id for v in judge(case()).verdicts]


def test_verify_reports_the_agents_condition_beside_its_own_verdict() -> None:
    from gpunode.bootstrap.core.verify.result import NodeObservation, quick_result

    node = {
        "metadata": {"name": "gpu-1"},
        "status": {
            "allocatable": {"nvidia.com/gpu": "0"},
            "capacity": {"nvidia.com/gpu": "1"},
            "conditions": [
                {"type": CONDITION_TYPE, "status": "False", "reason": "F8", "message": "plugin gone. Fix: re-apply."}
            ],
        },
    }
    result = quick_result(NodeObservation.from_node("gpu-1", node), 1)
    assert result.kind == "zero"  # verify judges Allocatable itself; the condition is said beside it
    assert result.as_dict()["agent"]["reason"] == "F8"
    assert any(line.startswith("gpunode agent: GPUNodeReady=False (F8)") for line in result.lines())
    plain = quick_result(NodeObservation.from_node("gpu-1", {"metadata": {}, "status": {}}), 1)
    assert plain.as_dict()["agent"] is None


def test_missing_grants_compares_the_roles_with_what_the_agent_does() -> None:
    from gpunode.bootstrap.core.kube.agent_manifests import missing_grants

    objects = {o["kind"]: o for o in agent_objects(AgentDeployment(mode="apply"))}
    cluster_role, role = objects["ClusterRole"], objects["Role"]
    assert missing_grants("apply", "kube-system", cluster_role, role) == []
    trimmed = {**cluster_role, "rules": [r for r in cluster_role["rules"] if "pods/eviction" not in r["resources"]]}
    assert missing_grants("apply", "kube-system", trimmed, role) == ["create pods/eviction (cluster)"]
    assert missing_grants("check", "kube-system", trimmed, role) == []  # check mode never evicts
    assert "update leases.coordination.k8s.io (namespace kube-system)" in missing_grants(
        "check", "kube-system", cluster_role, None
    )
    admin = {"rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]}
    assert missing_grants("apply", "kube-system", admin, None) == []


def test_doctor_names_the_grant_the_agent_is_missing() -> None:
    from doctor_support import case, healthy_view, judge

    objects = {o["kind"]: o for o in agent_objects(AgentDeployment(mode="apply", namespace="gpu-system"))}
    role = {**objects["Role"], "rules": [r for r in objects["Role"]["rules"] if "leases" not in r["resources"]]}
    diagnosis = judge(case(view=healthy_view(agent=(objects["DaemonSet"], objects["ClusterRole"], role))))
    (finding,) = [v for v in diagnosis.verdicts if v.id == "AGENT-RBAC"]
    assert finding.severity == "warning"
    assert "get leases.coordination.k8s.io (namespace gpu-system)" in finding.cause
    assert "--mode apply --namespace gpu-system" in finding.fix
    whole = judge(case(view=healthy_view(agent=(objects["DaemonSet"], objects["ClusterRole"], objects["Role"]))))
    assert "AGENT-RBAC" not in [v.id for v in whole.verdicts]
