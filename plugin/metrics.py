"""Prometheus metrics for the plugin, in the text exposition format, written by hand.

Five metric families and a tiny HTTP endpoint do not justify prometheus_client: writing
the format is a few dozen lines, keeps the plugin image one dependency smaller, and keeps
import time and memory (both measured targets) down.

    gpunode_plugin_devices{resource,health}                 gauge
    gpunode_plugin_xid_events_total{device,xid}             counter (device: GPU UUID)
    gpunode_plugin_registrations_total{resource}            counter
    gpunode_plugin_registered{resource}                     gauge (1 while registered)
    gpunode_plugin_allocate_requests_total{resource,code}   counter (code: gRPC status name)
    gpunode_plugin_allocate_duration_seconds                histogram
    gpunode_plugin_nvml_up                                  gauge (0: NVML could not start)
"""

from __future__ import annotations

import socket
import threading
from bisect import bisect_left
from typing import Any

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

_HELP = {
    "gpunode_plugin_devices": ("gauge", "Devices advertised to the kubelet, by resource and health."),
    "gpunode_plugin_xid_events_total": ("counter", "XID critical errors NVML reported, by GPU UUID and XID."),
    "gpunode_plugin_registrations_total": ("counter", "Successful registrations with the kubelet, by resource."),
    "gpunode_plugin_registered": ("gauge", "1 while the resource is registered with the kubelet."),
    "gpunode_plugin_allocate_requests_total": ("counter", "Allocate calls, by resource and gRPC status code."),
    "gpunode_plugin_allocate_duration_seconds": ("histogram", "Time spent answering Allocate."),
    "gpunode_plugin_nvml_up": ("gauge", "1 when NVML started and devices were found, 0 when it could not."),
}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, dict[tuple[tuple[str, str], ...], float]] = {name: {} for name in _HELP}
        self._bucket_counts = [0] * (len(BUCKETS) + 1)
        self._duration_sum = 0.0
        self._duration_count = 0

    def _set(self, name: str, labels: tuple[tuple[str, str], ...], value: float) -> None:
        with self._lock:
            self._values[name][labels] = value

    def _add(self, name: str, labels: tuple[tuple[str, str], ...], amount: float = 1) -> None:
        with self._lock:
            series = self._values[name]
            series[labels] = series.get(labels, 0) + amount

    def set_devices(self, resource: str, healthy: int, unhealthy: int) -> None:
        self._set("gpunode_plugin_devices", (("resource", resource), ("health", "Healthy")), healthy)
        self._set("gpunode_plugin_devices", (("resource", resource), ("health", "Unhealthy")), unhealthy)

    def xid(self, device: str, xid: int) -> None:
        self._add("gpunode_plugin_xid_events_total", (("device", device), ("xid", str(xid))))

    def registered(self, resource: str) -> None:
        self._add("gpunode_plugin_registrations_total", (("resource", resource),))
        self._set("gpunode_plugin_registered", (("resource", resource),), 1)

    def unregistered(self, resource: str) -> None:
        self._set("gpunode_plugin_registered", (("resource", resource),), 0)

    def nvml_up(self, up: bool) -> None:
        self._set("gpunode_plugin_nvml_up", (), 1 if up else 0)

    def allocate(self, resource: str, code: str, seconds: float) -> None:
        with self._lock:
            series = self._values["gpunode_plugin_allocate_requests_total"]
            key = (("resource", resource), ("code", code))
            series[key] = series.get(key, 0) + 1
            self._bucket_counts[bisect_left(BUCKETS, seconds)] += 1
            self._duration_sum += seconds
            self._duration_count += 1

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            for name, (kind, text) in _HELP.items():
                lines.append(f"# HELP {name} {text}")
                lines.append(f"# TYPE {name} {kind}")
                if kind == "histogram":
                    cumulative = 0
                    for bound, count in zip(BUCKETS, self._bucket_counts):
                        cumulative += count
                        lines.append(f'{name}_bucket{{le="{bound:g}"}} {cumulative}')
                    lines.append(f'{name}_bucket{{le="+Inf"}} {self._duration_count}')
                    lines.append(f"{name}_sum {_number(self._duration_sum)}")
                    lines.append(f"{name}_count {self._duration_count}")
                    continue
                for labels, value in sorted(self._values[name].items()):
                    lines.append(f"{name}{_labels(labels)} {_number(value)}")
        return "\n".join(lines) + "\n"


def serve_metrics(address: tuple[str, int], metrics: Metrics) -> Any:
    """Serve /metrics on address from a daemon thread; returns the server (for its port)."""
    # Imported here: http.server is slow to import and most plugins run without metrics.
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != "/metrics":
                self.send_error(404, "only /metrics is served here")
                return
            body = metrics.render().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # one line per scrape would drown the plugin's own events

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        daemon_threads = True

    server = Server(address, Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
