"""The rollout's decisions as data: budgets, batches, which runs disrupt, what a drain takes."""

from __future__ import annotations

from typing import Any

import pytest

from gpunode.bootstrap.core.kube.rollout_plan import (
    CORDONED_BY_ANNOTATION,
    MaxUnavailable,
    NodeState,
    blocking_budgets,
    disruption_of,
    node_state,
    nowhere_to_go,
    parse_max_unavailable,
    plan_batches,
    plan_drain,
)
from gpunode.bootstrap.errors import UserError


@pytest.mark.parametrize(
    ("text", "fleet", "size"),
    [("1", 4, 1), ("2", 4, 2), ("9", 4, 4), ("25%", 4, 1), ("30%", 4, 2), ("100%", 4, 4), ("1%", 200, 2)],
)
def test_batch_sizes(text: str, fleet: int, size: int) -> None:
    assert parse_max_unavailable(text).batch_size(fleet) == size


@pytest.mark.parametrize("text", ["0", "0%", "101%", "-1", "one", "1.5", ""])
def test_a_bad_max_unavailable_names_the_fix(text: str) -> None:
    with pytest.raises(UserError, match="Fix: give a whole number of nodes"):
        parse_max_unavailable(text)


def test_nodes_cordoned_by_an_earlier_run_come_first_then_the_given_order() -> None:
    nodes = [
        NodeState("h1", "n1"),
        NodeState("h2", "n2", unschedulable=True),  # someone else's cordon: keeps its place
        NodeState("h3", "n3", unschedulable=True, cordoned_by_us=True),
        NodeState("h4", "n4"),
    ]
    batches = plan_batches(nodes, MaxUnavailable(1))
    assert [[n.node for n in b] for b in batches] == [["n3"], ["n1"], ["n2"], ["n4"]]
    assert [[n.node for n in b] for b in plan_batches(nodes, MaxUnavailable(50, percent=True))] == [
        ["n3", "n1"],
        ["n2", "n4"],
    ]


def test_node_state_knows_whose_cordon_it_is() -> None:
    ours = {"metadata": {"name": "a", "annotations": {CORDONED_BY_ANNOTATION: "t"}}, "spec": {"unschedulable": True}}
    theirs = {"metadata": {"name": "b"}, "spec": {"unschedulable": True}}
    # Our annotation on a node someone uncordoned since: not a cordon of ours any more.
    stale = {"metadata": {"name": "c", "annotations": {CORDONED_BY_ANNOTATION: "t"}}, "spec": {}}
    assert node_state("h", ours).cordoned_by_us
    assert node_state("h", theirs).cordoned_by_others
    assert not node_state("h", stale).unschedulable and not node_state("h", stale).cordoned_by_us


def test_which_runs_disrupt_and_how_much_they_drain() -> None:
    assert not disruption_of({"driver": "unchanged", "containerd": "unchanged"}, reboot=False).disrupts
    host = disruption_of({"driver": "changed", "device-plugin": "changed"}, reboot=False)
    assert host.scope == "all" and "the driver packages change" in host.reasons
    assert disruption_of({"containerd": "changed"}, reboot=False).scope == "all"
    assert disruption_of({}, reboot=True).reasons == ("the host reboots",)
    plugin = disruption_of({"device-plugin": "changed", "driver": "unchanged"}, reboot=False)
    assert plugin.scope == "gpu" and plugin.reasons == (
        "the device plugin DaemonSet is replaced (the plugin restarts)",
    )


def _pod(
    name: str, *, node: str = "n1", gpus: int = 0, owner: str | None = "ReplicaSet", **extra: Any
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "c"}
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": gpus}}
    meta: dict[str, Any] = {"name": name, "namespace": "ns", "labels": {"app": name}, **extra.pop("meta", {})}
    if owner:
        meta["ownerReferences"] = [{"kind": owner, "name": "o", "controller": True}]
    return {
        "metadata": meta,
        "spec": {"nodeName": node, "containers": [container], **extra},
        "status": {"phase": "Running"},
    }


def test_drain_takes_gpu_pods_first_and_leaves_daemonset_and_mirror_pods() -> None:
    pods = [
        _pod("a-web"),
        _pod("b-train", gpus=1),
        _pod("c-plugin", owner="DaemonSet"),
        _pod("d-static", owner="Node", meta={"annotations": {"kubernetes.io/config.mirror": "x"}}),
        _pod("e-elsewhere", node="n2"),
    ]
    plan = plan_drain("n1", pods, "all", delete_emptydir_data=False)
    assert [p["metadata"]["name"] for p in plan.evict] == ["b-train", "a-web"]
    assert [ref for ref, _ in plan.left] == ["ns/c-plugin", "ns/d-static"]
    assert not plan.blocking
    assert [p["metadata"]["name"] for p in plan_drain("n1", pods, "gpu", delete_emptydir_data=False).evict] == [
        "b-train"
    ]


def test_emptydir_and_unmanaged_pods_block_unless_allowed() -> None:
    scratch = _pod("scratch", volumes=[{"name": "tmp", "emptyDir": {}}])
    bare = _pod("bare", owner=None)
    plan = plan_drain("n1", [scratch, bare], "all", delete_emptydir_data=False)
    reasons = dict(plan.blocking)
    assert "pass --delete-emptydir-data" in reasons["ns/scratch"]
    assert "no controller" in reasons["ns/bare"]
    allowed = plan_drain("n1", [scratch], "all", delete_emptydir_data=True)
    assert [p["metadata"]["name"] for p in allowed.evict] == ["scratch"]
    done = _pod("done", owner=None, volumes=[{"name": "tmp", "emptyDir": {}}])
    done["status"]["phase"] = "Succeeded"  # nothing left to lose
    assert plan_drain("n1", [done], "all", delete_emptydir_data=False).evict == [done]


def test_blocking_budgets_count_the_pods_each_budget_covers() -> None:
    pods = [_pod("a", gpus=1), _pod("b")]
    pods[1]["metadata"]["labels"] = {"app": "a"}
    plan = plan_drain("n1", pods, "all", delete_emptydir_data=False)

    def budget(allowed: int, selector: dict[str, Any]) -> dict[str, Any]:
        return {
            "metadata": {"name": "pdb", "namespace": "ns"},
            "spec": {"selector": selector},
            "status": {"disruptionsAllowed": allowed, "desiredHealthy": 3, "currentHealthy": 3 + allowed},
        }

    [block] = blocking_budgets(plan, [budget(1, {"matchLabels": {"app": "a"}})])
    assert block.pods == ("ns/a", "ns/b") and block.allowed == 1
    assert blocking_budgets(plan, [budget(2, {"matchLabels": {"app": "a"}})]) == []
    # An empty selector selects no pod for eviction.
    assert blocking_budgets(plan, [budget(0, {})]) == []
    expression = {"matchExpressions": [{"key": "app", "operator": "In", "values": ["a"]}]}
    assert len(blocking_budgets(plan, [budget(0, expression)])) == 1


def test_a_single_node_has_nowhere_to_send_its_pods() -> None:
    def node(name: str, **spec: Any) -> dict[str, Any]:
        return {
            "metadata": {"name": name},
            "spec": spec,
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }

    assert nowhere_to_go([node("lab")], ["lab"])
    assert not nowhere_to_go([node("a"), node("b")], ["a"])
    assert nowhere_to_go([node("a"), node("b", unschedulable=True)], ["a"])


def test_the_text_summary_names_batches_phases_blocks_and_the_stop() -> None:
    from gpunode.bootstrap.core.kube.rollout_text import format_rollout

    node = {
        "host": "h2",
        "node": "n2",
        "batch": 2,
        "reasons": ["the driver packages change"],
        "drain_scope": "all",
        "status": "failed",
        "cordoned": True,
        "phases": [
            {"name": "cordon", "status": "done", "started": 0.0, "seconds": 0.2, "detail": "cordoned"},
            {"name": "drain", "status": "failed", "started": 0.2, "seconds": 6.0, "detail": "refused"},
        ],
        "would_evict": ["ml/db-0"],
        "blocked_by": ["PodDisruptionBudget ml/db allows 0 disruption(s)"],
    }
    calm = {**node, "node": "n1", "batch": 0}
    doc = {"max_unavailable": "1", "batches": 2, "stopped": "Rollout stopped at node n2", "nodes": [calm, node]}
    text = format_rollout(doc)
    assert "rollout: 1 node(s) disrupted, in 2 batch(es) of at most 1" in text
    assert "  batch 2  n2 (h2): failed" in text and "n1" not in text
    assert "    drain    failed  6.0 s: refused" in text and "    left cordoned" in text
    assert text.endswith("STOPPED: Rollout stopped at node n2")
    planned = format_rollout(doc, dry_run=True)
    assert "would evict (all pods, GPU pods first): ml/db-0" in planned
    assert "would block: PodDisruptionBudget ml/db allows 0 disruption(s)" in planned
