"""The plugin's own Prometheus metrics, and the /metrics endpoint that serves them with the
GPU telemetry (plugin/telemetry.py).

    gpunode_plugin_devices{resource,health}                 gauge
    gpunode_plugin_xid_events_total{device,xid}             counter (device: GPU UUID)
    gpunode_plugin_registrations_total{resource}            counter
    gpunode_plugin_registered{resource}                     gauge (1 while registered)
    gpunode_plugin_allocate_requests_total{resource,code}   counter (code: gRPC status name)
    gpunode_plugin_allocate_duration_seconds                histogram
    gpunode_plugin_nvml_up                                  gauge (0: NVML could not start)

The counters are kept in plain dicts (the plugin updates them whether metrics are served or
not); prometheus_client, the well-kept library for the exposition format, is imported only
when they are rendered, so a plugin without --metrics-addr never loads it.
"""

from __future__ import annotations

import socket
import threading
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterator
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


# dcgm-exporter counts XIDs per GPU and XID over a sliding window (--xid-count-window-size,
# five minutes by default): DCGM_EXP_XID_ERRORS_COUNT.
XID_WINDOW_SECONDS = 300.0


class XidRecord:
    """The XIDs NVML reported, per GPU UUID: the last one, and their times for the window."""

    def __init__(self, window: float = XID_WINDOW_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._window = window
        self._clock = clock
        self._last: dict[str, int] = {}
        self._times: dict[tuple[str, int], deque[float]] = {}

    def record(self, gpu_uuid: str, xid: int) -> None:
        with self._lock:
            self._last[gpu_uuid] = xid
            self._times.setdefault((gpu_uuid, xid), deque()).append(self._clock())

    def last(self, gpu_uuid: str) -> int:
        with self._lock:
            return self._last.get(gpu_uuid, 0)

    def counts(self, gpu_uuid: str) -> dict[int, int]:
        """XID -> how many within the window (XIDs whose window has passed are dropped)."""
        horizon = self._clock() - self._window
        out: dict[int, int] = {}
        with self._lock:
            for (uuid, xid), times in list(self._times.items()):
                while times and times[0] < horizon:
                    times.popleft()
                if not times:
                    del self._times[(uuid, xid)]
                elif uuid == gpu_uuid:
                    out[xid] = len(times)
        return out


class Metrics:
    def __init__(self) -> None:
        self.xids = XidRecord()
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
        self.xids.record(device, xid)
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

    def collect(self) -> Iterator[Any]:
        """The families, for a prometheus_client registry."""
        from prometheus_client.core import HistogramMetricFamily, Metric

        with self._lock:
            for name, (kind, text) in _HELP.items():
                if kind == "histogram":
                    cumulative, buckets = 0, []
                    for bound, count in zip(BUCKETS, self._bucket_counts):
                        cumulative += count
                        buckets.append((f"{bound:g}", cumulative))
                    buckets.append(("+Inf", self._duration_count))
                    yield HistogramMetricFamily(name, text, buckets=buckets, sum_value=self._duration_sum)
                    continue
                family = Metric(name.removesuffix("_total"), text, kind)
                for labels, value in sorted(self._values[name].items()):
                    family.add_sample(name, dict(labels), value)
                yield family

    def render(self) -> str:
        """The text exposition of these metrics alone."""
        from prometheus_client import CollectorRegistry, generate_latest

        registry = CollectorRegistry()
        registry.register(self)
        return generate_latest(registry).decode()


def serve_metrics(address: tuple[str, int], metrics: Metrics) -> Any:
    """Serve /metrics on address from a daemon thread; returns the server (for its port, its
    `registry` and its `text_sources`, where the GPU telemetry joins once NVML is up)."""
    # Imported here: http.server and prometheus_client are slow to import, and a plugin
    # without metrics never needs them.
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    registry.register(metrics)
    # Further exposition text (the GPU telemetry renders its own families, see telemetry.py).
    text_sources: list[Callable[[], str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != "/metrics":
                self.send_error(404, "only /metrics is served here")
                return
            body = generate_latest(registry) + b"".join(source().encode() for source in text_sources)
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # one line per scrape would drown the plugin's own events

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        daemon_threads = True

    server = Server(address, Handler)
    server.registry = registry  # type: ignore[attr-defined]
    server.text_sources = text_sources  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
