"""The pod-to-`ctr run` translation the image tests rely on: it gives what the kubelet gives
(configMap files, hostPath checks, ports on the host network, memory limit) and refuses
what it cannot give, so a manifest that grows a feature fails the image test loudly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from standins.pod_translation import TranslationError, memory_bytes, translate


def spec(**container: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"name": "p", "image": "example/plugin:1", "command": ["python", "-m", "x"]}
    base.update(container)
    return {"containers": [base], "volumes": []}


def test_configmap_volume_becomes_read_only_files_and_ports_need_host_network(tmp_path: Path) -> None:
    pod = spec(
        volumeMounts=[{"name": "config", "mountPath": "/etc/plugin"}],
        ports=[{"name": "metrics", "containerPort": 9400}],
        env=[{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
        resources={"limits": {"memory": "256Mi"}},
    )
    pod["hostNetwork"] = True
    pod["volumes"] = [
        {"name": "config", "configMap": {"name": "plugin-config", "items": [{"key": "any", "path": "config.yaml"}]}}
    ]
    result = translate(pod, tmp_path, config_maps={"plugin-config": {"any": "version: v1\n"}}, node_name="gpu01")
    (source, target, read_only) = result.mounts[0]
    assert (Path(source) / "config.yaml").read_text() == "version: v1\n" and target == "/etc/plugin" and read_only
    assert f"type=bind,src={source},dst=/etc/plugin,options=rbind:ro" in result.flags
    assert "--net-host" in result.flags and result.ports == [(9400, "TCP")]
    assert result.env == {"NODE_NAME": "gpu01"}
    assert result.memory_limit == 256 * 1024 * 1024 == memory_bytes("256Mi")
    with pytest.raises(TranslationError, match="configmap 'plugin-config' not found"):
        translate(pod, tmp_path)


def test_host_path_types_are_checked_as_the_kubelet_does(tmp_path: Path) -> None:
    real = tmp_path / "libnvidia-ml.so.535.261.03"
    real.write_bytes(b"\x7fELF")
    link = tmp_path / "libnvidia-ml.so.1"
    link.symlink_to(real.name)
    for path, kind, ok in (
        (real, "File", True),
        (link, "File", True),
        (tmp_path, "File", False),
        (tmp_path / "no", "File", False),
    ):
        pod = spec(volumeMounts=[{"name": "lib", "mountPath": "/usr/local/lib/libnvidia-ml.so.1"}])
        pod["volumes"] = [{"name": "lib", "hostPath": {"path": str(path), "type": kind}}]
        if ok:
            translate(pod, tmp_path)
        else:
            with pytest.raises(TranslationError, match="FailedMount"):
                translate(pod, tmp_path)


@pytest.mark.parametrize(
    "change, words",
    [
        ({"securityContext": {"capabilities": {"drop": ["ALL"]}}}, "capabilities.drop"),
        ({"securityContext": {"runAsUser": 1000}}, "runAsUser"),
        ({"lifecycle": {"preStop": {}}}, "lifecycle"),
        ({"ports": [{"containerPort": 9400, "hostPort": 9400}]}, "hostPort"),
        ({"envFrom": [{"configMapRef": {"name": "x"}}]}, "envFrom"),
    ],
)
def test_what_cannot_be_given_is_refused(tmp_path: Path, change: dict[str, Any], words: str) -> None:
    with pytest.raises(TranslationError, match=words):
        translate(spec(**change), tmp_path)


def test_unknown_pod_fields_are_refused(tmp_path: Path) -> None:
    pod = spec()
    pod["hostPID"] = True
    with pytest.raises(TranslationError, match="hostPID"):
        translate(pod, tmp_path)
