"""The few Kubernetes API calls the plugin makes, over the standard library (no client
library in the plugin's image): read its Node and watch it.

Credentials as client-go finds them: a kubeconfig named by KUBECONFIG (its current
context: server, certificate-authority[-data], token or tokenFile), else the pod's service
account (KUBERNETES_SERVICE_HOST/PORT, the token and ca.crt under
/var/run/secrets/kubernetes.io/serviceaccount). The token file is read again for every
request: the kubelet rotates projected tokens.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gpunode.plugin.config import ConfigError

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
REQUEST_TIMEOUT_SECONDS = 10.0


class KubeApiError(OSError):
    """The API server could not be reached or said no."""


@dataclass(frozen=True)
class KubeCredentials:
    server: str  # https://host:port
    ca_pem: bytes | None
    token: str | None = None
    token_file: Path | None = None

    def bearer(self) -> str | None:
        if self.token_file is not None:
            try:
                return self.token_file.read_text().strip()
            except OSError as exc:
                raise KubeApiError(f"cannot read the service account token {self.token_file}: {exc}") from exc
        return self.token


def _from_kubeconfig(path: Path) -> KubeCredentials:
    try:
        doc = yaml.safe_load(path.read_text()) or {}
        context_name = doc["current-context"]
        context = next(c["context"] for c in doc["contexts"] if c["name"] == context_name)
        cluster = next(c["cluster"] for c in doc["clusters"] if c["name"] == context["cluster"])
        user: dict[str, Any] = next((u["user"] for u in doc.get("users", []) if u["name"] == context.get("user")), {})
    except (OSError, yaml.YAMLError, KeyError, StopIteration, TypeError) as exc:
        raise ConfigError(
            f"kubeconfig {path} has no usable current context ({exc}). Fix: point KUBECONFIG at a working kubeconfig"
        ) from exc
    ca: bytes | None = None
    if "certificate-authority-data" in cluster:
        ca = base64.b64decode(cluster["certificate-authority-data"])
    elif "certificate-authority" in cluster:
        ca = Path(cluster["certificate-authority"]).read_bytes()
    if "client-certificate" in user or "client-certificate-data" in user:
        raise ConfigError(
            f"kubeconfig {path}: client certificates are not supported by the plugin. "
            "Fix: use a token (the pod's service account does)"
        )
    token_file = Path(user["tokenFile"]) if "tokenFile" in user else None
    return KubeCredentials(server=str(cluster["server"]), ca_pem=ca, token=user.get("token"), token_file=token_file)


def find_credentials(service_account_dir: Path = SERVICE_ACCOUNT_DIR) -> KubeCredentials:
    """KUBECONFIG's current context, else the pod's service account; ConfigError if neither."""
    kubeconfig = os.environ.get("KUBECONFIG")
    if kubeconfig:
        return _from_kubeconfig(Path(kubeconfig.split(os.pathsep)[0]))
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    token = service_account_dir / "token"
    if not host or not port or not token.exists():
        raise ConfigError(
            "per-node config needs the Kubernetes API (to read the node's label), but the plugin has no "
            "service account token and no KUBECONFIG. Fix: run the DaemonSet with a service account that may "
            "get and watch nodes (automountServiceAccountToken: true), or set KUBECONFIG"
        )
    ca_file = service_account_dir / "ca.crt"
    ca = ca_file.read_bytes() if ca_file.exists() else None
    bracketed = f"[{host}]" if ":" in host else host
    return KubeCredentials(server=f"https://{bracketed}:{port}", ca_pem=ca, token_file=token)


class KubeClient:
    def __init__(self, credentials: KubeCredentials) -> None:
        self._credentials = credentials
        url = urllib.parse.urlsplit(credentials.server)
        self._host = url.hostname or "localhost"
        self._port = url.port or 443
        self._tls = ssl.create_default_context()
        if credentials.ca_pem is not None:
            self._tls = ssl.create_default_context(cadata=credentials.ca_pem.decode())

    def _connect(self, timeout: float | None) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self._host, self._port, context=self._tls, timeout=timeout)

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "gpunode-device-plugin"}
        token = self._credentials.bearer()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def get_node(self, name: str) -> dict[str, Any]:
        connection = self._connect(REQUEST_TIMEOUT_SECONDS)
        try:
            connection.request("GET", f"/api/v1/nodes/{urllib.parse.quote(name)}", headers=self._headers())
            response = connection.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise KubeApiError(f"GET node {name}: {exc}") from exc
        finally:
            connection.close()
        if response.status != 200:
            raise KubeApiError(f"GET node {name}: HTTP {response.status} {body[:200]!r}")
        node: dict[str, Any] = json.loads(body)
        return node

    def watch_node(self, name: str, resource_version: str, timeout_seconds: int = 300) -> Iterator[dict[str, Any]]:
        """The node's watch events from `resource_version` on, until the server ends the
        stream (after timeout_seconds) or the connection fails (KubeApiError)."""
        query = urllib.parse.urlencode(
            {
                "fieldSelector": f"metadata.name={name}",
                "watch": "true",
                "resourceVersion": resource_version,
                "timeoutSeconds": str(timeout_seconds),
            }
        )
        connection = self._connect(timeout_seconds + REQUEST_TIMEOUT_SECONDS)
        try:
            connection.request("GET", f"/api/v1/nodes?{query}", headers=self._headers())
            response = connection.getresponse()
            if response.status != 200:
                raise KubeApiError(f"watch node {name}: HTTP {response.status} {response.read()[:200]!r}")
            while True:
                line = response.readline()
                if not line:
                    return
                if line.strip():
                    event: dict[str, Any] = json.loads(line)
                    yield event
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if isinstance(exc, KubeApiError):
                raise
            raise KubeApiError(f"watch node {name}: {exc}") from exc
        finally:
            connection.close()
