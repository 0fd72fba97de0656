"""Cordon, drain and uncordon (gpunode.bootstrap.cluster.drain) with the real kubectl against
the API stand-in, whose Eviction subresource and disruption controller answer as
kube-apiserver 1.32 does (429 with its message when a budget would be broken)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from standins.kube_api import KubeApiStandIn

from gpunode.bootstrap.cluster import drain
from gpunode.bootstrap.cluster.kubectl import KubeAccess, Kubectl
from gpunode.bootstrap.core.kube.rollout_plan import CORDONED_BY_ANNOTATION, plan_drain

NS = "ml"
OWNER = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "train", "uid": "rs-1", "controller": True}


@pytest.fixture
def kubectl(kube_api: KubeApiStandIn) -> Kubectl:
    return Kubectl(KubeAccess(kubeconfig=str(kube_api.kubeconfig_path)))


def _pod(api: KubeApiStandIn, name: str, node: str, *, labels: dict[str, str], gpus: int = 0, **spec: Any) -> None:
    container: dict[str, Any] = {"name": "main", "image": "busybox"}
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    api.create(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "labels": labels, "ownerReferences": [OWNER]},
            "spec": {"nodeName": node, "containers": [container], **spec},
        }
    )
    api.set_pod_phase(NS, name, "Running", ready=True)


def _budget(api: KubeApiStandIn, name: str, app: str, **spec: Any) -> None:
    api.create(
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"selector": {"matchLabels": {"app": app}}, **spec},
        }
    )


@pytest.fixture
def fleet(kube_api: KubeApiStandIn) -> KubeApiStandIn:
    kube_api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    for node in ("gpu-1", "gpu-2"):
        kube_api.add_node(node)
    return kube_api


def test_the_disruption_controller_keeps_the_budget_status(fleet: KubeApiStandIn, kubectl: Kubectl) -> None:
    _pod(fleet, "web-1", "gpu-1", labels={"app": "web"})
    _pod(fleet, "web-2", "gpu-2", labels={"app": "web"})
    _budget(fleet, "web", "web", minAvailable=1)
    status = kubectl.get("pdb", "web", namespace=NS)["status"]  # type: ignore[index]
    assert (status["expectedPods"], status["desiredHealthy"], status["currentHealthy"]) == (2, 1, 2)
    assert status["disruptionsAllowed"] == 1
    assert status["conditions"][0]["reason"] == "SufficientPods"
    fleet.set_pod_phase(NS, "web-2", "Running", ready=False)
    status = kubectl.get("pdb", "web", namespace=NS)["status"]  # type: ignore[index]
    assert status["currentHealthy"] == 1 and status["disruptionsAllowed"] == 0
    assert status["conditions"][0]["reason"] == "InsufficientPods"


def test_an_eviction_a_budget_forbids_is_429_with_the_apiservers_words(fleet: KubeApiStandIn, kubectl: Kubectl) -> None:
    _pod(fleet, "db-1", "gpu-1", labels={"app": "db"})
    _budget(fleet, "db", "db", minAvailable=1)
    body = json.dumps({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "db-1", "namespace": NS}})
    result = fleet.kubectl("create", "--raw", f"/api/v1/namespaces/{NS}/pods/db-1/eviction", "-f", "-", stdin=body)
    assert result.returncode == 1
    assert (
        "Error from server (TooManyRequests): Cannot evict pod as it would violate the pod's disruption budget."
        in result.stderr
    )
    assert fleet.get("Pod", "db-1", NS) is not None, "a refused eviction deleted the pod"
    assert drain.evict(kubectl, fleet.get("Pod", "db-1", NS))[0] == "blocked"  # type: ignore[arg-type]


def test_an_allowed_eviction_decrements_the_budget_and_deletes_the_pod(fleet: KubeApiStandIn, kubectl: Kubectl) -> None:
    for n, node in enumerate(("gpu-1", "gpu-2", "gpu-2"), 1):
        _pod(fleet, f"web-{n}", node, labels={"app": "web"})
    _budget(fleet, "web", "web", maxUnavailable=1)  # no ReplicaSet served: the sync fails, as the controller's
    assert kubectl.get("pdb", "web", namespace=NS)["status"]["conditions"][0]["reason"] == "SyncFailed"  # type: ignore[index]
    fleet.delete("PodDisruptionBudget", "web", NS)
    _budget(fleet, "web", "web", minAvailable=2)
    pod = fleet.get("Pod", "web-1", NS)
    assert drain.evict(kubectl, pod)[0] == "evicted"  # type: ignore[arg-type]
    assert fleet.get("Pod", "web-1", NS) is None
    assert kubectl.get("pdb", "web", namespace=NS)["status"]["disruptionsAllowed"] == 0  # type: ignore[index]
    assert drain.evict(kubectl, fleet.get("Pod", "web-2", NS))[0] == "blocked"  # type: ignore[arg-type]
    assert drain.evict(kubectl, pod)[0] == "gone"  # type: ignore[arg-type]


def test_finished_and_pending_pods_are_evicted_without_asking_the_budget(
    fleet: KubeApiStandIn, kubectl: Kubectl
) -> None:
    _pod(fleet, "job-1", "gpu-1", labels={"app": "job"})
    _budget(fleet, "job", "job", minAvailable=1)
    fleet.set_pod_phase(NS, "job-1", "Succeeded")
    assert drain.evict(kubectl, fleet.get("Pod", "job-1", NS))[0] == "evicted"  # type: ignore[arg-type]


def test_cordon_is_claimed_as_gpunodes_and_only_gpunodes_is_lifted(fleet: KubeApiStandIn, kubectl: Kubectl) -> None:
    assert drain.cordon(kubectl, drain.read_node(kubectl, "gpu-1")) is True
    node = fleet.get("Node", "gpu-1")
    assert node["spec"]["unschedulable"] is True  # type: ignore[index]
    assert CORDONED_BY_ANNOTATION in node["metadata"]["annotations"]  # type: ignore[index]
    assert drain.cordon(kubectl, drain.read_node(kubectl, "gpu-1")) is False  # already ours: left as it is
    assert drain.uncordon(kubectl, "gpu-1") is True
    node = fleet.get("Node", "gpu-1")
    assert not node["spec"].get("unschedulable")  # type: ignore[index]
    assert CORDONED_BY_ANNOTATION not in (node["metadata"].get("annotations") or {})  # type: ignore[index]

    fleet.kubectl("cordon", "gpu-2")  # an operator's own cordon
    assert drain.cordon(kubectl, drain.read_node(kubectl, "gpu-2")) is False
    assert drain.uncordon(kubectl, "gpu-2") is False
    assert fleet.get("Node", "gpu-2")["spec"]["unschedulable"] is True  # type: ignore[index]


def test_drain_evicts_gpu_pods_first_and_leaves_daemonset_pods(fleet: KubeApiStandIn, kubectl: Kubectl) -> None:
    _pod(fleet, "a-web", "gpu-1", labels={"app": "web"})
    _pod(fleet, "z-train", "gpu-1", labels={"app": "train"}, gpus=1)
    plan = plan_drain("gpu-1", drain.pods_on(kubectl, "gpu-1"), "all", delete_emptydir_data=False)
    assert [p["metadata"]["name"] for p in plan.evict] == ["z-train", "a-web"]
    outcome = drain.drain(kubectl, plan, timeout=20)
    assert outcome.ok and outcome.evicted == [f"{NS}/z-train", f"{NS}/a-web"]
    assert drain.pods_on(kubectl, "gpu-1") == []


def test_a_blocked_drain_stops_at_the_gpu_pod_and_says_which_budget(
    fleet: KubeApiStandIn, kubectl: Kubectl, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(drain, "EVICTION_RETRY_SECONDS", 0.2)
    _pod(fleet, "a-web", "gpu-1", labels={"app": "web"})
    _pod(fleet, "z-train", "gpu-1", labels={"app": "train"}, gpus=1)
    _budget(fleet, "train", "train", minAvailable=1)
    plan = plan_drain("gpu-1", drain.pods_on(kubectl, "gpu-1"), "all", delete_emptydir_data=False)
    assert drain.dry_run_blocks(kubectl, plan) == [
        f"PodDisruptionBudget {NS}/train allows 0 disruption(s) (needs 1 healthy pods, has 1) and covers {NS}/z-train"
    ]
    outcome = drain.drain(kubectl, plan, timeout=1)
    assert not outcome.ok and outcome.evicted == []
    assert outcome.problem is not None
    assert f"pod {NS}/z-train was refused" in outcome.problem
    assert "violate the pod's disruption budget" in outcome.problem
    assert f"PodDisruptionBudget {NS}/train needs 1 healthy pods and has 1" in outcome.problem
    assert fleet.get("Pod", "a-web", NS) is not None, "a pod after the blocked GPU pod was evicted"


def test_wait_node_ready_names_the_kubelets_reason(fleet: KubeApiStandIn, kubectl: Kubectl) -> None:
    drain.wait_node_ready(kubectl, "gpu-1", timeout=5)
    fleet.set_node_status("gpu-2", conditions={"Ready": "False"})
    with pytest.raises(drain.HostStateError, match="node gpu-2 is not Ready"):
        drain.wait_node_ready(kubectl, "gpu-2", timeout=0.5)


def test_a_single_node_cluster_is_said_and_asked_before_anything_is_cordoned(kube_api: KubeApiStandIn) -> None:
    from gpunode.bootstrap.core.kube.rollout_plan import Disruption, NodeState
    from gpunode.bootstrap.orchestration.bootstrap import BootstrapRequest
    from gpunode.bootstrap.orchestration.rollout import NodeRollout, RolloutRequest, _roll_batch

    kube_api.add_node("homelab")
    asked: list[str] = []

    def decline(question: str) -> bool:
        asked.append(question)
        return False

    request = RolloutRequest(BootstrapRequest(overrides={}), confirm_nowhere=decline)
    node = NodeRollout("homelab", "homelab", 1, Disruption(("the driver packages change",), "all"))
    kubectl = Kubectl(KubeAccess(kubeconfig=str(kube_api.kubeconfig_path)))
    stopped = _roll_batch(kubectl, request, [], [NodeState("homelab", "homelab")], {"homelab": node}, {})
    assert asked == [
        "No node outside homelab can take its pods (a single-node cluster?): drained pods stay Pending "
        "until the node is back."
    ]
    assert stopped is not None and stopped.startswith("Rollout not started on homelab:") and "Not confirmed" in stopped
    assert not (kube_api.get("Node", "homelab") or {}).get("spec", {}).get("unschedulable")
    assert node.phases == []
