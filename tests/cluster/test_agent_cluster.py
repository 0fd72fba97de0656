"""The agent's writes against the API stand-in with the real kubectl: the GPUNodeReady
condition through the status subresource (the kubelet's conditions untouched), Events on the
Node, and the Lease budget under real optimistic concurrency (409 on a stale write)."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from standins.kube_api import KubeApiStandIn

from gpunode.bootstrap.cluster.kubectl import ClusterAuthError, KubeAccess, Kubectl
from gpunode.bootstrap.cluster.leases import DisruptionBudget
from gpunode.bootstrap.cluster.node_status import publish, read_node
from gpunode.bootstrap.core.kube.lease_budget import slot_name
from gpunode.bootstrap.core.kube.node_condition import CONDITION_TYPE, NodeCondition, current_condition

NS = "kube-system"


@pytest.fixture
def kc(kube_api: KubeApiStandIn, kubectl_path: Path) -> Kubectl:
    return Kubectl(KubeAccess(kubeconfig=str(kube_api.kubeconfig_path), kubectl=str(kubectl_path)))


def _conditions(api: KubeApiStandIn, node: str) -> dict[str, dict[str, str]]:
    obj = api.get("Node", node)
    assert obj is not None
    return {c["type"]: c for c in obj["status"]["conditions"]}


def test_condition_published_merges_by_type_and_events_follow_changes(kube_api: KubeApiStandIn, kc: Kubectl) -> None:
    kube_api.add_node("gpu-1")
    now = datetime(2026, 12, 7, 3, 0, tzinfo=timezone.utc)
    bad = NodeCondition("False", "F17", "containerd has no nvidia runtime. Fix: run gpunode bootstrap.")
    after, event = publish(
        kc, read_node(kc, "gpu-1"), bad, now=now, heartbeat_seconds=300, event_namespace=NS, reporting_instance="x"
    )
    assert after is not None and event is not None
    conditions = _conditions(kube_api, "gpu-1")
    assert conditions["Ready"]["status"] == "True"  # the kubelet's own condition is left alone
    assert conditions[CONDITION_TYPE]["reason"] == "F17"
    assert conditions[CONDITION_TYPE]["lastTransitionTime"] == "2026-12-07T03:00:00Z"
    assert any("PATCH" == r.method and r.path.endswith("/nodes/gpu-1/status") for r in kube_api.requests)

    # The same verdict within the heartbeat: nothing written.
    kube_api.clear_requests()
    later = now + timedelta(seconds=60)
    assert publish(
        kc, read_node(kc, "gpu-1"), bad, now=later, heartbeat_seconds=300, event_namespace=NS, reporting_instance="x"
    ) == (None, None)
    assert not [r for r in kube_api.requests if r.method != "GET"]

    # Healthy again: a transition, and a Normal event.
    good = NodeCondition("True", "GPUsAdvertised", "ok")
    _, event = publish(
        kc, read_node(kc, "gpu-1"), good, now=later, heartbeat_seconds=300, event_namespace=NS, reporting_instance="x"
    )
    assert event is not None and event.type == "Normal"
    stored = current_condition(kube_api.get("Node", "gpu-1"))
    assert stored is not None and stored["status"] == "True"
    assert stored["lastTransitionTime"] == "2026-12-07T03:01:00Z"
    events = [e for e in kube_api.list("Event", namespace=NS) if e["involvedObject"]["name"] == "gpu-1"]
    assert [e["type"] for e in sorted(events, key=lambda e: e["metadata"]["creationTimestamp"])] == [
        "Warning",
        "Normal",
    ] or sorted(e["type"] for e in events) == ["Normal", "Warning"]
    described = kube_api.kubectl("describe", "node", "gpu-1")
    assert "F17" in described.stdout and CONDITION_TYPE in described.stdout


def test_heartbeat_rewrites_an_unchanged_condition_after_its_period(kube_api: KubeApiStandIn, kc: Kubectl) -> None:
    kube_api.add_node("gpu-1")
    now = datetime(2026, 12, 7, 3, 0, tzinfo=timezone.utc)
    good = NodeCondition("True", "GPUsAdvertised", "ok")
    publish(
        kc, read_node(kc, "gpu-1"), good, now=now, heartbeat_seconds=300, event_namespace=NS, reporting_instance="x"
    )
    after, event = publish(
        kc,
        read_node(kc, "gpu-1"),
        good,
        now=now + timedelta(seconds=301),
        heartbeat_seconds=300,
        event_namespace=NS,
        reporting_instance="x",
    )
    assert after is not None and event is None  # a heartbeat is no news
    stored = current_condition(kube_api.get("Node", "gpu-1"))
    assert stored is not None
    assert stored["lastHeartbeatTime"] == "2026-12-07T03:05:01Z"
    assert stored["lastTransitionTime"] == "2026-12-07T03:00:00Z"


def test_one_slot_two_nodes_the_second_waits_and_names_the_holder(kube_api: KubeApiStandIn, kc: Kubectl) -> None:
    a = DisruptionBudget(kc, NS, "gpu-a", max_unavailable=1)
    b = DisruptionBudget(kc, NS, "gpu-b", max_unavailable=1)
    assert a.try_hold().slot == slot_name(0)
    waiting = b.try_hold()
    assert waiting.slot is None and waiting.holders == ("gpu-a",)
    a.release()
    lease = kube_api.get("Lease", slot_name(0), namespace=NS)
    assert lease is not None and not lease["spec"].get("holderIdentity")
    assert b.try_hold().slot == slot_name(0)


def test_an_expired_holder_loses_its_slot(kube_api: KubeApiStandIn, kc: Kubectl) -> None:
    t0 = datetime(2026, 12, 7, 3, 0, tzinfo=timezone.utc)
    a = DisruptionBudget(kc, NS, "gpu-a", max_unavailable=1, duration_seconds=30, clock=lambda: t0)
    assert a.try_hold().slot is not None
    b = DisruptionBudget(kc, NS, "gpu-b", max_unavailable=1, clock=lambda: t0 + timedelta(seconds=31))
    holding = b.try_hold()
    assert holding.slot == slot_name(0)
    lease = kube_api.get("Lease", slot_name(0), namespace=NS)
    assert lease is not None and lease["spec"]["holderIdentity"] == "gpu-b"
    assert lease["spec"]["leaseTransitions"] == 1
    a.release()  # not a's any more: left to b
    lease = kube_api.get("Lease", slot_name(0), namespace=NS)
    assert lease is not None and lease["spec"]["holderIdentity"] == "gpu-b"


def test_a_stale_write_is_refused_with_409(kube_api: KubeApiStandIn, kc: Kubectl) -> None:
    """The optimistic concurrency the budget relies on, seen through kubectl."""
    DisruptionBudget(kc, NS, "gpu-a", max_unavailable=1).try_hold()
    read_by_b = kube_api.get("Lease", slot_name(0), namespace=NS)
    read_by_c = json.loads(json.dumps(read_by_b))
    assert read_by_b is not None
    read_by_b["spec"]["holderIdentity"] = "gpu-b"
    assert kube_api.kubectl("replace", "-f", "-", stdin=json.dumps(read_by_b)).returncode == 0
    read_by_c["spec"]["holderIdentity"] = "gpu-c"
    result = kube_api.kubectl("replace", "-f", "-", stdin=json.dumps(read_by_c))
    assert result.returncode != 0 and "(Conflict)" in result.stderr
    lease = kube_api.get("Lease", slot_name(0), namespace=NS)
    assert lease is not None and lease["spec"]["holderIdentity"] == "gpu-b"


def test_racing_agents_never_hold_more_slots_than_the_budget(kube_api: KubeApiStandIn, kc: Kubectl) -> None:
    nodes = [f"gpu-{i}" for i in range(4)]
    budgets = [DisruptionBudget(kc, NS, n, max_unavailable=1) for n in nodes]
    results: dict[str, object] = {}
    start = threading.Barrier(len(budgets))

    def race(budget: DisruptionBudget) -> None:
        start.wait()
        results[budget.me] = budget.try_hold()

    threads = [threading.Thread(target=race, args=(b,)) for b in budgets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [n for n, h in results.items() if getattr(h, "slot", None)]
    assert len(winners) == 1, results
    leases = kube_api.list("Lease", namespace=NS)
    assert [lease["spec"].get("holderIdentity") for lease in leases] == winners


def test_a_refused_lease_write_names_the_missing_grant(kube_api: KubeApiStandIn, kc: Kubectl) -> None:
    with kube_api.fault("forbidden", r"/leases"):
        with pytest.raises(ClusterAuthError) as caught:
            DisruptionBudget(kc, NS, "gpu-a", max_unavailable=1).try_hold()
    assert "leases.coordination.k8s.io" in caught.value.problem
    assert caught.value.fix and "grant" in caught.value.fix


def test_a_refused_condition_write_names_the_missing_grant(kube_api: KubeApiStandIn, kc: Kubectl) -> None:
    kube_api.add_node("gpu-1")
    bad = NodeCondition("False", "F17", "x")
    with kube_api.fault("forbidden", r"/nodes/gpu-1/status"):
        with pytest.raises(ClusterAuthError) as caught:
            publish(
                kc,
                read_node(kc, "gpu-1"),
                bad,
                now=datetime(2026, 12, 7, 3, 0, tzinfo=timezone.utc),
                heartbeat_seconds=300,
                event_namespace=NS,
                reporting_instance="x",
            )
    assert "patch" in caught.value.problem and "nodes" in caught.value.problem, caught.value.problem
    assert caught.value.fix and "grant" in caught.value.fix


def test_doctor_reads_the_agents_roles_and_names_what_is_missing(kube_api: KubeApiStandIn, tmp_path: Path) -> None:
    """`gpunode doctor --node` against the stand-in: the agent's objects as `render agent`
    prints them, then one rule taken away from its Role (kubectl apply, as a GitOps edit would)."""
    import subprocess
    import sys

    import yaml

    from gpunode.bootstrap.core.kube.agent_manifests import AgentDeployment, agent_objects

    kube_api.add_node("gpu-1", labels={"nvidia.com/gpu.present": "true"})
    objects = agent_objects(AgentDeployment(mode="apply"))
    role = next(o for o in objects if o["kind"] == "Role")
    role["rules"] = [r for r in role["rules"] if "leases" not in r["resources"]]
    applied = kube_api.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(objects))
    assert applied.returncode == 0, applied.stderr

    def doctor() -> dict[str, object]:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "gpunode.bootstrap.cli.main",
                "doctor",
                "--node",
                "gpu-1",
                "--output",
                "json",
                "--kubeconfig",
                str(kube_api.kubeconfig_path),
            ],
            capture_output=True,
            text=True,
            env=kube_api.kubectl_env(),
            check=False,
            timeout=120,
        )
        return json.loads(result.stdout)  # type: ignore[no-any-return]

    found = [v for v in doctor()["verdicts"] if v["id"] == "AGENT-RBAC"]  # type: ignore[union-attr,index]
    assert len(found) == 1, found
    assert "get leases.coordination.k8s.io (namespace kube-system)" in found[0]["cause"]
    assert "gpunode render agent --mode apply" in found[0]["fix"]
    whole = agent_objects(AgentDeployment(mode="apply"))
    kube_api.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all([o for o in whole if o["kind"] == "Role"]))
    assert "AGENT-RBAC" not in [v["id"] for v in doctor()["verdicts"]]  # type: ignore[union-attr,index]
