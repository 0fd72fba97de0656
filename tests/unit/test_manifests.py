"""The RuntimeClass and device plugin DaemonSets gpunode applies (docs/failure-modes.md: F1-F7, F11, F15)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import yaml

from gpunode.bootstrap.core.kube import manifest_templates, manifests, plugin_deployment
from gpunode.bootstrap.core.kube.manifests import (
    manifest_objects,
    render_device_plugin,
    render_manifests,
    render_runtimeclass,
)
from gpunode.bootstrap.core.kube.plugin_deployment import (
    DRIVER_VERSION_LABEL,
    MANAGED_BY_LABELS,
    MIG_STRATEGIES,
    MODES,
    PLUGINS,
    PluginDeployment,
    daemonset_name,
)
from gpunode.bootstrap.errors import UserError

DEBIAN_LIB = "/usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.535.261.03"


def deployment(**overrides: Any) -> PluginDeployment:
    values: dict[str, Any] = {"driver_version": "535.261.03", "lib_path": DEBIAN_LIB}
    values.update(overrides)
    return PluginDeployment(**values)


def daemonset(dep: PluginDeployment) -> dict[str, Any]:
    document = yaml.safe_load(render_device_plugin(dep))
    assert isinstance(document, dict)
    return document


def container(ds: dict[str, Any]) -> dict[str, Any]:
    (only,) = ds["spec"]["template"]["spec"]["containers"]
    assert isinstance(only, dict)
    return only


def env(ds: dict[str, Any]) -> dict[str, str]:
    pairs = container(ds)["env"]
    names = [pair["name"] for pair in pairs]
    assert len(names) == len(set(names)), names
    # A value taken from the pod (valueFrom) shows as "<fieldRef path>".
    return {
        pair["name"]: pair["value"] if "value" in pair else f"<{pair['valueFrom']['fieldRef']['fieldPath']}>"
        for pair in pairs
    }


def volumes(ds: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}


def mounts(ds: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["mountPath"]: m for m in container(ds)["volumeMounts"]}


ALL_COMBINATIONS = list(itertools.product(PLUGINS, MODES, MIG_STRATEGIES))


# --- the stream -------------------------------------------------------------------------------


def test_stream_is_runtimeclass_then_daemonset_all_managed_by_gpunode() -> None:
    objects = manifest_objects(deployment())
    # The bundled plugin labels its node: its account and the least grant for it come first.
    assert [o["kind"] for o in objects] == [
        "RuntimeClass",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "DaemonSet",
    ]
    runtimeclass, ds = objects[0], objects[-1]
    assert runtimeclass["metadata"]["name"] == "nvidia"
    assert runtimeclass["handler"] == "nvidia"
    for obj in (runtimeclass, ds):
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "gpunode"
    assert ds["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "gpunode"
    assert list(yaml.safe_load_all(render_manifests(deployment()))) == objects
    assert MANAGED_BY_LABELS == {"app.kubernetes.io/managed-by": "gpunode"}


def test_runtimeclass_handler_follows_the_containerd_runtime_name() -> None:
    assert yaml.safe_load(render_runtimeclass("nvidia-cdi"))["handler"] == "nvidia-cdi"
    with pytest.raises(UserError):
        render_runtimeclass("Nvidia Runtime")


# --- one DaemonSet per driver version -----------------------------------------------------------


@pytest.mark.parametrize("plugin", PLUGINS)
def test_daemonset_is_named_and_node_selected_by_driver_version(plugin: str) -> None:
    a = daemonset(deployment(plugin=plugin))
    b = daemonset(
        deployment(plugin=plugin, driver_version="550.54.15", lib_path="/usr/lib64/libnvidia-ml.so.550.54.15")
    )
    for ds, version in ((a, "535.261.03"), (b, "550.54.15")):
        assert ds["metadata"]["name"] == daemonset_name(version, plugin)
        assert ds["spec"]["template"]["spec"]["nodeSelector"][DRIVER_VERSION_LABEL] == version
        selector = ds["spec"]["selector"]["matchLabels"]
        assert selector.items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    # Two drivers in one fleet: different names and selectors that cannot adopt each
    # other's pods.
    assert a["metadata"]["name"] != b["metadata"]["name"]
    assert a["spec"]["selector"] != b["spec"]["selector"]


def test_daemonset_names_are_dns_labels_and_distinct_per_plugin() -> None:
    names = {daemonset_name(v, p) for v in ("535.261.03", "535.261.3", "390.157") for p in PLUGINS}
    assert len(names) == 6
    for name in names:
        assert plugin_deployment.DNS_LABEL.match(name), name
    assert daemonset_name("535.261.03", "bundled") == "gpunode-device-plugin-535-261-03"
    with pytest.raises(UserError):
        daemonset_name("535.261.03; rm -rf /", "bundled")
    with pytest.raises(UserError):
        daemonset_name("535.261.03", "other")


# --- mount mode (F1, F2, F3, F5) --------------------------------------------------------------


@pytest.mark.parametrize("plugin", PLUGINS)
def test_mount_mode_mounts_the_real_file_privileged_with_dev(plugin: str) -> None:
    ds = daemonset(deployment(plugin=plugin))
    pod = ds["spec"]["template"]["spec"]
    assert "runtimeClassName" not in pod
    lib = volumes(ds)["nvml-library"]["hostPath"]
    assert lib == {"path": DEBIAN_LIB, "type": "File"}
    assert mounts(ds)["/usr/local/lib/libnvidia-ml.so.1"] == {
        "name": "nvml-library",
        "mountPath": "/usr/local/lib/libnvidia-ml.so.1",
        "readOnly": True,
    }
    assert env(ds)["LD_LIBRARY_PATH"] == "/usr/local/lib"
    assert volumes(ds)["dev"]["hostPath"]["path"] == "/dev"
    assert mounts(ds)["/dev"]["name"] == "dev"
    assert container(ds)["securityContext"]["privileged"] is True
    assert ds["metadata"]["annotations"]["gpunode.io/nvml-library"] == DEBIAN_LIB


@pytest.mark.parametrize("plugin,mode,mig", ALL_COMBINATIONS)
def test_no_system_library_directory_is_ever_mounted(plugin: str, mode: str, mig: str) -> None:
    ds = daemonset(deployment(plugin=plugin, mode=mode, mig_strategy=mig))
    host_paths = {v["hostPath"]["path"] for v in volumes(ds).values()}
    container_paths = set(mounts(ds))
    system_dirs = {
        "/usr/lib",
        "/usr/lib64",
        "/lib",
        "/lib64",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/local/lib",
    }
    assert not (host_paths | container_paths) & system_dirs
    # Everything mounted is the library file, /dev, the kubelet's device-plugins dir, or (the
    # bundled plugin's telemetry) the kubelet's pod-resources dir.
    assert host_paths <= {DEBIAN_LIB, "/dev", "/var/lib/kubelet/device-plugins", "/var/lib/kubelet/pod-resources"}


# --- runtime mode (F4, F6) --------------------------------------------------------------------


@pytest.mark.parametrize("plugin", PLUGINS)
def test_runtime_mode_uses_the_runtimeclass_and_only_sys_admin(plugin: str) -> None:
    ds = daemonset(deployment(plugin=plugin, mode="runtime", lib_path=None))
    pod = ds["spec"]["template"]["spec"]
    assert pod["runtimeClassName"] == "nvidia"
    assert set(volumes(ds)) == {"device-plugins", *(["pod-resources"] if plugin == "bundled" else [])}
    security = container(ds)["securityContext"]
    assert security == {"capabilities": {"add": ["SYS_ADMIN"]}}
    variables = env(ds)
    assert "LD_LIBRARY_PATH" not in variables
    assert variables["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert "utility" in variables["NVIDIA_DRIVER_CAPABILITIES"]
    assert "annotations" not in ds["metadata"]


def test_runtime_mode_may_keep_the_library_for_its_version_but_does_not_mount_it() -> None:
    ds = daemonset(deployment(mode="runtime"))
    assert set(volumes(ds)) == {"device-plugins", "pod-resources"}


# --- shared by both modes (F7, F11, F15) ---------------------------------------------------------


@pytest.mark.parametrize("plugin,mode,mig", ALL_COMBINATIONS)
def test_every_daemonset_tolerates_gpu_taints_and_is_node_critical(plugin: str, mode: str, mig: str) -> None:
    ds = daemonset(deployment(plugin=plugin, mode=mode, mig_strategy=mig))
    pod = ds["spec"]["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists"} in pod["tolerations"]
    assert pod["priorityClassName"] == "system-node-critical"
    assert volumes(ds)["device-plugins"]["hostPath"] == {"path": "/var/lib/kubelet/device-plugins", "type": "Directory"}
    assert mounts(ds)["/var/lib/kubelet/device-plugins"]["name"] == "device-plugins"
    assert ds["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    resources = container(ds)["resources"]
    assert resources["requests"]["memory"] and resources["limits"]["memory"]
    assert "livenessProbe" not in container(ds) and "readinessProbe" not in container(ds)


def test_kubelet_root_moves_the_host_side_of_the_device_plugins_mount() -> None:
    ds = daemonset(deployment(kubelet_root="/data/kubelet"))
    assert volumes(ds)["device-plugins"]["hostPath"]["path"] == "/data/kubelet/device-plugins"
    # Inside the container the directory stays where NVIDIA's plugin looks, and the bundled
    # plugin is told where it is.
    assert mounts(ds)["/var/lib/kubelet/device-plugins"]["name"] == "device-plugins"
    assert env(ds)["GPUNODE_KUBELET_DIR"] == "/var/lib/kubelet/device-plugins"


@pytest.mark.parametrize("plugin,mode", list(itertools.product(PLUGINS, MODES)))
@pytest.mark.parametrize("mig", ["single", "mixed"])
def test_mig_turns_on_monitoring_with_sys_admin(plugin: str, mode: str, mig: str) -> None:
    ds = daemonset(deployment(plugin=plugin, mode=mode, mig_strategy=mig))
    variables = env(ds)
    assert variables["NVIDIA_MIG_MONITOR_DEVICES"] == "all"
    assert "SYS_ADMIN" in container(ds)["securityContext"]["capabilities"]["add"]
    strategy = variables["GPUNODE_MIG_STRATEGY" if plugin == "bundled" else "MIG_STRATEGY"]
    assert strategy == mig


@pytest.mark.parametrize("plugin", PLUGINS)
def test_without_mig_there_is_no_mig_monitoring(plugin: str) -> None:
    ds = daemonset(deployment(plugin=plugin))
    assert "NVIDIA_MIG_MONITOR_DEVICES" not in env(ds)
    assert "capabilities" not in container(ds)["securityContext"]


def test_bundled_plugin_runs_gpunode_plugin_serve_with_its_settings() -> None:
    dep = deployment(
        resource_name="example.com/gpu",
        device_id_strategy="index",
        device_list_strategy="cdi",
        pass_device_specs=True,
        health_ignore_xids=(13, 31),
        health_recovery_seconds=300,
        metrics_addr=":9400",
    )
    ds = daemonset(dep)
    assert container(ds)["command"] == ["python", "-m", "gpunode.plugin", "serve"]
    assert container(ds)["image"] == dep.image
    assert env(ds) == {
        "GPUNODE_KUBELET_DIR": "/var/lib/kubelet/device-plugins",
        "GPUNODE_RESOURCE_NAME": "example.com/gpu",
        "GPUNODE_MIG_STRATEGY": "none",
        "GPUNODE_DEVICE_ID_STRATEGY": "index",
        "GPUNODE_DEVICE_LIST_STRATEGY": "cdi",
        "GPUNODE_PASS_DEVICE_SPECS": "true",
        "GPUNODE_FAIL_ON_INIT_ERROR": "true",
        "GPUNODE_HEALTH_CHECKS": "true",
        "GPUNODE_HEALTH_IGNORE_XIDS": "13,31",
        "GPUNODE_HEALTH_RECOVERY_SECONDS": "300",
        "GPUNODE_METRICS_ADDR": ":9400",
        "GPUNODE_NODE_NAME": "<spec.nodeName>",
        "GPUNODE_NODE_LABELS": "node",
        "LD_LIBRARY_PATH": "/usr/local/lib",
    }


def test_nvidia_plugin_gets_its_own_variable_names() -> None:
    ds = daemonset(deployment(plugin="nvidia", health_ignore_xids=(79,)))
    assert "command" not in container(ds)  # the image starts nvidia-device-plugin itself
    assert container(ds)["image"] == "nvcr.io/nvidia/k8s-device-plugin:v0.20.0"
    assert env(ds) == {
        "MIG_STRATEGY": "none",
        "FAIL_ON_INIT_ERROR": "true",
        "DEVICE_ID_STRATEGY": "uuid",
        "DEVICE_LIST_STRATEGY": "envvar",
        "PASS_DEVICE_SPECS": "false",
        "DP_DISABLE_HEALTHCHECKS": "79",
        "LD_LIBRARY_PATH": "/usr/local/lib",
    }
    assert env(daemonset(deployment(plugin="nvidia", health_checks=False)))["DP_DISABLE_HEALTHCHECKS"] == "all"


@pytest.mark.parametrize("plugin,name", [("bundled", "GPUNODE_FAIL_ON_INIT_ERROR"), ("nvidia", "FAIL_ON_INIT_ERROR")])
def test_fail_on_init_error_is_on_by_default_and_can_be_turned_off(plugin: str, name: str) -> None:
    assert env(daemonset(deployment(plugin=plugin)))[name] == "true"
    assert env(daemonset(deployment(plugin=plugin, fail_on_init_error=False)))[name] == "false"


def test_default_images() -> None:
    from importlib.metadata import version

    assert deployment().image == f"ghcr.io/gpunode/gpunode:{version('gpunode')}"
    assert deployment(plugin="nvidia").image == "nvcr.io/nvidia/k8s-device-plugin:v0.20.0"
    assert deployment(image="registry.local:5000/team/plugin@sha256:" + "a" * 64).image.startswith("registry.local")


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides,words",
    [
        ({"lib_path": None}, "--lib-path"),
        ({"lib_path": "usr/lib/libnvidia-ml.so.535.261.03"}, "absolute"),
        ({"lib_path": "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"}, "symlink"),
        ({"lib_path": "/usr/lib/x86_64-linux-gnu"}, "directory"),
        ({"lib_path": "/usr/lib/../lib/libnvidia-ml.so.535.261.03"}, "contains '..'"),
        ({"lib_path": "/usr/lib/./libnvidia-ml.so.535.261.03"}, "normal form"),
        ({"lib_path": "/usr/lib64/libnvidia-ml.so.550.54.15"}, "550.54.15"),
        ({"driver_version": "latest", "mode": "runtime", "lib_path": None}, "driver version"),
        ({"image": "ghcr.io/gpunode/gpunode:1.0 --privileged"}, "image reference"),
        ({"image": "UPPER/case"}, "image reference"),
        ({"namespace": "Kube_System"}, "namespace"),
        ({"kubelet_root": "var/lib/kubelet"}, "absolute"),
        ({"mig_strategy": "all"}, "MIG strategy"),
        ({"plugin": "amd"}, "plugin"),
        ({"mode": "cdi"}, "mode"),
        ({"resource_name": "gpu"}, "resource name"),
        ({"resource_name": "example.com/gpu", "plugin": "nvidia"}, "names its resource itself"),
        ({"metrics_addr": "9400"}, "listen address"),
        ({"metrics_addr": ":9400", "plugin": "nvidia"}, "metrics"),
        ({"health_ignore_xids": (-1,)}, "XIDs"),
        ({"priority_class": "System Node Critical"}, "priority class"),
    ],
)
def test_bad_values_are_user_errors_that_name_the_fix(overrides: dict[str, Any], words: str) -> None:
    with pytest.raises(UserError) as caught:
        deployment(**overrides)
    assert words in str(caught.value)
    assert caught.value.fix


# --- YAML safety ------------------------------------------------------------------------------


HOSTILE = 'it\'s "quoted": #not-a-comment {{ not.jinja }} {% raw %} - [a, b] & *x !tag \\ \u2028 end'


def test_hostile_paths_round_trip_exactly() -> None:
    lib = f"/opt/{HOSTILE}/libnvidia-ml.so.535.261.03"
    root = f"/var/lib/{HOSTILE}: kubelet"
    ds = daemonset(deployment(lib_path=lib, kubelet_root=root))
    assert volumes(ds)["nvml-library"]["hostPath"]["path"] == lib
    assert volumes(ds)["device-plugins"]["hostPath"]["path"] == f"{root}/device-plugins"
    assert ds["metadata"]["annotations"]["gpunode.io/nvml-library"] == lib


@pytest.mark.parametrize("plugin", PLUGINS)
def test_every_template_slot_goes_through_the_yaml_filter(plugin: str) -> None:
    # Feed a hostile value with a newline into every string the templates print, bypassing
    # PluginDeployment's validation, and check the parsed YAML holds exactly those values.
    dep = deployment(
        plugin=plugin,
        mig_strategy="mixed",
        health_ignore_xids=(13,),
        **({"health_recovery_seconds": 5, "metrics_addr": ":1"} if plugin == "bundled" else {}),
    )
    hostile_line = HOSTILE + "\nsecond: line\n- item"
    for name in (
        "namespace",
        "image",
        "priority_class",
        "resource_name",
        "mig_strategy",
        "device_id_strategy",
        "lib_path",
        "image_pull_policy",
    ):
        object.__setattr__(dep, name, hostile_line + name)
    context = manifests._context(dep)
    context["labels"] = {hostile_line + "k": hostile_line + "v"}
    context["kubelet_host_dir"] = hostile_line + "kubelet"
    rendered = manifest_templates.render_template(manifests._TEMPLATE[plugin], context)
    ds = yaml.safe_load(rendered)
    assert ds["metadata"]["namespace"] == hostile_line + "namespace"
    assert ds["metadata"]["labels"] == {hostile_line + "k": hostile_line + "v"}
    assert container(ds)["image"] == hostile_line + "image"
    assert container(ds)["imagePullPolicy"] == hostile_line + "image_pull_policy"
    assert ds["spec"]["template"]["spec"]["priorityClassName"] == hostile_line + "priority_class"
    assert volumes(ds)["nvml-library"]["hostPath"]["path"] == hostile_line + "lib_path"
    assert volumes(ds)["device-plugins"]["hostPath"]["path"] == hostile_line + "kubelet"
    variables = env(ds)
    if plugin == "bundled":
        assert variables["GPUNODE_RESOURCE_NAME"] == hostile_line + "resource_name"
        assert variables["GPUNODE_MIG_STRATEGY"] == hostile_line + "mig_strategy"
        assert variables["GPUNODE_DEVICE_ID_STRATEGY"] == hostile_line + "device_id_strategy"
    else:
        assert variables["MIG_STRATEGY"] == hostile_line + "mig_strategy"
        assert variables["DEVICE_ID_STRATEGY"] == hostile_line + "device_id_strategy"


def test_a_value_printed_without_the_filter_is_refused() -> None:
    template = manifest_templates._environment().from_string("name: {{ value }}\n")
    with pytest.raises(TypeError, match="without the yaml filter"):
        template.render(value="x")
    assert (
        manifest_templates._environment().from_string("name: {{ value | yaml }}\n").render(value="a: b")
        == 'name: "a: b"\n'
    )


@pytest.mark.parametrize(
    "value",
    [
        "",
        "plain",
        "a: b",
        "# c",
        "'",
        '"',
        "\\",
        "\t",
        "\n",
        "\r\n",
        "{{x}}",
        "yes",
        "no",
        "on",
        "null",
        "~",
        "1e3",
        "0x10",
        "012",
        "- a",
        "? q",
        "| l",
        "> f",
        "@a",
        "`b",
        "%c",
        "!t",
        "*a",
        "&a",
        "\u0085",
        "\u2028",
        "\u2029",
        "\ufeff",
        "\x7f",
        "\x00",
        "é",
        "日本",
        "\U0001f600",
        True,
        False,
        0,
        7,
        None,
        ["a: b", "#"],
        {"k: v": "#x"},
    ],
)
def test_yaml_filter_round_trips(value: object) -> None:
    assert yaml.safe_load(f"key: {manifest_templates.yaml_value(value)}\n") == {"key": value}
