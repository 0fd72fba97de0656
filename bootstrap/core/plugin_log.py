"""What a device plugin's log says: gpunode's bundled plugin and NVIDIA's k8s-device-plugin.

One reader for `gpunode verify` and `gpunode doctor`. The bundled plugin writes one event
per line (`nvml_init_failed reason=... error="..."`, `device id=...`, `registered ...`);
what it says about its devices counts from its last `plugin_starting` on (a restarted
plugin starts over). NVIDIA's plugin writes klog lines; each one read here is matched by
the words its code prints (docs/failure-modes.md lists them, tests/unit/test_plugin_log.py
holds each line verbatim), and its NVML failures are named with the bundled plugin's
reason keywords, so that both plugins lead to the same verdicts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from gpunode.bootstrap.core.kube.cluster_plan import normalize_bus_id

# The bundled plugin's reason keywords (plugin/nvml.py); NVIDIA's lines are mapped onto them.
INIT_REASONS = (
    "library_not_found",
    "library_unusable",
    "library_too_old",
    "driver_not_loaded",
    "no_permission",
    "driver_library_mismatch",
    "nvml_unknown_error",
    "nvml_error",
    "nvml_query_failed",
    "mig_no_permission",
    "mig_strategy_mismatch",
    "no_devices",
)

_EVENT_LINE = re.compile(r"^[a-z_]+(?: |$)")
_EVENT_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')

# NVIDIA's plugin and the libraries it uses (go-nvml, go-nvlib), most specific first. Where a
# line quotes an NVML return code, go-nvml prints NVML's own text when the library is loaded
# ("Driver/library version mismatch") and the constant's name when it is not
# ("ERROR_LIBRARY_NOT_FOUND").
_NVIDIA_INIT_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    # The dynamic loader's words when the file is there but cannot be loaded.
    (
        "library_unusable",
        re.compile(r"GLIBC_PRIVATE|version `GLIBC_|wrong ELF class|ELFCLASS32|symbol lookup error", re.IGNORECASE),
    ),
    (
        "library_not_found",
        re.compile(
            # go-nvlib's platform check ("could not load NVML library: error opening ...").
            r"could not load NVML library|libnvidia-ml\.so\.1: cannot open shared object file|"
            # go-nvml without a library, and NVML's own text for the same code.
            r"ERROR_LIBRARY_NOT_FOUND|NVML Shared Library Not Found|"
            # Up to v0.15 (internal/rm): no NVML and no Tegra platform found.
            r"Incompatible platform detected|"
            # v0.16 to v0.19 (internal/plugin/factory.go): the "auto" strategy resolved to
            # neither nvml nor tegra, i.e. no libnvidia-ml.so.1 could be loaded in the
            # container (no library mounted, or the toolkit's runtime not used). Not MIG.
            r"Incompatible strategy detected auto",
            re.IGNORECASE,
        ),
    ),
    (
        "driver_library_mismatch",
        re.compile(r"Driver/library version mismatch|ERROR_LIB_RM_VERSION_MISMATCH", re.IGNORECASE),
    ),
    ("driver_not_loaded", re.compile(r"Driver Not Loaded|ERROR_DRIVER_NOT_LOADED", re.IGNORECASE)),
    (
        "mig_no_permission",
        re.compile(
            r"MIG.*(Insufficient Permissions|ERROR_NO_PERMISSION)|(Insufficient Permissions|ERROR_NO_PERMISSION).*MIG",
            re.IGNORECASE,
        ),
    ),
    ("no_permission", re.compile(r"Insufficient Permissions|ERROR_NO_PERMISSION", re.IGNORECASE)),
    (
        "nvml_unknown_error",
        re.compile(r"(nvml init failed|Failed to initialize NVML): (Unknown Error|ERROR_UNKNOWN)", re.IGNORECASE),
    ),
    (
        "mig_strategy_mismatch",
        re.compile(
            # internal/rm/device_map.go: the GPUs' MIG modes do not fit the MIG strategy.
            r"invalid MIG configuration|all devices on the node must be configured with the same migEnabled value|"
            # cmd/nvidia-device-plugin/main.go: a MIG strategy it does not know.
            r"unknown MIG strategy",
            re.IGNORECASE,
        ),
    ),
    ("nvml_error", re.compile(r"nvml init failed|Failed to initialize NVML", re.IGNORECASE)),
)
_NVIDIA_NO_DEVICES = re.compile(r"No devices found\. Waiting indefinitely")
_NVIDIA_REGISTERED = re.compile(r"Registered device plugin for '([^']+)' with Kubelet")
_NVIDIA_RESTART = re.compile(r"inotify: \S*kubelet\.sock created, restarting")
# internal/rm/health.go and internal/plugin/server.go: a device taken out of service.
_NVIDIA_UNHEALTHY = re.compile(
    r"XidCriticalError|device marked unhealthy|marking (it|device \S+|all devices) as unhealthy|Marking it unhealthy",
    re.IGNORECASE,
)
_NVIDIA_REGISTER_FAILED = re.compile(r"Could not register device plugin|Could not start device plugin")
_KLOG = re.compile(r"^[IWEF]\d{4} [\d:.]+\s+\d+ [^\]]+\] (.*)$")


@dataclass(frozen=True)
class InitFailure:
    reason: str  # one of INIT_REASONS
    error: str  # NVML's or the loader's words
    line: str  # the log line that says so
    fix: str = ""  # the bundled plugin's own advice (its `fix=`); NVIDIA's lines carry none


@dataclass(frozen=True)
class LoggedDevice:
    id: str
    uuid: str
    pci: str  # normalised bus ID ("" when not logged)
    name: str


@dataclass(frozen=True)
class PluginLog:
    plugin: str | None = None  # "bundled", "nvidia" or None when nothing told them apart
    init_failure: InitFailure | None = None
    registered: tuple[str, ...] = ()  # the registration lines since the last start, in order
    kubelet_restart_seen: bool = False  # the plugin noticed a kubelet restart (and re-registered)
    health_lines: tuple[str, ...] = ()  # device health lines, as the plugin wrote them
    register_failures: tuple[str, ...] = ()
    lines: int = 0
    # The bundled plugin's devices and their health since its last start.
    devices: tuple[LoggedDevice, ...] = ()
    unhealthy_devices: Mapping[str, str] = field(default_factory=dict)  # device id -> why
    driver: str | None = None

    @property
    def empty(self) -> bool:
        return self.lines == 0

    def device(self, device_id: str) -> LoggedDevice | None:
        return next((d for d in self.devices if d.id == device_id), None)


def parse_event_line(line: str) -> tuple[str, dict[str, str]] | None:
    """`event k=v k2="v 2"` (the bundled plugin's format) -> ("event", {...}); None for anything else."""
    line = line.strip()
    if not line or not _EVENT_LINE.match(line):
        return None
    event, _, rest = line.partition(" ")
    fields: dict[str, str] = {}
    for key, value in _EVENT_FIELD.findall(rest):
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            value = re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value[1:-1])
        fields[key] = value
    return event, fields


class _Reader:
    """The state of one pass over a log."""

    def __init__(self) -> None:
        self.plugin: str | None = None
        self.failure: InitFailure | None = None
        self.registered: list[str] = []
        self.restart_seen = False
        self.health: list[str] = []
        self.register_failures: list[str] = []
        self.devices: dict[str, LoggedDevice] = {}
        self.unhealthy: dict[str, str] = {}
        self.driver: str | None = None

    def bundled(self, line: str, event: str, fields: dict[str, str]) -> bool:
        """One of the bundled plugin's events; False when the line is none of them."""
        if event == "plugin_starting":
            # A restarted plugin starts over: what it said before no longer holds.
            self.devices, self.unhealthy, self.registered, self.failure = {}, {}, [], None
            self.driver = fields.get("driver")
        elif event == "nvml_init_failed" and fields.get("reason"):
            self.failure = InitFailure(fields["reason"], fields.get("error", ""), line, fields.get("fix", ""))
        elif event == "device" and "id" in fields:
            pci = normalize_bus_id(fields["pci"]) if fields.get("pci") else ""
            self.devices[fields["id"]] = LoggedDevice(fields["id"], fields.get("uuid", ""), pci, fields.get("name", ""))
        elif event == "device_unhealthy":
            self.health.append(line)
            if "device" in fields:
                why = f"XID {fields['xid']}" if fields.get("xid") not in (None, "", "None") else "unhealthy"
                self.unhealthy[fields["device"]] = why + (" (fatal)" if fields.get("fatal") == "true" else "")
        elif event == "gpu_lost":
            self.health.append(line)
            for device_id in filter(None, fields.get("devices", "").split(",")):
                self.unhealthy[device_id] = "fell off the bus (GPU lost)"
        elif event == "device_recovered" and "device" in fields:
            self.unhealthy.pop(fields["device"], None)
        elif event == "registered":
            self.registered.append(line)
        elif event in ("kubelet_back", "restarting"):
            self.restart_seen = True
        elif event == "register_failed":
            self.register_failures.append(line)
        elif event not in ("plugin_ready", "server_started"):
            return False
        self.plugin = "bundled"
        return True

    def nvidia(self, line: str) -> None:
        """A klog line of NVIDIA's plugin, matched by its words."""
        if _NVIDIA_REGISTERED.search(line):
            self.plugin = self.plugin or "nvidia"
            self.registered.append(line)
        elif _NVIDIA_RESTART.search(line):
            self.plugin, self.restart_seen = self.plugin or "nvidia", True
        elif _NVIDIA_NO_DEVICES.search(line):
            self.plugin = self.plugin or "nvidia"
            if self.failure is None:
                self.failure = InitFailure("no_devices", "No devices found", line)
        elif _NVIDIA_UNHEALTHY.search(line):
            self.health.append(line)
        elif _NVIDIA_REGISTER_FAILED.search(line):
            self.register_failures.append(line)
        else:
            reason = nvidia_init_reason(line)
            # The first NVML failure is the cause; "No devices found" after it is its effect.
            if reason is not None and (self.failure is None or self.failure.reason == "no_devices"):
                self.plugin = self.plugin or "nvidia"
                self.failure = InitFailure(reason, klog_message(line), line)


def nvidia_init_reason(line: str) -> str | None:
    """The reason keyword for a line of NVIDIA's plugin that says NVML failed; None otherwise."""
    for reason, pattern in _NVIDIA_INIT_PATTERNS:
        if pattern.search(line):
            return reason
    return None


def klog_message(line: str) -> str:
    """The message of a klog line (`E0101 12:00:00.000000       1 main.go:123] message`)."""
    found = _KLOG.match(line)
    return found.group(1) if found else line.strip()


def read_plugin_log(text: str | None) -> PluginLog:
    lines = [line.rstrip() for line in (text or "").splitlines() if line.strip()]
    reader = _Reader()
    for line in lines:
        parsed = parse_event_line(line)
        if parsed is None or not reader.bundled(line, *parsed):
            reader.nvidia(line)
    return PluginLog(
        plugin=reader.plugin,
        init_failure=reader.failure,
        registered=tuple(reader.registered),
        kubelet_restart_seen=reader.restart_seen,
        health_lines=tuple(reader.health),
        register_failures=tuple(reader.register_failures),
        lines=len(lines),
        devices=tuple(reader.devices.values()),
        unhealthy_devices=reader.unhealthy,
        driver=reader.driver,
    )
