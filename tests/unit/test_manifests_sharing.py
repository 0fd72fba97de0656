"""`gpunode render` with device plugin configs: the ConfigMap of named configs, the account
that reads the node label, and DaemonSets that mount them, for both plugins; strictly valid
Kubernetes; a config the plugin would refuse is refused at render time, with key and line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from gpunode.bootstrap.core.kube.plugin_config import (
    PluginConfigs,
    expected_allocatable,
    named_config,
    sharing_config,
    sharing_config_text,
)
from gpunode.plugin.nvidia_config import parse_config_text

LIB = "/usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.535.261.03"
OWN = """\
version: v1
flags:
  migStrategy: none
sharing:
  timeSlicing:
    renameByDefault: true
    failRequestsGreaterThanOne: true
    resources:
    - name: nvidia.com/gpu
      replicas: 8
"""


def render(*args: str) -> tuple[int, list[dict[str, Any]], str]:
    """The installed command as a user runs it (exit codes and stderr included)."""
    result = subprocess.run(
        [sys.executable, "-m", "gpunode.bootstrap.cli.main", "render", "--lib-path", LIB, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    docs = [d for d in yaml.safe_load_all(result.stdout) if d] if result.returncode == 0 else []
    return result.returncode, docs, result.stderr


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The first object of a kind; for DaemonSets, the device plugin's (not the MPS daemon's)."""
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] != "gpunode-mps-control-daemon")


def container(daemonset: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in daemonset["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def env(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


@pytest.mark.parametrize("plugin", ["bundled", "nvidia"])
def test_sharing_shortcut_renders_the_configmap_and_mounts_it(plugin: str) -> None:
    code, docs, err = render("--plugin", plugin, "--sharing", "time-slicing", "--replicas", "4")
    assert code == 0, err
    kinds = [d["kind"] for d in docs]
    # The objects the DaemonSet needs come before it (other roles, e.g. the node labeller's, may join).
    assert kinds[0] == "RuntimeClass" and kinds[-1] == "DaemonSet" and kinds.count("DaemonSet") == 1
    assert {"ConfigMap", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"} <= set(kinds)
    if plugin == "bundled":
        labeller = next(d for d in docs if d["metadata"]["name"] == "gpunode-device-plugin-node-labeller")
        assert labeller["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]}]
    configmap = by_kind(docs, "ConfigMap")
    assert list(configmap["data"]) == ["time-slicing-4"]
    # The config in the ConfigMap is NVIDIA's example, read back by the plugin's own parser.
    parsed = parse_config_text(configmap["data"]["time-slicing-4"], "cm")
    assert (parsed.sharing.strategy, parsed.sharing.replicas_of("nvidia.com/gpu")) == ("time-slicing", 4)
    daemonset = by_kind(docs, "DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == by_kind(docs, "ServiceAccount")["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is True
    volume = next(v for v in pod["volumes"] if "configMap" in v)
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    binding = next(d for d in docs if d["metadata"]["name"] == "gpunode-device-plugin-node-reader-kube-system")
    assert binding["subjects"][0]["name"] == pod["serviceAccountName"]
    reader = next(d for d in docs if d["metadata"]["name"] == "gpunode-device-plugin-node-reader")
    assert reader["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}]
    if plugin == "bundled":
        variables = env(container(daemonset, "gpunode-device-plugin"))
        assert variables["GPUNODE_CONFIG_DIR"] == "/available-configs"
        assert variables["GPUNODE_DEFAULT_CONFIG"] == "time-slicing-4"
        assert variables["GPUNODE_NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
        # The configs decide these; an environment variable would override them.
        assert "GPUNODE_MIG_STRATEGY" not in variables and "GPUNODE_FAIL_ON_INIT_ERROR" not in variables
    else:
        assert pod["shareProcessNamespace"] is True
        assert env(container(daemonset, "nvidia-device-plugin"))["CONFIG_FILE"] == "/config/config.yaml"
        assert "MIG_STRATEGY" not in env(container(daemonset, "nvidia-device-plugin"))
        sidecar = env(container(daemonset, "nvidia-device-plugin-sidecar"))
        init = env(pod["initContainers"][0])
        assert (init["ONESHOT"], sidecar["ONESHOT"], sidecar["SEND_SIGNAL"]) == ("true", "false", "true")
        assert sidecar["NODE_LABEL"] == "nvidia.com/device-plugin.config"
        assert sidecar["DEFAULT_CONFIG"] == "time-slicing-4"
    for obj in docs:
        kubernetes_validate.validate(obj, latest_version(), strict=True)


def test_named_config_files_first_is_default_and_mps_mounts_its_root(tmp_path: Path) -> None:
    own = tmp_path / "big-shared.yaml"
    own.write_text(OWN)
    code, docs, err = render(
        "--plugin-config", str(own), "--plugin-config", f"plain={own}", "--sharing", "mps", "--replicas", "2"
    )
    assert code == 0, err
    configmap = by_kind(docs, "ConfigMap")
    assert list(configmap["data"]) == ["mps-2", "big-shared", "plain"]
    assert configmap["data"]["big-shared"] == OWN  # byte for byte, as given
    daemonset = by_kind(docs, "DaemonSet")
    assert env(container(daemonset, "gpunode-device-plugin"))["GPUNODE_DEFAULT_CONFIG"] == "mps-2"
    volumes = {v["name"]: v for v in daemonset["spec"]["template"]["spec"]["volumes"]}
    assert volumes["mps-root"]["hostPath"]["path"] == "/run/nvidia/mps"
    assert volumes["mps-shm"]["hostPath"]["path"] == "/run/nvidia/mps/shm"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "version: v1\nsharing:\n  timeSlicing:\n    resources:\n    - name: nvidia.com/gpu\n      replica: 4\n",
            "line 6: sharing.timeSlicing.resources[0].replica: is not a key of NVIDIA's config v1",
        ),
        (
            "version: v1\nsharing:\n  mps:\n    resources:\n    - name: nvidia.com/gpu\n      replicas: 4\n",
            "sets no flags.mpsRoot",
        ),
        ("version: v1\nflags: [\n", "not valid YAML"),
    ],
)
def test_a_config_the_plugin_would_refuse_is_refused_at_render(tmp_path: Path, text: str, expected: str) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(text)
    code, docs, err = render("--plugin-config", str(config))
    assert code == 2 and not docs
    assert expected in err and str(config) in err


def test_sharing_needs_replicas_and_replicas_need_two() -> None:
    code, _, err = render("--sharing", "time-slicing")
    assert code == 2 and "--sharing and --replicas go together" in err
    code, _, err = render("--sharing", "time-slicing", "--replicas", "1")
    assert code == 2 and "--replicas" in err


def test_expected_allocatable_is_gpus_times_replicas_under_the_advertised_name() -> None:
    assert expected_allocatable(None, 4) == {"nvidia.com/gpu": 4}
    assert expected_allocatable(sharing_config("time-slicing", 4).parsed, 4) == {"nvidia.com/gpu": 16}
    assert expected_allocatable(named_config("own", OWN, "own").parsed, 2) == {"nvidia.com/gpu.shared": 16}
    partial = named_config(
        "p",
        "sharing:\n  timeSlicing:\n    resources:\n    - {name: gpu, replicas: 3, devices: 1, rename: small}\n",
        "p",
    )
    assert expected_allocatable(partial.parsed, 4) == {"nvidia.com/small": 3, "nvidia.com/gpu": 3}


def test_two_configs_of_one_name_are_refused() -> None:
    from gpunode.bootstrap.errors import UserError

    one = sharing_config("time-slicing", 2)
    with pytest.raises(UserError, match="named alike"):
        PluginConfigs((one, one), default=one.name)
    assert sharing_config_text("time-slicing", 2).startswith("version: v1\n")


@pytest.mark.parametrize("plugin", ["bundled", "nvidia"])
def test_mps_renders_nvidias_control_daemon_beside_either_plugin(plugin: str) -> None:
    code, docs, err = render("--plugin", plugin, "--sharing", "mps", "--replicas", "4")
    assert code == 0, err
    daemonsets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "DaemonSet"}
    mps = daemonsets.pop("gpunode-mps-control-daemon")
    pod = mps["spec"]["template"]["spec"]
    daemon = container(mps, "mps-control-daemon-ctr")
    assert daemon["command"] == ["mps-control-daemon"] and daemon["image"].startswith(
        "nvcr.io/nvidia/k8s-device-plugin:"
    )
    assert env(daemon)["CONFIG_FILE"] == "/config/config.yaml"
    assert pod["runtimeClassName"] == "nvidia" and pod["hostPID"] is True
    assert env(container(mps, "mps-control-daemon-sidecar"))["PROCESS_TO_SIGNAL"] == "/usr/bin/mps-control-daemon"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["mps-root"]["hostPath"]["path"] == "/run/nvidia/mps"
    (plugin_daemonset,) = daemonsets.values()
    plugin_volumes = {v["name"]: v for v in plugin_daemonset["spec"]["template"]["spec"]["volumes"]}
    # The plugin and the daemon meet in the same host directory.
    assert plugin_volumes["mps-root"]["hostPath"]["path"] == "/run/nvidia/mps"
    for obj in docs:
        kubernetes_validate.validate(obj, latest_version(), strict=True)
    # Without MPS, no daemon.
    _, docs, _ = render("--plugin", plugin, "--sharing", "time-slicing", "--replicas", "4")
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "DaemonSet"][0] != "gpunode-mps-control-daemon"
    assert sum(d["kind"] == "DaemonSet" for d in docs) == 1
