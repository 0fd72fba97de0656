"""The kubectl runner against the API stand-in, with the real kubectl."""

from __future__ import annotations

from pathlib import Path

import pytest
from standins.kube_api import KubeApiStandIn

from gpunode.bootstrap.cluster.kubectl import (
    ClusterAuthError,
    ClusterUnreachable,
    KubeAccess,
    Kubectl,
    KubectlError,
)
from gpunode.bootstrap.errors import UserError


def kubectl_for(api: KubeApiStandIn, kubectl_path: Path, timeout: float = 3) -> Kubectl:
    return Kubectl(KubeAccess(kubeconfig=str(api.kubeconfig_path), kubectl=str(kubectl_path), request_timeout=timeout))


def test_get_and_list_objects_and_none_when_absent(kube_api: KubeApiStandIn, kubectl_path: Path) -> None:
    kube_api.add_node("gpu01", labels={"gpunode.io/driver-version": "535.261.03"}, allocatable={"nvidia.com/gpu": "2"})
    kubectl = kubectl_for(kube_api, kubectl_path)
    node = kubectl.get("node", "gpu01")
    assert node is not None and node["status"]["allocatable"]["nvidia.com/gpu"] == "2"
    assert kubectl.get("node", "nope") is None
    assert kubectl.get("daemonset", "nope", namespace="kube-system") is None
    assert [n["metadata"]["name"] for n in kubectl.list("nodes", selector="gpunode.io/driver-version")] == ["gpu01"]


def test_unreachable_unauthorized_and_refused_are_told_apart(kube_api: KubeApiStandIn, kubectl_path: Path) -> None:
    kubectl = kubectl_for(kube_api, kubectl_path, timeout=2)
    with kube_api.fault("unreachable"):
        with pytest.raises(ClusterUnreachable) as unreachable:
            kubectl.list("nodes")
        assert "Fix:" in str(unreachable.value)
        # kubectl's one-line verdict, without client-go's retry log lines before it.
        assert "was refused" in str(unreachable.value) and "memcache.go" not in str(unreachable.value)
    with kube_api.fault("hang"):
        with pytest.raises(ClusterUnreachable):
            kubectl.list("nodes")
    with kube_api.fault("unauthorized"):
        with pytest.raises(ClusterAuthError):
            kubectl.list("nodes")
    with pytest.raises(KubectlError):
        kubectl.run("get", "nosuchkind")


def test_an_rbac_refusal_names_the_verb_the_resource_and_the_fix(kube_api: KubeApiStandIn, kubectl_path: Path) -> None:
    kube_api.add_node("gpu01")
    kubectl = kubectl_for(kube_api, kubectl_path)
    with kube_api.fault("forbidden", path_pattern="daemonsets"):
        assert kubectl.get("node", "gpu01") is not None  # only daemonsets are refused
        with pytest.raises(ClusterAuthError) as listing:
            kubectl.list("daemonsets", all_namespaces=True)
        with pytest.raises(ClusterAuthError) as deleting:
            kubectl.run("delete", "daemonset", "x", "-n", "kube-system")
    text = str(listing.value)
    assert "may not list daemonsets.apps at the cluster scope" in text
    assert 'Fix: grant system:serviceaccount:ci:gpunode "list" on daemonsets.apps at the cluster scope' in text
    assert 'may not delete daemonsets.apps in the namespace "kube-system"' in str(deleting.value)
    assert listing.value.exit_code == 2


def test_a_missing_kubectl_is_a_user_error() -> None:
    with pytest.raises(UserError) as error:
        Kubectl(KubeAccess(kubectl="/nonexistent/kubectl")).list("nodes")
    assert "--kubectl" in str(error.value)
