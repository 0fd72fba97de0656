"""The DaemonSet `gpunode render --sharing` writes, run as its pod would run: the container's
own command and environment, the ConfigMap's data as the mounted directory, the node's name
where the downward API puts it, against the kubelet and Kubernetes API stand-ins. Only the
paths of mounts are moved under the test's directory; the API is reached through KUBECONFIG
instead of the pod's service account. (A real container: tests/plugin/test_plugin_image.py.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from plugin_harness import GPU, PluginHarness, fake_nvml_lib, harness, short_dir  # noqa: F401 (fixtures)
from standins.fake_nvml import FakeNvmlConfig
from standins.kube_api import KubeApiStandIn

from gpunode.bootstrap.core.kube.manifests import manifest_objects
from gpunode.bootstrap.core.kube.plugin_config import PluginConfigs, sharing_config
from gpunode.bootstrap.core.kube.plugin_deployment import PluginDeployment

NODE = "gpu-node-7"


@pytest.fixture
def api(short_dir: Path) -> Iterator[KubeApiStandIn]:
    with KubeApiStandIn(workdir=short_dir / "api") as standin:
        yield standin


def rendered() -> tuple[dict[str, Any], dict[str, Any]]:
    configs = PluginConfigs((sharing_config("time-slicing", 4), sharing_config("time-slicing", 2)), "time-slicing-4")
    objects = manifest_objects(
        PluginDeployment(driver_version="535.261.03", lib_path=None, mode="runtime", plugin_configs=configs)
    )
    configmap = next(o for o in objects if o["kind"] == "ConfigMap")
    daemonset = next(o for o in objects if o["kind"] == "DaemonSet")
    return configmap, daemonset


def test_the_rendered_bundled_daemonset_runs_the_plugin_on_its_configs(
    harness: PluginHarness, api: KubeApiStandIn
) -> None:
    harness.configure(FakeNvmlConfig.uniform(2))
    configmap, daemonset = rendered()
    pod = daemonset["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["plugin-configs"]["configMap"]["name"] == configmap["metadata"]["name"]
    # The ConfigMap as the kubelet mounts it: one file per key.
    configs_dir = harness.root / "available-configs"
    configs_dir.mkdir()
    for name, text in configmap["data"].items():
        (configs_dir / name).write_text(text)
    moved = {mounts["plugin-configs"]: str(configs_dir), mounts["device-plugins"]: str(harness.kubelet_dir)}
    env: dict[str, str] = {"KUBECONFIG": str(api.kubeconfig_path)}
    for item in container["env"]:
        if "valueFrom" in item:
            assert item["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}, item
            env[item["name"]] = NODE
        else:
            env[item["name"]] = moved.get(item["value"], item["value"])
    assert container["command"][:2] == ["python", "-m"]  # run with this test's interpreter
    api.add_node(NODE, labels={"nvidia.com/device-plugin.config": "time-slicing-2"})

    process = harness.start(env=env, kubelet_dir=False, command=tuple(container["command"][1:]))
    harness.kubelet.wait_registered(GPU, timeout=15)
    assert len(harness.kubelet.devices(GPU)) == 4, process.log()
    # The label moves the node to the other config, in the same process.
    api.patch("Node", NODE, {"metadata": {"labels": {"nvidia.com/device-plugin.config": "time-slicing-4"}}})
    harness.kubelet.wait_devices(GPU, lambda ds: len(ds) == 8, timeout=5)
    assert process.proc.poll() is None
