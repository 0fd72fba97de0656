"""What gpunode wants in the cluster per node: labels, annotations, which DaemonSet; and which
of its DaemonSets go (core.cluster_plan, core.taints, the DaemonSet and verify pod manifests)."""

from __future__ import annotations

import itertools
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gpunode.bootstrap.core.kube.cluster_plan import (
    GPU_COUNT_ANNOTATION,
    GPUS_ANNOTATION,
    PLUGIN_DAEMONSET_ANNOTATION,
    ClusterSettings,
    NodeTarget,
    comparable,
    metadata_patch,
    normalize_bus_id,
    plan_node,
    unused_daemonsets,
    validate_cluster_settings,
)
from gpunode.bootstrap.core.kube.manifests import render_device_plugin, render_verify_pod
from gpunode.bootstrap.core.kube.plugin_deployment import (
    DEVICE_PLUGIN_LABEL,
    DRIVER_VERSION_LABEL,
    NVML_LIBRARY_ANNOTATION,
)
from gpunode.bootstrap.core.kube.taints import Taint, Toleration, parse_toleration, untolerated_taints
from gpunode.bootstrap.errors import UserError

DEBIAN = "/usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.535.261.03"
UBUNTU = "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.535.261.03"
ARM = "/usr/lib/aarch64-linux-gnu/libnvidia-ml.so.535.261.03"
BUSES = ("0000:3b:00.0", "0000:5b:00.0")


def target(
    name: str = "gpu01",
    library: str | None = DEBIAN,
    version: str = "535.261.03",
    kubelet_root: str = "/var/lib/kubelet",
    gpus: tuple[str, ...] = BUSES,
    plugin_mode: str = "daemonset",
) -> NodeTarget:
    return NodeTarget(name, name, version, library, kubelet_root, gpus, plugin_mode)


def daemonset_of(t: NodeTarget, settings: ClusterSettings | None = None) -> dict[str, Any]:
    plan = plan_node(t, settings or ClusterSettings())
    assert plan.deployment is not None
    document = yaml.safe_load(render_device_plugin(plan.deployment))
    assert isinstance(document, dict)
    return document


def host_path(ds: dict[str, Any], volume: str) -> str:
    (found,) = [v for v in ds["spec"]["template"]["spec"]["volumes"] if v["name"] == volume]
    return str(found["hostPath"]["path"])


# --------------------------------------------------------------------------------------
# One DaemonSet per driver version and host layout


def test_a_node_is_labelled_with_its_version_and_the_daemonset_that_selects_it() -> None:
    plan = plan_node(target(), ClusterSettings())
    ds = daemonset_of(target())
    name = ds["metadata"]["name"]
    assert plan.labels == {DRIVER_VERSION_LABEL: "535.261.03", DEVICE_PLUGIN_LABEL: name}
    assert name.startswith("gpunode-device-plugin-535-261-03-") and len(name) <= 63
    selector = ds["spec"]["template"]["spec"]["nodeSelector"]
    assert selector == {DRIVER_VERSION_LABEL: "535.261.03", DEVICE_PLUGIN_LABEL: name, "kubernetes.io/os": "linux"}
    assert plan.annotations == {
        GPU_COUNT_ANNOTATION: "2",
        GPUS_ANNOTATION: "0000:3b:00.0,0000:5b:00.0",
        NVML_LIBRARY_ANNOTATION: DEBIAN,
        PLUGIN_DAEMONSET_ANNOTATION: f"kube-system/{name}",
    }


def test_nodes_on_one_version_with_the_library_elsewhere_get_their_own_daemonset() -> None:
    """A Debian, an Ubuntu and an Arm node on 535.261.03: three DaemonSets, each mounting the
    file its nodes have; two Debian nodes share one."""
    debian_a, debian_b = daemonset_of(target("a", DEBIAN)), daemonset_of(target("b", DEBIAN))
    ubuntu, arm = daemonset_of(target("c", UBUNTU)), daemonset_of(target("d", ARM))
    names = {ds["metadata"]["name"] for ds in (debian_a, ubuntu, arm)}
    assert len(names) == 3 and debian_a == debian_b
    for ds, library in ((debian_a, DEBIAN), (ubuntu, UBUNTU), (arm, ARM)):
        assert host_path(ds, "nvml-library") == library


def test_a_kubelet_root_elsewhere_gets_its_own_daemonset() -> None:
    moved = daemonset_of(target(kubelet_root="/var/snap/microk8s/common/var/lib/kubelet"))
    assert moved["metadata"]["name"] != daemonset_of(target())["metadata"]["name"]
    assert host_path(moved, "device-plugins") == "/var/snap/microk8s/common/var/lib/kubelet/device-plugins"


def test_the_image_and_tolerations_update_a_daemonset_in_place() -> None:
    base = daemonset_of(target())["metadata"]["name"]
    settings = ClusterSettings(image="registry.example/gpunode:2", tolerations=(parse_toleration("dedicated=ml"),))
    assert daemonset_of(target(), settings)["metadata"]["name"] == base


def test_runtime_mode_ignores_where_the_library_is() -> None:
    runtime = ClusterSettings(mode="runtime")
    a, b = daemonset_of(target("a", DEBIAN), runtime), daemonset_of(target("b", UBUNTU), runtime)
    assert a == b and a["metadata"]["name"] != daemonset_of(target("a", DEBIAN))["metadata"]["name"]
    assert a["spec"]["template"]["spec"]["runtimeClassName"] == "nvidia"


def test_plugin_and_namespace_choose_other_daemonsets() -> None:
    names = {
        daemonset_of(target(), ClusterSettings(plugin=p, namespace=ns))["metadata"]["name"]  # type: ignore[arg-type]
        for p, ns in itertools.product(("bundled", "nvidia"), ("kube-system", "gpu"))
    }
    assert len(names) == 4
    assert any(n.startswith("gpunode-nvidia-device-plugin-535-261-03-") for n in names)


def test_host_plugin_mode_and_gpu_less_hosts_get_no_daemonset() -> None:
    host = plan_node(target(plugin_mode="host"), ClusterSettings())
    assert host.deployment is None and host.serves == "host"
    assert host.annotations[PLUGIN_DAEMONSET_ANNOTATION] is None
    none = plan_node(target(gpus=()), ClusterSettings())
    assert none.deployment is None and none.serves == "none" and none.annotations[GPU_COUNT_ANNOTATION] == "0"


def test_bad_cluster_settings_are_refused_before_any_host() -> None:
    with pytest.raises(UserError, match="image reference"):
        validate_cluster_settings(ClusterSettings(image="Not An Image"))
    with pytest.raises(UserError, match="namespace"):
        validate_cluster_settings(ClusterSettings(namespace="Kube_System"))
    with pytest.raises(UserError, match="symlink"):
        plan_node(target(library="/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"), ClusterSettings())


# --------------------------------------------------------------------------------------
# Node metadata


def node(labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": "gpu01", "labels": labels or {}, "annotations": annotations or {}}}


def test_metadata_patch_holds_only_what_differs() -> None:
    plan = plan_node(target(), ClusterSettings())
    current = node(dict(plan.labels), {k: v for k, v in plan.annotations.items() if v is not None})
    assert metadata_patch(current, plan.labels, plan.annotations) is None
    moved = plan_node(target(library=DEBIAN.replace("261.03", "309.01"), version="535.309.01"), ClusterSettings())
    patch = metadata_patch(current, moved.labels, moved.annotations)
    assert patch is not None
    assert set(patch["metadata"]["labels"]) == {DRIVER_VERSION_LABEL, DEVICE_PLUGIN_LABEL}
    assert set(patch["metadata"]["annotations"]) == {NVML_LIBRARY_ANNOTATION, PLUGIN_DAEMONSET_ANNOTATION}


def test_metadata_patch_removes_an_annotation_that_must_go() -> None:
    served = plan_node(target(), ClusterSettings())
    current = node(dict(served.labels), {k: v for k, v in served.annotations.items() if v is not None})
    host = plan_node(target(plugin_mode="host"), ClusterSettings())
    patch = metadata_patch(current, host.labels, host.annotations)
    assert patch is not None
    assert patch["metadata"]["annotations"] == {PLUGIN_DAEMONSET_ANNOTATION: None}
    assert patch["metadata"]["labels"] == {DEVICE_PLUGIN_LABEL: "host"}
    assert metadata_patch(node(), {}, {PLUGIN_DAEMONSET_ANNOTATION: None}) is None


# --------------------------------------------------------------------------------------
# Which DaemonSets go


def ours(name: str, selector: dict[str, str], managed: bool = True, version_label: bool = True) -> dict[str, Any]:
    labels = {"app.kubernetes.io/managed-by": "gpunode"} if managed else {"app.kubernetes.io/managed-by": "Helm"}
    if version_label:
        labels[DRIVER_VERSION_LABEL] = selector.get(DRIVER_VERSION_LABEL, "535.261.03")
    return {
        "metadata": {"name": name, "namespace": "kube-system", "labels": labels},
        "spec": {"template": {"spec": {"nodeSelector": selector}}},
    }


def labelled(version: str, plugin: str) -> dict[str, Any]:
    return {"metadata": {"labels": {DRIVER_VERSION_LABEL: version, DEVICE_PLUGIN_LABEL: plugin}}}


def test_only_gpunodes_daemonsets_no_node_selects_are_unused() -> None:
    old = ours("old", {DRIVER_VERSION_LABEL: "535.261.03", DEVICE_PLUGIN_LABEL: "old"})
    new = ours("new", {DRIVER_VERSION_LABEL: "535.309.01", DEVICE_PLUGIN_LABEL: "new"})
    rendered = ours("rendered", {DRIVER_VERSION_LABEL: "535.309.01"})  # from `gpunode render`
    foreign = ours("operator", {DRIVER_VERSION_LABEL: "470.1.1"}, managed=False)
    everywhere = ours("everywhere", {"kubernetes.io/os": "linux"})
    unlabelled = ours("unlabelled", {DRIVER_VERSION_LABEL: "470.1.1"}, version_label=False)
    nodes = [labelled("535.309.01", "new")]
    unused = unused_daemonsets([old, new, rendered, foreign, everywhere, unlabelled], nodes)
    assert [d["metadata"]["name"] for d in unused] == ["old"]
    assert unused_daemonsets([old], [labelled("535.261.03", "old")]) == []


def test_comparable_ignores_what_the_server_keeps_for_itself() -> None:
    before = {
        "kind": "DaemonSet",
        "metadata": {
            "name": "x",
            "resourceVersion": "5",
            "generation": 1,
            "managedFields": [{"manager": "gpunode"}],
            "annotations": {"deprecated.daemonset.template.generation": "1"},
        },
        "spec": {"a": 1},
        "status": {"numberReady": 1},
    }
    after = {
        "kind": "DaemonSet",
        "metadata": {
            "name": "x",
            "resourceVersion": "9",
            "generation": 1,
            "managedFields": [{"manager": "gpunode", "time": "now"}],
            "annotations": {"deprecated.daemonset.template.generation": "1"},
        },
        "spec": {"a": 1},
        "status": {"numberReady": 2},
    }
    assert comparable(before) == comparable(after)
    after["spec"] = {"a": 2}
    assert comparable(before) != comparable(after)
    assert comparable(None) is None


@pytest.mark.parametrize(
    "text,expected",
    [
        ("00000000:3B:00.0", "0000:3b:00.0"),
        ("0000:3b:00.0", "0000:3b:00.0"),
        ("3b:00.1", "0000:3b:00.1"),
        ("0001:AF:1F.7", "0001:af:1f.7"),
        ("junk", "junk"),
    ],
)
def test_bus_ids_from_nvml_and_sysfs_compare_equal(text: str, expected: str) -> None:
    assert normalize_bus_id(text) == expected


# --------------------------------------------------------------------------------------
# Taints and tolerations (F15)


def test_tolerations_parse_like_kubectl_writes_taints() -> None:
    assert parse_toleration("dedicated=ml:NoSchedule") == Toleration("dedicated", "Equal", "ml", "NoSchedule")
    assert parse_toleration("nvidia.com/gpu") == Toleration("nvidia.com/gpu", "Exists")
    assert parse_toleration("gpu:NoExecute") == Toleration("gpu", "Exists", "", "NoExecute")
    for bad in ("", "=x", "a=b:Never", "bad key", "a=not ok"):
        with pytest.raises(UserError, match="--toleration"):
            parse_toleration(bad)


def test_untolerated_taints_follow_the_scheduler() -> None:
    taints = [
        Taint("nvidia.com/gpu", "present", "NoSchedule"),
        Taint("dedicated", "ml", "NoSchedule"),
        Taint("soft", "", "PreferNoSchedule"),
        Taint("evict", "x", "NoExecute"),
    ]
    gpu = Toleration("nvidia.com/gpu", "Exists")
    assert [str(t) for t in untolerated_taints([gpu], taints)] == ["dedicated=ml:NoSchedule", "evict=x:NoExecute"]
    assert (
        untolerated_taints(
            [gpu, Toleration("dedicated", "Equal", "ml"), Toleration("evict", "Exists", "", "NoExecute")], taints
        )
        == []
    )
    assert untolerated_taints([Toleration("dedicated", "Equal", "other")], [taints[1]]) == [taints[1]]
    assert untolerated_taints([Toleration("", "Exists")], taints) == []


def test_extra_tolerations_reach_the_daemonset() -> None:
    settings = ClusterSettings(tolerations=(parse_toleration("dedicated=ml:NoSchedule"),))
    tolerations = daemonset_of(target(), settings)["spec"]["template"]["spec"]["tolerations"]
    assert tolerations == [
        {"key": "nvidia.com/gpu", "operator": "Exists"},
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"},
    ]


# --------------------------------------------------------------------------------------
# Valid Kubernetes, by the API's schema


@pytest.mark.parametrize("mode", ["mount", "runtime"])
def test_bootstrap_daemonsets_and_the_verify_pod_validate_strictly(mode: str) -> None:
    settings = ClusterSettings(mode=mode, tolerations=(parse_toleration("dedicated=ml:NoSchedule"),))  # type: ignore[arg-type]
    kubernetes_validate.validate(daemonset_of(target(), settings), "1.28.0", strict=True)
    pod = yaml.safe_load(
        render_verify_pod(
            name="gpunode-verify-0a1b2c3d", namespace="default", node="gpu01", tolerations=settings.tolerations
        )
    )
    kubernetes_validate.validate(pod, "1.28.0", strict=True)
    spec = pod["spec"]
    assert spec["runtimeClassName"] == "nvidia" and spec["restartPolicy"] == "Never"
    assert spec["containers"][0]["command"] == ["nvidia-smi", "-L"]
    assert spec["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": 1}
    assert {"key": "nvidia.com/gpu", "operator": "Exists"} in spec["tolerations"]
    assert spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0][
        "matchFields"
    ][0]["values"] == ["gpu01"]


def test_a_hostile_node_name_stays_a_value_in_the_verify_pod() -> None:
    hostile = 'gpu01"]\n  hostNetwork: true #'
    pod = yaml.safe_load(render_verify_pod(name="gpunode-verify-0a1b2c3d", namespace="default", node=hostile))
    assert "hostNetwork" not in pod["spec"]
    assert pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ][0]["matchFields"][0]["values"] == [hostile]
