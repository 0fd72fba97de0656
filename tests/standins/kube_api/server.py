"""The HTTPS front of the stand-in: routing, authentication, watch streams, faults.

It speaks the Kubernetes REST protocol as kubectl uses it over HTTP/1.1 + TLS:
discovery (aggregated apidiscovery.k8s.io/v2 when asked for, else the legacy documents),
OpenAPI v3 (only what kubectl's field-validation probe reads), CRUD and PATCH on resource
paths, watch as a chunked stream of JSON events, pods/log.
"""

from __future__ import annotations

import http.server
import json
import re
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from . import disruption, errors, openapi, resources
from .resources import ResourceType
from .selectors import SelectorError, parse_field_selector, parse_label_selector
from .store import APPLY_PATCH, ListOptions, WatchEvent

if TYPE_CHECKING:
    from .standin import KubeApiStandIn

JSON = dict[str, Any]

AGGREGATED_V2 = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
PUBLIC_PATHS = {"/version", "/healthz", "/livez", "/readyz"}
# Who the "forbidden" fault says was refused: a CI job's service account, as RBAC names it.
FORBIDDEN_USER = "system:serviceaccount:ci:gpunode"


@dataclass
class RequestRecord:
    """One request as the server saw it (the programmatic API's requests are not here)."""

    method: str
    path: str
    query: dict[str, str]
    content_type: str
    field_manager: str
    user_agent: str
    accept: str
    status: int = 0
    body: bytes = field(default=b"", repr=False)
    # Bytes of the answer's body (a stream's chunks summed): what the agent benchmark counts.
    response_bytes: int = 0

    @property
    def dry_run(self) -> bool:
        return self.query.get("dryRun") == "All"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kube-apiserver-standin"
    # Idle keep-alive connections are closed after this; watches are written, not read.
    timeout = 120

    standin: KubeApiStandIn
    record: RequestRecord

    def setup(self) -> None:
        self.standin = self.server.standin  # type: ignore[attr-defined]
        conn: ssl.SSLSocket = self.request
        conn.settimeout(10)
        conn.do_handshake()
        super().setup()
        self.standin._connections.add(conn)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.standin._connections.discard(self.request)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the request log is kept in memory for the tests

    # Plumbing --------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _send(self, code: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.record.status = code
        self.record.response_bytes = len(body)
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache, private")
        for warning in getattr(self, "_warnings", None) or []:
            self.send_header("Warning", '299 - "' + warning.replace('"', '\\"') + '"')
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(
        self, code: int, obj: Any, content_type: str = "application/json", extra: dict[str, str] | None = None
    ) -> None:
        self._send(code, json.dumps(obj, separators=(",", ":")).encode() + b"\n", content_type, extra)

    def _send_error(self, err: errors.ApiError) -> None:
        self._send_json(err.code, err.status())

    def _start_stream(self, content_type: str) -> None:
        self.record.status = 200
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        self.record.response_bytes += len(data)
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _end_stream(self) -> None:
        try:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def _client_gone(self) -> bool:
        """A watch client sends nothing after its request: readable means it hung up."""
        conn: ssl.SSLSocket = self.request
        try:
            readable, _, _ = select.select([conn], [], [], 0)
        except (OSError, ValueError):
            return True
        if not readable:
            return False
        try:
            conn.setblocking(False)
            data = conn.recv(1)
            return not data
        except ssl.SSLWantReadError:
            return False
        except OSError:
            return True
        finally:
            try:
                conn.setblocking(True)
                conn.settimeout(self.timeout)
            except OSError:
                pass

    # Request handling ------------------------------------------------------------------

    def _serve(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            body = self._read_chunked()  # kubectl sends a body read from stdin (-f -) this way
        else:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        self.record = RequestRecord(
            method=self.command,
            path=url.path,
            query=query,
            content_type=content_type,
            field_manager=query.get("fieldManager", ""),
            user_agent=self.headers.get("User-Agent", ""),
            accept=self.headers.get("Accept", ""),
            body=body,
        )
        self.standin._log_request(self.record)
        fault = self.standin._fault_for(url.path)
        if fault == "hang":
            self.standin._wait_fault_cleared()
            self.close_connection = True
            return
        if fault == "drop":
            self.close_connection = True
            return
        if fault == "error500":
            self._send_error(errors.internal_error("the stand-in was told to fail"))
            return
        if fault == "forbidden":
            self._send_error(
                errors.rbac_forbidden(self.command, url.path, query.get("watch") in ("true", "1"), FORBIDDEN_USER)
            )
            return
        if fault == "unauthorized" or not self._authorised(url.path):
            self._send_error(errors.unauthorized())
            return
        try:
            mode = query.get("fieldValidation") or "Warn"
            with self.standin.store.field_validation(mode) as warnings:
                self._warnings = warnings
                self._route(url.path, query, body, content_type)
        except errors.ApiError as err:
            self._send_error(err)
        except SelectorError as err:
            self._send_error(errors.bad_request(str(err)))
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.close_connection = True

    def _read_chunked(self) -> bytes:
        parts = []
        while True:
            size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline().strip():  # trailers, up to the empty line
                    pass
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline()  # the CRLF after each chunk

    def _authorised(self, path: str) -> bool:
        auth = self.headers.get("Authorization")
        if auth is None:
            return path in PUBLIC_PATHS  # anonymous: public info only
        return auth == f"Bearer {self.standin.token}"

    def _route(self, path: str, query: dict[str, str], body: bytes, content_type: str) -> None:
        store = self.standin.store
        path = path.rstrip("/") or "/"
        if path == "/version":
            self._send_json(200, self.standin.version_info())
            return
        if path in ("/healthz", "/livez", "/readyz"):
            self._send(200, b"ok", "text/plain; charset=utf-8")
            return
        if path.startswith("/openapi/"):
            self._openapi(path, query)
            return
        parts = path.strip("/").split("/")
        if parts[0] == "api":
            group, rest = "", parts[1:]
            if not rest:
                self._discovery(legacy=True)
                return
            version, rest = rest[0], rest[1:]
        elif parts[0] == "apis":
            rest = parts[1:]
            if not rest:
                self._discovery(legacy=False)
                return
            if len(rest) == 1:
                with store.lock:
                    doc = resources.legacy_group(store.types, rest[0])
                if doc is None:
                    raise errors.generic_not_found()
                self._send_json(200, doc)
                return
            group, version, rest = rest[0], rest[1], rest[2:]
        else:
            raise errors.generic_not_found()
        if not rest:
            with store.lock:
                doc = resources.legacy_resource_list(store.types, group, version)
            if doc is None:
                raise errors.generic_not_found()
            self._send_json(200, doc)
            return
        self._resource(group, version, rest, query, body, content_type)

    def _discovery(self, legacy: bool) -> None:
        store = self.standin.store
        with store.lock:
            types = list(store.types)
        accept = self.headers.get("Accept", "").replace(" ", "")
        if self.standin.aggregated_discovery and "g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList" in accept:
            doc = resources.aggregated_discovery(types, legacy)
            self._send_json(200, doc, AGGREGATED_V2, {"Vary": "Accept", "ETag": f'"{resources.etag(doc)}"'})
            return
        if legacy:
            self._send_json(200, resources.legacy_api_versions(self.standin.address))
        else:
            self._send_json(200, resources.legacy_group_list(types))

    def _openapi(self, path: str, query: dict[str, str]) -> None:
        store = self.standin.store
        with store.lock:
            types = list(store.types)
        if path == "/openapi/v3":
            self._send_json(200, openapi.v3_root(types))
            return
        if path.startswith("/openapi/v3/"):
            doc = openapi.v3_group_version(types, path[len("/openapi/v3/") :])
            if doc is not None:
                self._send_json(200, doc)
                return
        raise errors.generic_not_found()

    def _resource(
        self, group: str, version: str, rest: list[str], query: dict[str, str], body: bytes, content_type: str
    ) -> None:
        store = self.standin.store
        namespace: str | None = None
        if rest[0] == "namespaces" and len(rest) >= 3 and not (len(rest) == 3 and rest[2] in ("status", "finalize")):
            namespace, rest = rest[1], rest[2:]
        if len(rest) > 3:
            raise errors.generic_not_found()
        plural = rest[0]
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else ""
        with store.lock:
            rt = store.find_type(group, version, plural)
        if rt is None or (namespace is not None and not rt.namespaced):
            raise errors.generic_not_found()
        if sub and sub not in rt.subresources:
            raise errors.generic_not_found()
        if rt.namespaced and name is not None and namespace is None:
            raise errors.generic_not_found()
        method = self.command
        manager = query.get("fieldManager") or _manager_from_agent(self.headers.get("User-Agent", ""))
        dry_run = query.get("dryRun") == "All"
        if query.get("dryRun") not in (None, "", "All"):
            raise errors.bad_request(f'dryRun: Unsupported value: "{query["dryRun"]}": supported values: "All"')
        if method == "GET" and name is None:
            opts = self._list_options(rt, namespace, query)
            if query.get("watch") in ("true", "1"):
                self._watch(rt, opts, query)
            else:
                self._list(rt, opts, query)
            return
        if method == "GET" and sub == "log":
            self._logs(rt, namespace or "", str(name), query)
            return
        if method == "GET":
            obj = store.get(rt, namespace, str(name))
            self._send_object(rt, obj)
            return
        if method == "POST" and sub == "eviction" and name is not None:
            code, status = disruption.evict(store, namespace or "", name, self._decode(body), dry_run)
            self._send_json(code, status)
            return
        if method == "POST" and name is None:
            if content_type == "application/vnd.kubernetes.protobuf":
                # Not served: gpunode sends JSON only (module docstring of standin.py).
                raise errors.unsupported_media_type(content_type, ["application/json", "application/yaml"])
            created = store.create(rt, namespace, self._decode(body), manager, dry_run)
            self._send_json(201, created)
            return
        if method == "PUT" and name is not None:
            updated = store.replace(rt, namespace, name, self._decode(body), manager, sub, dry_run)
            self._send_json(200, updated)
            return
        if method == "PATCH" and name is not None:
            if content_type == APPLY_PATCH and "force" in query and query["force"] not in ("true", "false", "1", "0"):
                raise errors.bad_request("force: invalid value")
            patched, was_created = store.patch(
                rt,
                namespace,
                name,
                content_type,
                body,
                manager,
                force=query.get("force") in ("true", "1"),
                subresource=sub,
                dry_run=dry_run,
            )
            self._send_json(201 if was_created else 200, patched)
            return
        if method == "DELETE":
            options = self._decode(body) if body else {}
            if not isinstance(options, dict):
                options = {}
            propagation = query.get("propagationPolicy") or options.get("propagationPolicy") or "Background"
            dry_run = dry_run or "All" in (options.get("dryRun") or [])
            pre = options.get("preconditions") or {}
            if name is None:
                self._delete_collection(rt, namespace, query, propagation, dry_run)
                return
            deleted = store.delete(
                rt, namespace, name, propagation, dry_run, pre.get("uid"), pre.get("resourceVersion")
            )
            if rt.kind == "Pod" and rt.group == "":
                self._send_json(200, deleted)
            else:
                details: JSON = {"name": name, "kind": rt.plural, "uid": deleted["metadata"].get("uid", "")}
                if rt.group:
                    details["group"] = rt.group
                self._send_json(
                    200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}
                )
            return
        raise errors.method_not_allowed()

    @staticmethod
    def _decode(body: bytes) -> Any:
        try:
            return json.loads(body or b"{}")
        except json.JSONDecodeError:
            import yaml

            try:
                return yaml.safe_load(body)
            except yaml.YAMLError as exc:
                raise errors.bad_request(f"couldn't get version/kind; json parse error: {exc}") from exc

    def _list_options(self, rt: ResourceType, namespace: str | None, query: dict[str, str]) -> ListOptions:
        labels = parse_label_selector(query.get("labelSelector"))
        fields = self.standin.store.normalise_fields(rt, parse_field_selector(query.get("fieldSelector")))
        return ListOptions(namespace, labels, fields)

    def _send_object(self, rt: ResourceType, obj: JSON) -> None:
        self._send_json(200, obj)

    def _list(self, rt: ResourceType, opts: ListOptions, query: dict[str, str]) -> None:
        limit = int(query.get("limit") or 0)
        doc = self.standin.store.list(rt, opts, limit, query.get("continue", ""))
        self._send_json(200, doc)

    def _delete_collection(
        self, rt: ResourceType, namespace: str | None, query: dict[str, str], propagation: str, dry_run: bool
    ) -> None:
        store = self.standin.store
        opts = self._list_options(rt, namespace, query)
        doc = store.list(rt, opts)
        for item in doc["items"]:
            meta = item["metadata"]
            try:
                store.delete(rt, meta.get("namespace"), meta["name"], propagation, dry_run)
            except errors.ApiError:
                pass
        self._send_json(200, doc)

    # Watch -----------------------------------------------------------------------------

    def _watch(self, rt: ResourceType, opts: ListOptions, query: dict[str, str]) -> None:
        store = self.standin.store
        timeout = float(query.get("timeoutSeconds") or 1800)
        deadline = time.monotonic() + timeout
        since = query.get("resourceVersion", "")
        initial_events = query.get("sendInitialEvents") == "true"
        with store.lock:
            initial: list[WatchEvent] = []
            if not since or since == "0" or initial_events:
                for obj in store.list(rt, opts)["items"]:
                    initial.append(WatchEvent(int(obj["metadata"]["resourceVersion"]), rt.key, "ADDED", obj, None))
                cursor = store.history_base + len(store.history)
            else:
                try:
                    wanted = int(since)
                except ValueError as exc:
                    raise errors.bad_request(f"invalid resourceVersion {since!r}") from exc
                if store.history and wanted < store.history[0].rv - 1:
                    self._start_stream("application/json")
                    gone = errors.ApiError(
                        410, "Expired", f"too old resource version: {wanted} ({store.history[0].rv})"
                    )
                    self._chunk(json.dumps({"type": "ERROR", "object": gone.status()}).encode() + b"\n")
                    self._end_stream()
                    return
                cursor = store.history_base + next(
                    (n for n, ev in enumerate(store.history) if ev.rv > wanted), len(store.history)
                )
            current_rv = store.rv
        self._start_stream("application/json")
        try:
            for ev in initial:
                self._write_event("ADDED", ev.obj)
            if initial_events:
                self._write_event(
                    "BOOKMARK",
                    {
                        "kind": rt.kind,
                        "apiVersion": rt.api_version,
                        "metadata": {
                            "resourceVersion": str(current_rv),
                            "annotations": {"k8s.io/initial-events-end": "true"},
                        },
                    },
                )
            while not self.standin._stopping.is_set():
                with store.cond:
                    if cursor >= store.history_base + len(store.history):
                        store.cond.wait(0.25)
                    start = max(cursor - store.history_base, 0)
                    fresh = store.history[start:]
                    cursor = store.history_base + len(store.history)
                    out = []
                    for ev in fresh:
                        if ev.key != rt.key:
                            continue
                        kind = self._event_kind(rt, opts, ev)
                        if kind:
                            out.append((kind, store.view(rt, ev.obj)))
                for kind, obj in out:
                    self._write_event(kind, obj)
                if time.monotonic() > deadline or self._client_gone():
                    break
            self._end_stream()
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            self.close_connection = True

    def _event_kind(self, rt: ResourceType, opts: ListOptions, ev: WatchEvent) -> str:
        store = self.standin.store
        now = store.matches(rt, ev.obj, opts)
        before = ev.old is not None and store.matches(rt, ev.old, opts)
        if ev.type == "ADDED":
            return "ADDED" if now else ""
        if ev.type == "DELETED":
            return "DELETED" if now or before else ""
        if now and before:
            return "MODIFIED"
        if now:
            return "ADDED"
        if before:
            return "DELETED"
        return ""

    def _write_event(self, kind: str, obj: JSON) -> None:
        self._chunk(json.dumps({"type": kind, "object": obj}, separators=(",", ":")).encode() + b"\n")

    # Logs ------------------------------------------------------------------------------

    def _logs(self, rt: ResourceType, namespace: str, name: str, query: dict[str, str]) -> None:
        standin = self.standin
        store = standin.store
        pod = store.get(rt, namespace, name)
        containers = [c.get("name", "") for c in (pod.get("spec") or {}).get("containers") or []]
        container = query.get("container") or ""
        if not container:
            if len(containers) != 1:
                raise errors.bad_request(
                    f"a container name must be specified for pod {name}, choose one of: [{' '.join(containers)}]"
                )
            container = containers[0]
        if container not in containers:
            raise errors.bad_request(f"container {container} is not valid for pod {name}")
        previous = query.get("previous") in ("true", "1")
        text = standin._logs_of(namespace, name, container, previous)
        if text is None:
            if previous:
                raise errors.bad_request(f'previous terminated container "{container}" in pod "{name}" not found')
            for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                waiting = (cs.get("state") or {}).get("waiting")
                if cs.get("name") == container and waiting:
                    raise errors.bad_request(
                        f'container "{container}" in pod "{name}" is waiting to start: '
                        f"{waiting.get('reason', 'ContainerCreating')}"
                    )
            if not (pod.get("spec") or {}).get("nodeName"):
                raise errors.bad_request(
                    f'container "{container}" in pod "{name}" is waiting to start: ContainerCreating'
                )
            text = ""
        text = _tail(text, query.get("tailLines"))
        if query.get("follow") not in ("true", "1"):
            self._send(200, text.encode(), "text/plain")
            return
        self._follow_logs(namespace, name, container, text)

    def _follow_logs(self, namespace: str, name: str, container: str, sent: str) -> None:
        standin = self.standin
        store = standin.store
        uid = standin.get("Pod", name, namespace)
        pod_uid = (uid or {}).get("metadata", {}).get("uid")
        self._start_stream("text/plain")
        try:
            if sent:
                self._chunk(sent.encode())
            full = standin._logs_of(namespace, name, container, False) or ""
            offset = len(full)
            while not standin._stopping.is_set():
                with store.cond:
                    store.cond.wait(0.25)
                    text = standin._logs_of(namespace, name, container, False) or ""
                    pod = store.peek(store.resolve("Pod"), namespace, name)
                if len(text) > offset:
                    self._chunk(text[offset:].encode())
                    offset = len(text)
                if (
                    pod is None
                    or pod["metadata"].get("uid") != pod_uid
                    or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
                    or self._client_gone()
                ):
                    break
            self._end_stream()
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            self.close_connection = True


def _tail(text: str, tail: str | None) -> str:
    if not tail:
        return text
    count = int(tail)
    if count < 0:
        return text
    lines = text.splitlines(keepends=True)
    return "".join(lines[-count:]) if count else ""


def _manager_from_agent(agent: str) -> str:
    """The server's default field manager: the user agent up to its first '/'."""
    return agent.split("/", 1)[0][:128] if agent else "unknown"


class HttpsListener:
    """Accepts TLS connections and hands each to a handler thread.

    Its own accept loop (rather than socketserver's) lets a test close the listening
    socket to make the server unreachable (connection refused) and open it again on the
    same port.
    """

    def __init__(self, standin: KubeApiStandIn, context: ssl.SSLContext) -> None:
        self.standin = standin
        self.context = context
        self.sock: socket.socket | None = None
        self.port = 0
        self.thread: threading.Thread | None = None
        self.listening = threading.Event()

    def open(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.standin.bind_host, self.port))
        sock.listen(128)
        self.port = sock.getsockname()[1]
        self.sock = sock
        self.listening.set()

    def close(self) -> None:
        self.listening.clear()
        sock, self.sock = self.sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the accept loop's select at once
            except OSError:
                pass
            sock.close()

    def start(self) -> None:
        self.open()
        self.thread = threading.Thread(target=self._loop, name="kube-api-standin-accept", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.standin._stopping.is_set():
            sock = self.sock
            if sock is None:
                time.sleep(0.05)
                continue
            try:
                ready, _, _ = select.select([sock], [], [], 0.1)
            except (OSError, ValueError):
                continue
            if not ready:
                continue
            try:
                conn, addr = sock.accept()
                # Responses go out as several small writes (headers, body, chunks): without
                # this, Nagle's algorithm and the client's delayed ACK add ~40 ms to each.
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                continue
            threading.Thread(
                target=self._serve_one, args=(conn, addr), name="kube-api-standin-conn", daemon=True
            ).start()

    def _serve_one(self, conn: socket.socket, addr: Any) -> None:
        try:
            tls = self.context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        except OSError:
            conn.close()
            return
        try:
            _Handler(tls, addr, self)  # type: ignore[arg-type]  # only .standin is used
        except (OSError, ssl.SSLError, ValueError):
            pass
        finally:
            try:
                tls.close()
            except OSError:
                pass

    def stop(self) -> None:
        self.close()
        if self.thread is not None:
            self.thread.join(timeout=2)


def fault_matches(pattern: str | None, path: str) -> bool:
    return pattern is None or re.search(pattern, path) is not None
