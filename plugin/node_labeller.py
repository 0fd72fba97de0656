"""Keeps the node's GPU feature labels (feature_labels.py) current while the plugin runs.

Two ways, chosen at start:
- NFD runs on the node (its local feature directory exists): write NFD's feature file
  there (atomically); NFD's worker labels the node and removes what the file stops saying.
- otherwise: patch this plugin's own Node through the API server, with the credentials
  kube_client finds as client-go does (KUBECONFIG, else the pod's service account), which
  need only `get` and `patch` on nodes. The client can only address its own node
  (the name is fixed at start), and every key it writes or removes is checked against the
  closed list of keys it owns; labels it set before and no longer wants are removed (the
  list is kept in the gpunode.io/feature-labels annotation, as NFD keeps its own).

A refusal (401/403: RBAC not granted, token not mounted) is logged once with the grant
that fixes it; devices are served regardless, and the labeller tries again every
interval. The labels are recomputed every interval too, so a GPU that fell off the bus
stops being counted, and a label someone removed comes back.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpunode.plugin.feature_labels import nfd_features_file, node_patch
from gpunode.plugin.kube_client import KubeApiError as KubeUnreachable
from gpunode.plugin.kube_client import KubeCredentials
from gpunode.plugin.log import log_event

NFD_FEATURES_DIR = Path("/etc/kubernetes/node-feature-discovery/features.d")
NFD_FILE_NAME = "gpunode"
DEFAULT_INTERVAL_SECONDS = 60.0
RBAC_FIX = (
    "grant the plugin's service account a ClusterRole with rules [{apiGroups: [''], resources: [nodes], "
    "verbs: [get, patch]}] (gpunode render includes it), or turn node labels off with --node-labels off"
)


class KubeApiError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason


class OwnNodeClient:
    """GET and JSON merge PATCH of one Node, the plugin's own, over HTTPS with a bearer token."""

    def __init__(self, node_name: str, credentials: KubeCredentials) -> None:
        if not node_name:
            raise ValueError("the node name is needed to label the node (GPUNODE_NODE_NAME from spec.nodeName)")
        # The one path this client can address: its own node's.
        self._path = "/api/v1/nodes/" + urllib.parse.quote(node_name, safe="")
        self._credentials = credentials
        url = urllib.parse.urlsplit(credentials.server)
        self._host, self._port = url.hostname or "localhost", url.port or 443
        cadata = credentials.ca_pem.decode() if credentials.ca_pem is not None else None
        self._context = ssl.create_default_context(cadata=cadata)

    def _request(self, method: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        # bearer() reads a token file again at every request: bound tokens are rotated.
        headers = {"Accept": "application/json", "User-Agent": "gpunode-device-plugin"}
        token = self._credentials.bearer()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/merge-patch+json"
        conn = http.client.HTTPSConnection(self._host, self._port, context=self._context, timeout=10)
        try:
            conn.request(method, self._path + ("?fieldManager=gpunode-plugin" if body else ""), data, headers)
            response = conn.getresponse()
            payload = response.read()
        finally:
            conn.close()
        parsed: dict[str, Any] = json.loads(payload or b"{}")
        if response.status >= 400:
            raise KubeApiError(
                response.status, str(parsed.get("reason", response.reason)), str(parsed.get("message", ""))
            )
        return parsed

    def get(self) -> dict[str, Any]:
        return self._request("GET")

    def patch(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._request("PATCH", body)


class NodeLabeller(threading.Thread):
    """Applies `wanted()` every interval (and once at once), by NFD file or Node patch."""

    def __init__(
        self,
        wanted: Callable[[], dict[str, str]],
        client: OwnNodeClient | None,
        nfd_dir: Path | None,
        interval: float = DEFAULT_INTERVAL_SECONDS,
    ) -> None:
        super().__init__(name="node-labels", daemon=True)
        self._wanted = wanted
        self._client = client
        self._nfd_dir = nfd_dir
        self._interval = interval
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._last_problem: str | None = None

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def wake(self) -> None:
        """Apply now (the config in force changed), not at the end of the interval."""
        self._wake.set()

    def run(self) -> None:
        while not self._stop.is_set():
            self.apply_once()
            self._wake.wait(self._interval)
            self._wake.clear()

    def _problem(self, problem: str | None, **fields: object) -> None:
        if problem != self._last_problem:
            if problem is not None:
                log_event("node_labels", state=problem, **fields)
            elif self._last_problem is not None:
                log_event("node_labels", state="recovered")
            self._last_problem = problem

    def apply_once(self) -> None:
        try:
            wanted = self._wanted()
        except Exception as exc:  # an NVML hiccup: keep the labels as they are, try next time
            self._problem("not_computed", error=str(exc))
            return
        if self._nfd_dir is not None:
            self._write_nfd(wanted)
        elif self._client is not None:
            self._patch(wanted)

    def _write_nfd(self, wanted: dict[str, str]) -> None:
        assert self._nfd_dir is not None
        target = self._nfd_dir / NFD_FILE_NAME
        text = nfd_features_file(wanted)
        try:
            if target.is_file() and target.read_text() == text:
                return
            tmp = target.with_name(f".{NFD_FILE_NAME}.tmp")
            tmp.write_text(text)
            tmp.replace(target)
        except OSError as exc:
            self._problem("nfd_file_unwritable", path=target, error=exc.strerror or str(exc))
            return
        self._problem(None)
        log_event("node_labels", via="nfd", path=target, labels=len(wanted))

    def _patch(self, wanted: dict[str, str]) -> None:
        assert self._client is not None
        try:
            node = self._client.get()
            metadata = node.get("metadata", {})
            body = node_patch(metadata.get("labels") or {}, metadata.get("annotations") or {}, wanted)
            if body is None:
                self._problem(None)
                return
            self._client.patch(body)
        except KubeApiError as exc:
            if exc.status in (401, 403):
                self._problem("forbidden", status=exc.status, error=str(exc), fix=RBAC_FIX)
            else:
                self._problem("api_error", status=exc.status, error=str(exc))
            return
        except (KubeUnreachable, OSError, ValueError, http.client.HTTPException) as exc:
            self._problem("api_unreachable", error=str(exc))
            return
        self._problem(None)
        metadata = body["metadata"]
        changed: dict[str, str | None] = metadata.get("labels", {}) if isinstance(metadata, dict) else {}
        log_event(
            "node_labels",
            via="node",
            set=",".join(sorted(k for k, v in changed.items() if v is not None)) or None,
            removed=",".join(sorted(k for k, v in changed.items() if v is None)) or None,
        )
