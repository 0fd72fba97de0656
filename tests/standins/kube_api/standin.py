"""KubeApiStandIn: a Kubernetes API server for tests, that the real kubectl talks to.

    with KubeApiStandIn() as api:
        api.add_node("gpu-1", labels={"nvidia.com/gpu.present": "true"})
        subprocess.run(["kubectl", "--kubeconfig", str(api.kubeconfig_path), "get", "nodes"])

Writes made here (add_node, create, set_pod_phase...) go through the same admission,
controllers and watch streams as kubectl's, so a `kubectl wait` running meanwhile sees them.

What it serves is what gpunode sends (`kubectl get -o json` with label and field
selectors, `api-resources`, `apply --server-side`, `patch --type=merge`, `create -f -`,
`create --raw` for evictions, `delete`, `logs --tail/--previous`) and the plugin's node
GET, PATCH and watch. Kept beyond that, each for a reason:

- strategic merge patch: `kubectl cordon`, which the rollout tests run as an operator
  would, sends one;
- watch streams on every list: the plugin watches its node, and the tests wait with
  `kubectl wait` and `rollout status` instead of polling;
- the controllers (DaemonSet, scheduler, disruption, garbage collection) and admission
  defaults: what gpunode reads back (DaemonSet status, events, pods bound or Pending,
  PodDisruptionBudgets) only exists because a real cluster's controllers write it;
- OpenAPI v3 documents and discovery: kubectl refuses to apply without them;
- `events.k8s.io/v1`: kubectl describe reads events through it.

Not served, since nothing here sends them: server-side Table printing (`kubectl get`
without `-o` shows kubectl's own NAME/AGE columns), JSON patch (`--type=json`, answered
415) and protobuf bodies (`kubectl create namespace|serviceaccount`, `auth can-i`).
"""

from __future__ import annotations

import builtins
import contextlib
import copy
import json
import os
import queue
import shutil
import ssl
import subprocess
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from . import disruption, errors
from .certs import tls_material
from .controllers import Controllers
from .kubectl import kubectl_binary
from .selectors import parse_field_selector, parse_label_selector
from .server import HttpsListener, RequestRecord, fault_matches
from .store import APPLY_PATCH, MERGE_PATCH, ListOptions, Store, now_rfc3339

JSON = dict[str, Any]
PodCallback = Callable[[JSON], object]  # the return value is ignored

SERVER_VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.3",
    "gitCommit": "32cc146f75aad04beaaa245a7157eb35063a9f99",
    "gitTreeState": "clean",
    "buildDate": "2025-03-11T19:52:21Z",
    "goVersion": "go1.23.6",
    "compiler": "gc",
    "platform": "linux/amd64",
}

FAULTS = ("unreachable", "drop", "error500", "hang", "unauthorized", "forbidden")

CLUSTER_POLICY_CRD: JSON = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "clusterpolicies.nvidia.com", "labels": {"app.kubernetes.io/component": "gpu-operator"}},
    "spec": {
        "group": "nvidia.com",
        "names": {
            "kind": "ClusterPolicy",
            "listKind": "ClusterPolicyList",
            "plural": "clusterpolicies",
            "singular": "clusterpolicy",
        },
        "scope": "Cluster",
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Status", "type": "string", "jsonPath": ".status.state"},
                    {"name": "Age", "type": "string", "jsonPath": ".metadata.creationTimestamp"},
                ],
            }
        ],
    },
}


class ApiRequest(NamedTuple):
    """What the brief's assertions need: (method, path, content type, field manager)."""

    method: str
    path: str
    content_type: str
    field_manager: str


class KubeApiStandIn:
    def __init__(
        self,
        workdir: Path | None = None,
        context_name: str = "gpunode-test",
        token: str | None = None,
        kubectl: Path | None = None,
        bind_host: str = "127.0.0.1",
        aggregated_discovery: bool = True,
    ) -> None:
        """`bind_host`: an IPv4 address of this machine to listen on (and put in the
        certificate and kubeconfig), for a kubectl running in a test host's network
        namespace. `aggregated_discovery=False` serves only the legacy discovery
        documents (kubectl then reads /apis/<group>/<version> one by one)."""
        self.bind_host = bind_host
        self.aggregated_discovery = aggregated_discovery
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="kube-api-"))
        self.context_name = context_name
        self.token = token or os.urandom(16).hex()
        self.kubeconfig_path = self.workdir / "kubeconfig"
        self.cache_dir = self.workdir / "kubectl-cache"
        self._kubectl = kubectl
        self.store = Store()
        self.controllers = Controllers(self.store)
        self.store.controllers.append(lambda: disruption.sync_budgets(self.store))
        self.store.after_write.append(self._after_write)
        self._request_log: list[RequestRecord] = []
        self._log_lock = threading.Lock()
        self._fault: tuple[str, str | None] | None = None
        self._fault_cleared = threading.Event()
        self._fault_cleared.set()
        self._stopping = threading.Event()
        self._connections: set[ssl.SSLSocket] = set()
        self._created_callbacks: list[PodCallback] = []
        self._deleted_callbacks: list[PodCallback] = []
        self._hooks: queue.Queue[tuple[str, JSON] | None] = queue.Queue()
        self._hook_thread: threading.Thread | None = None
        self._hooks_busy = 0
        self._hooks_idle = threading.Condition()
        self.hook_errors: list[str] = []
        self._logs: dict[tuple[str, str, str, bool], str] = {}
        self._listener: HttpsListener | None = None
        self._node_counter = 0
        self._seed()

    # Lifecycle -------------------------------------------------------------------------

    def start(self) -> KubeApiStandIn:
        material = tls_material((self.bind_host,))
        self.workdir.mkdir(parents=True, exist_ok=True)
        cert = self.workdir / "apiserver.crt"
        key = self.workdir / "apiserver.key"
        cert.write_bytes(material.server_cert_pem)
        key.write_bytes(material.server_key_pem)
        key.chmod(0o600)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        context.set_alpn_protocols(["http/1.1"])
        self._listener = HttpsListener(self, context)
        self._listener.start()
        self._hook_thread = threading.Thread(target=self._run_hooks, name="kube-api-hooks", daemon=True)
        self._hook_thread.start()
        self._write_kubeconfig(material.ca_pem)
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._fault_cleared.set()
        with self.store.cond:
            self.store.closed = True
            self.store.cond.notify_all()
        if self._listener is not None:
            self._listener.stop()
        for conn in list(self._connections):
            try:
                conn.shutdown(2)
            except OSError:
                pass
        self._hooks.put(None)
        if self._hook_thread is not None:
            self._hook_thread.join(timeout=5)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> KubeApiStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._listener is not None, "start() first"
        return self._listener.port

    @property
    def address(self) -> str:
        return f"{self.bind_host}:{self.port}"

    @property
    def url(self) -> str:
        return f"https://{self.address}"

    def version_info(self) -> JSON:
        return dict(SERVER_VERSION)

    def _write_kubeconfig(self, ca_pem: bytes) -> None:
        import base64

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "preferences": {},
            "clusters": [
                {
                    "name": "gpunode-test",
                    "cluster": {"server": self.url, "certificate-authority-data": base64.b64encode(ca_pem).decode()},
                }
            ],
            "users": [{"name": "gpunode-test-admin", "user": {"token": self.token}}],
            "contexts": [
                {"name": self.context_name, "context": {"cluster": "gpunode-test", "user": "gpunode-test-admin"}}
            ],
            "current-context": self.context_name,
        }
        tmp = self.kubeconfig_path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))
        tmp.chmod(0o600)
        tmp.replace(self.kubeconfig_path)

    def _seed(self) -> None:
        for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        self.create(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {
                    "name": "kubernetes",
                    "namespace": "default",
                    "labels": {"component": "apiserver", "provider": "kubernetes"},
                },
                "spec": {
                    "type": "ClusterIP",
                    "clusterIP": "10.96.0.1",
                    "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}],
                },
            }
        )
        for name, value in (("system-node-critical", 2000001000), ("system-cluster-critical", 2000000000)):
            self.create(
                {
                    "apiVersion": "scheduling.k8s.io/v1",
                    "kind": "PriorityClass",
                    "metadata": {"name": name},
                    "value": value,
                    "description": "Used for system critical pods that must not be moved from their current node.",
                }
            )

    # kubectl ---------------------------------------------------------------------------

    def kubectl_env(self) -> dict[str, str]:
        """Environment for a kubectl run: its discovery cache kept in this stand-in's dir."""
        env = dict(os.environ)
        env["KUBECACHEDIR"] = str(self.cache_dir)
        env.pop("KUBECONFIG", None)
        return env

    def kubectl(
        self, *args: str, stdin: str | None = None, timeout: float = 60, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl against this server (`--kubeconfig` is added)."""
        binary = self._kubectl or kubectl_binary()
        return subprocess.run(
            [str(binary), "--kubeconfig", str(self.kubeconfig_path), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.kubectl_env(),
            check=check,
        )

    # Requests and faults ---------------------------------------------------------------

    def _log_request(self, record: RequestRecord) -> None:
        with self._log_lock:
            self._request_log.append(record)

    @property
    def request_log(self) -> list[RequestRecord]:
        with self._log_lock:
            return list(self._request_log)

    @property
    def requests(self) -> list[ApiRequest]:
        return [ApiRequest(r.method, r.path, r.content_type, r.field_manager) for r in self.request_log]

    def clear_requests(self) -> None:
        with self._log_lock:
            self._request_log.clear()

    def set_fault(self, mode: str | None, path_pattern: str | None = None) -> None:
        """Make the server misbehave until set_fault(None).

        "unreachable": the port is closed (kubectl: connection refused);
        "drop": connections are accepted and closed without an answer (EOF);
        "error500": every request gets 500 InternalError;
        "hang": requests are never answered (kubectl needs --request-timeout);
        "unauthorized": 401 for everything;
        "forbidden": 403 from RBAC, as the API server words it, for a user without the right.
        `path_pattern` (a regex searched in the request path) limits the fault to matching
        requests (not for "unreachable").
        """
        if mode is not None and mode not in FAULTS:
            raise ValueError(f"unknown fault {mode!r}; one of {FAULTS}")
        listener = self._listener
        previous = self._fault
        self._fault = (mode, path_pattern) if mode else None
        if mode == "hang":
            self._fault_cleared.clear()
        else:
            self._fault_cleared.set()
        if listener is not None:
            if mode == "unreachable":
                listener.close()
            elif previous and previous[0] == "unreachable":
                listener.open()

    @contextlib.contextmanager
    def fault(self, mode: str, path_pattern: str | None = None) -> Iterator[None]:
        self.set_fault(mode, path_pattern)
        try:
            yield
        finally:
            self.set_fault(None)

    def _fault_for(self, path: str) -> str | None:
        fault = self._fault
        if fault is None or not fault_matches(fault[1], path):
            return None
        return fault[0]

    def _wait_fault_cleared(self) -> None:
        while not self._fault_cleared.wait(0.2):
            if self._stopping.is_set():
                return

    # Pod lifecycle hooks ---------------------------------------------------------------

    def on_pod_created(self, callback: PodCallback) -> None:
        """Call `callback(pod)` when a pod is bound to a node (a kubelet would start it).

        Callbacks run in order on one thread of their own, never under the server's lock,
        so they may call back into this object (set_pod_phase, set_node_status...).
        """
        self._created_callbacks.append(callback)

    def on_pod_deleted(self, callback: PodCallback) -> None:
        """Call `callback(pod)` when a pod is deleted (by kubectl, its DaemonSet, a GC)."""
        self._deleted_callbacks.append(callback)

    def _after_write(self, rt: Any, kind: str, obj: JSON, old: JSON | None) -> None:
        if rt.kind != "Pod" or rt.group != "":
            return
        if kind == "DELETED":
            self._enqueue("deleted", obj)
            key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
            for log_key in [k for k in self._logs if k[:2] == key]:
                del self._logs[log_key]
            return
        node = (obj.get("spec") or {}).get("nodeName")
        if node and (old is None or not (old.get("spec") or {}).get("nodeName")):
            self._enqueue("created", obj)

    def _enqueue(self, kind: str, pod: JSON) -> None:
        with self._hooks_idle:
            self._hooks_busy += 1
        self._hooks.put((kind, copy.deepcopy(pod)))

    def _run_hooks(self) -> None:
        while True:
            item = self._hooks.get()
            if item is None:
                return
            kind, pod = item
            callbacks = self._created_callbacks if kind == "created" else self._deleted_callbacks
            for callback in list(callbacks):
                try:
                    callback(pod)
                except Exception:
                    self.hook_errors.append(traceback.format_exc())
            with self._hooks_idle:
                self._hooks_busy -= 1
                self._hooks_idle.notify_all()

    def wait_hooks_idle(self, timeout: float = 10) -> bool:
        """Wait until every queued pod hook has run."""
        with self._hooks_idle:
            return self._hooks_idle.wait_for(lambda: self._hooks_busy == 0, timeout)

    def set_pod_phase(
        self,
        namespace: str,
        name: str,
        phase: str,
        ready: bool = False,
        waiting_reason: str | None = None,
        message: str | None = None,
        restart_count: int | None = None,
        exit_code: int | None = None,
        container: str | None = None,
    ) -> JSON:
        """Report a pod's state as its kubelet would.

        set_pod_phase(ns, name, "Running", ready=True): running and Ready;
        set_pod_phase(ns, name, "Running", waiting_reason="CrashLoopBackOff",
                      restart_count=4, exit_code=1): crash looping;
        set_pod_phase(ns, name, "Pending", waiting_reason="ImagePullBackOff");
        set_pod_phase(ns, name, "Succeeded") / ("Failed", exit_code=2): finished.
        The kubelet's events (Started, BackOff, Failed) are recorded with it.
        """
        return self.controllers.set_pod_phase(
            namespace, name, phase, ready, waiting_reason, message, restart_count, exit_code, container
        )

    # Logs ------------------------------------------------------------------------------

    def set_pod_logs(
        self, namespace: str, name: str, text: str, container: str | None = None, previous: bool = False
    ) -> None:
        """What `kubectl logs` prints for the pod (its only or named container)."""
        with self.store.cond:
            self._logs[(namespace, name, container or "", previous)] = text
            self.store.cond.notify_all()

    def append_pod_logs(self, namespace: str, name: str, text: str, container: str | None = None) -> None:
        with self.store.cond:
            key = (namespace, name, container or "", False)
            self._logs[key] = self._logs.get(key, "") + text
            self.store.cond.notify_all()

    def _logs_of(self, namespace: str, name: str, container: str, previous: bool) -> str | None:
        with self.store.lock:
            for key in ((namespace, name, container, previous), (namespace, name, "", previous)):
                if key in self._logs:
                    return self._logs[key]
        return None

    # Objects ---------------------------------------------------------------------------

    def _type(self, kind: str) -> Any:
        with self.store.lock:
            return self.store.resolve(kind)

    def get(self, kind: str, name: str, namespace: str | None = None) -> JSON | None:
        rt = self._type(kind)
        try:
            return self.store.get(rt, _ns(rt, namespace), name)
        except errors.ApiError as err:
            if err.code == 404:
                return None
            raise

    def list(
        self,
        kind: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> builtins.list[JSON]:
        rt = self._type(kind)
        opts = ListOptions(
            namespace if rt.namespaced else None,
            parse_label_selector(label_selector),
            self.store.normalise_fields(rt, parse_field_selector(field_selector)),
        )
        items: builtins.list[JSON] = self.store.list(rt, opts)["items"]
        return items

    def _type_of(self, obj: JSON) -> Any:
        with self.store.lock:
            rt = self.store.type_by_kind(obj.get("apiVersion", ""), obj.get("kind", ""))
        if rt is None:
            raise KeyError(f"no such type served: {obj.get('apiVersion')} {obj.get('kind')}")
        return rt

    def create(self, obj: JSON, field_manager: str = "standin") -> JSON:
        rt = self._type_of(obj)
        namespace = _ns(rt, (obj.get("metadata") or {}).get("namespace"))
        return self.store.create(rt, namespace, obj, field_manager)

    def replace(self, obj: JSON, field_manager: str = "standin") -> JSON:
        rt = self._type_of(obj)
        meta = obj.get("metadata") or {}
        return self.store.replace(rt, _ns(rt, meta.get("namespace")), meta["name"], obj, field_manager)

    def apply(self, obj: JSON, field_manager: str, force: bool = False) -> JSON:
        """Server-side apply `obj` as `field_manager` (to play another manager in a test)."""
        rt = self._type_of(obj)
        meta = obj.get("metadata") or {}
        result, _ = self.store.patch(
            rt,
            _ns(rt, meta.get("namespace")),
            meta["name"],
            APPLY_PATCH,
            json.dumps(obj).encode(),
            field_manager,
            force=force,
        )
        return result

    def patch(
        self,
        kind: str,
        name: str,
        patch: JSON,
        namespace: str | None = None,
        subresource: str = "",
        field_manager: str = "standin",
    ) -> JSON:
        """JSON merge patch (subresource "status" to change status)."""
        rt = self._type(kind)
        result, _ = self.store.patch(
            rt,
            _ns(rt, namespace),
            name,
            MERGE_PATCH,
            json.dumps(patch).encode(),
            field_manager,
            subresource=subresource,
        )
        return result

    def delete(self, kind: str, name: str, namespace: str | None = None) -> bool:
        rt = self._type(kind)
        try:
            self.store.delete(rt, _ns(rt, namespace), name)
        except errors.ApiError as err:
            if err.code == 404:
                return False
            raise
        return True

    # Nodes -----------------------------------------------------------------------------

    def add_node(
        self,
        name: str,
        labels: dict[str, str] | None = None,
        taints: builtins.list[JSON] | builtins.list[str] | None = None,
        capacity: dict[str, str] | None = None,
        allocatable: dict[str, str] | None = None,
        conditions: dict[str, str] | builtins.list[JSON] | None = None,
        unschedulable: bool = False,
    ) -> JSON:
        """A node as a kubelet registers it: Ready, 2 CPUs, 8 GiB, 110 pods by default.

        `taints`: dicts, or "key=value:Effect" strings. `conditions`: {"Ready": "False"}
        to override statuses of the default conditions, or full condition dicts.
        """
        self._node_counter += 1
        all_labels = {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "beta.kubernetes.io/os": "linux",
            "beta.kubernetes.io/arch": "amd64",
        }
        all_labels.update(labels or {})
        cap = {
            "cpu": "2",
            "ephemeral-storage": "30830568Ki",
            "hugepages-1Gi": "0",
            "hugepages-2Mi": "0",
            "memory": "8148204Ki",
            "pods": "110",
        }
        if capacity:
            cap.update(capacity)
        alloc = dict(cap)
        if allocatable:
            alloc.update(allocatable)
        spec: JSON = {}
        if taints:
            spec["taints"] = [_taint(t) for t in taints]
        if unschedulable:
            spec["unschedulable"] = True
        address = f"192.0.2.{(self._node_counter % 250) + 1}"
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": all_labels,
                "annotations": {
                    "node.alpha.kubernetes.io/ttl": "0",
                    "volumes.kubernetes.io/controller-managed-attach-detach": "true",
                },
            },
            "spec": spec,
            "status": {
                "capacity": cap,
                "allocatable": alloc,
                "conditions": _node_conditions(conditions),
                "addresses": [{"type": "InternalIP", "address": address}, {"type": "Hostname", "address": name}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                "nodeInfo": {
                    "machineID": os.urandom(16).hex(),
                    "systemUUID": os.urandom(16).hex(),
                    "bootID": os.urandom(16).hex(),
                    "kernelVersion": "6.1.0-28-amd64",
                    "osImage": "Debian GNU/Linux 12 (bookworm)",
                    "containerRuntimeVersion": "containerd://1.7.24",
                    "kubeletVersion": "v1.32.3",
                    "kubeProxyVersion": "v1.32.3",
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                },
            },
        }
        created = self.create(node, field_manager="kubelet")
        self.create(
            {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": name,
                    "namespace": "kube-node-lease",
                    "ownerReferences": [
                        {"apiVersion": "v1", "kind": "Node", "name": name, "uid": created["metadata"]["uid"]}
                    ],
                },
                "spec": {
                    "holderIdentity": name,
                    "leaseDurationSeconds": 40,
                    "renewTime": now_rfc3339().replace("Z", ".000000Z"),
                },
            },
            field_manager="kubelet",
        )
        return created

    def set_node_status(
        self,
        name: str,
        capacity: dict[str, str] | None = None,
        allocatable: dict[str, str] | None = None,
        conditions: dict[str, str] | builtins.list[JSON] | None = None,
    ) -> JSON:
        """Merge resources into the node's status as its kubelet publishes them
        (e.g. allocatable={"nvidia.com/gpu": "2"}); a None value removes the key."""
        with self.store.writing():
            node = self.get("Node", name)
            if node is None:
                raise KeyError(f"no node {name!r}")
            status = copy.deepcopy(node.get("status") or {})
            for field, values in (("capacity", capacity), ("allocatable", allocatable)):
                if values is None:
                    continue
                merged = dict(status.get(field) or {})
                for key, value in values.items():
                    if value is None:
                        merged.pop(key, None)
                    else:
                        merged[key] = str(value)
                status[field] = merged
            if conditions is not None:
                status["conditions"] = _node_conditions(conditions, status.get("conditions"))
            node["status"] = status
            rt = self._type("Node")
            return self.store.replace(rt, None, name, node, "kubelet", subresource="status")

    def allocatable(self, name: str, resource: str = "nvidia.com/gpu") -> str | None:
        """The node's allocatable `resource` as its status says it, or None when the key is absent."""
        node = self.get("Node", name)
        if node is None:
            raise KeyError(f"no node {name}")
        value = (node.get("status", {}).get("allocatable") or {}).get(resource)
        return None if value is None else str(value)

    def remove_allocatable(self, name: str, resource: str, capacity: bool = True) -> JSON:
        """Drop `resource` from the node's allocatable (and capacity): 'key absent' (F9)."""
        return self.set_node_status(
            name,
            allocatable={resource: None},  # type: ignore[dict-item]
            capacity={resource: None} if capacity else None,
        )  # type: ignore[dict-item]

    # Events and the GPU Operator -------------------------------------------------------

    def add_event(
        self,
        namespace: str,
        involved_kind: str,
        involved_name: str,
        reason: str,
        message: str,
        type: str = "Warning",
        component: str = "kubelet",
    ) -> JSON:
        """Record an event about an object (found by kind and name, so `kubectl describe`
        lists it); the object need not exist (its uid is then empty)."""
        rt = self._type(involved_kind)
        found = self.get(involved_kind, involved_name, namespace if rt.namespaced else None)
        involved = found or {
            "apiVersion": rt.api_version,
            "kind": rt.kind,
            "metadata": {"name": involved_name, "uid": "", "namespace": namespace if rt.namespaced else ""},
        }
        if not rt.namespaced:
            involved = copy.deepcopy(involved)
            involved["metadata"]["namespace"] = ""
        return self.controllers.record_event(involved, type, reason, message, component, namespace=namespace)

    def add_cluster_policy(self, state: str = "ready", name: str = "cluster-policy", spec: JSON | None = None) -> JSON:
        """Register the GPU Operator's ClusterPolicy CRD (nvidia.com/v1) and create one."""
        if self.get("CustomResourceDefinition", "clusterpolicies.nvidia.com") is None:
            self.create(copy.deepcopy(CLUSTER_POLICY_CRD), field_manager="helm")
        body = {
            "apiVersion": "nvidia.com/v1",
            "kind": "ClusterPolicy",
            "metadata": {"name": name},
            "spec": spec
            or {
                "operator": {"defaultRuntime": "containerd"},
                "driver": {"enabled": True},
                "toolkit": {"enabled": True},
                "devicePlugin": {"enabled": True},
                "daemonsets": {
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
                },
            },
        }
        existing = self.get("ClusterPolicy", name)
        if existing is None:
            self.create(body, field_manager="helm")
        return self.set_cluster_policy_state(state, name)

    def set_cluster_policy_state(self, state: str, name: str = "cluster-policy") -> JSON:
        return self.patch(
            "ClusterPolicy",
            name,
            {"status": {"state": state, "namespace": "gpu-operator"}},
            subresource="status",
            field_manager="gpu-operator",
        )


def _ns(rt: Any, namespace: str | None) -> str | None:
    if not rt.namespaced:
        return None
    return namespace or "default"


def _taint(spec: JSON | str) -> JSON:
    if isinstance(spec, dict):
        return dict(spec)
    key_value, _, effect = spec.rpartition(":")
    key, _, value = key_value.partition("=")
    out = {"key": key, "effect": effect}
    if value:
        out["value"] = value
    return out


_CONDITION_TEXT = {
    "MemoryPressure": ("False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
    "DiskPressure": ("False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
    "PIDPressure": ("False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
    "Ready": ("True", "KubeletReady", "kubelet is posting ready status"),
}


def _node_conditions(given: dict[str, str] | list[JSON] | None, current: list[JSON] | None = None) -> list[JSON]:
    if isinstance(given, list):
        return [dict(c) for c in given]
    stamp = now_rfc3339()
    by_type = {c["type"]: dict(c) for c in current or []}
    for kind, (status, reason, message) in _CONDITION_TEXT.items():
        if kind not in by_type:
            by_type[kind] = {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": stamp,
                "lastTransitionTime": stamp,
            }
    for kind, status in (given or {}).items():
        entry = by_type.setdefault(kind, {"type": kind, "lastTransitionTime": stamp})
        if entry.get("status") != status:
            entry["lastTransitionTime"] = stamp
        entry["status"] = status
        entry["lastHeartbeatTime"] = stamp
        if kind == "Ready" and status != "True":
            entry["reason"] = "KubeletNotReady" if status == "False" else "NodeStatusUnknown"
            entry["message"] = (
                "container runtime network not ready" if status == "False" else "Kubelet stopped posting node status."
            )
    return list(by_type.values())
