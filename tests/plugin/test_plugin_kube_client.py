"""The plugin's Kubernetes API client, as a pod uses it: the service account's token and CA
with KUBERNETES_SERVICE_HOST/PORT (no KUBECONFIG), against the API stand-in over HTTPS; a
rotated token is read again; a missing account is a ConfigError naming the fix."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from standins.kube_api import KubeApiStandIn

from gpunode.plugin.config import ConfigError
from gpunode.plugin.kube_client import KubeApiError, KubeClient, find_credentials


@pytest.fixture
def api(tmp_path: Path) -> Iterator[KubeApiStandIn]:
    with KubeApiStandIn(workdir=tmp_path / "api") as standin:
        yield standin


def service_account(api: KubeApiStandIn, directory: Path, token: str) -> Path:
    kubeconfig = yaml.safe_load(api.kubeconfig_path.read_text())
    directory.mkdir()
    (directory / "ca.crt").write_bytes(
        base64.b64decode(kubeconfig["clusters"][0]["cluster"]["certificate-authority-data"])
    )
    (directory / "token").write_text(token + "\n")
    return directory


def test_in_cluster_credentials_read_the_node_and_follow_a_rotated_token(
    api: KubeApiStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.add_node("gpu-1", labels={"nvidia.com/device-plugin.config": "ts-4"})
    accounts = service_account(api, tmp_path / "sa", "not-the-token")
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", api.bind_host)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(api.port))
    client = KubeClient(find_credentials(accounts))
    with pytest.raises(KubeApiError, match="HTTP 401"):
        client.get_node("gpu-1")
    (accounts / "token").write_text(api.token)  # the kubelet rotated the projected token
    node = client.get_node("gpu-1")
    assert node["metadata"]["labels"]["nvidia.com/device-plugin.config"] == "ts-4"
    version = node["metadata"]["resourceVersion"]
    api.patch("Node", "gpu-1", {"metadata": {"labels": {"nvidia.com/device-plugin.config": "ts-8"}}})
    event = next(client.watch_node("gpu-1", version, timeout_seconds=5))
    assert event["type"] == "MODIFIED"
    assert event["object"]["metadata"]["labels"]["nvidia.com/device-plugin.config"] == "ts-8"


def test_no_kubeconfig_and_no_service_account_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConfigError, match="automountServiceAccountToken: true"):
        find_credentials(tmp_path / "none")
