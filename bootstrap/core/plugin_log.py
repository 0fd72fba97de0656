"""What a device plugin's log says: gpunode's bundled plugin and NVIDIA's k8s-device-plugin.

The bundled plugin writes one event per line (`nvml_init_failed reason=... error="..."`,
`registered resource=...`, `device_unhealthy ...`); NVIDIA's plugin writes klog lines
(`could not load NVML library: ...`, `No devices found. Waiting indefinitely.`,
`Registered device plugin for 'nvidia.com/gpu' with Kubelet`). Both become the same
findings, with the NVML failure named by the bundled plugin's reason keywords.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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

_EVENT_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')

# NVIDIA's plugin (and the go-nvml / go-nvlib words it prints), most specific first.
_NVIDIA_INIT_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "library_unusable",
        re.compile(
            r"GLIBC_PRIVATE|version `GLIBC_|wrong ELF class|ELFCLASS32|"
            r"symbol lookup error",
            re.IGNORECASE,
        ),
    ),
    (
        "library_not_found",
        re.compile(
            r"could not load NVML library|libnvidia-ml\.so\.1: cannot open "
            r"shared object file|ERROR_LIBRARY_NOT_FOUND|NVML Shared Library "
            r"Not Found|Incompatible platform detected",
            re.IGNORECASE,
        ),
    ),
    (
        "driver_library_mismatch",
        re.compile(
            r"Driver/library version mismatch|"
            r"ERROR_LIB_RM_VERSION_MISMATCH",
            re.IGNORECASE,
        ),
    ),
    ("driver_not_loaded", re.compile(r"Driver Not Loaded|ERROR_DRIVER_NOT_LOADED", re.IGNORECASE)),
    (
        "mig_no_permission",
        re.compile(
            r"(MIG|mig).*(Insufficient Permissions|ERROR_NO_PERMISSION)|"
            r"(Insufficient Permissions|ERROR_NO_PERMISSION).*(MIG|mig)"
        ),
    ),
    ("no_permission", re.compile(r"Insufficient Permissions|ERROR_NO_PERMISSION", re.IGNORECASE)),
    (
        "nvml_unknown_error",
        re.compile(
            r"nvml init failed: (Unknown Error|ERROR_UNKNOWN)|"
            r"Failed to initialize NVML: Unknown Error",
            re.IGNORECASE,
        ),
    ),
    (
        "mig_strategy_mismatch",
        re.compile(
            r"Incompatible strategy detected|invalid MIG strategy|"
            r"mixed strategy",
            re.IGNORECASE,
        ),
    ),
    ("nvml_error", re.compile(r"nvml init failed|Failed to initialize NVML", re.IGNORECASE)),
)
_NVIDIA_NO_DEVICES = re.compile(r"No devices found\. Waiting indefinitely", re.IGNORECASE)
_NVIDIA_REGISTERED = re.compile(r"Registered device plugin for '([^']+)' with Kubelet")
_NVIDIA_RESTART = re.compile(r"inotify: \S*kubelet\.sock created, restarting")
_NVIDIA_UNHEALTHY = re.compile(
    r"XidCriticalError|device marked unhealthy|will go unhealthy|"
    r"marking device .* unhealthy",
    re.IGNORECASE,
)
_NVIDIA_REGISTER_FAILED = re.compile(
    r"Could not contact Kubelet|Could not register device plugin|"
    r"failed to register",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class InitFailure:
    reason: str  # one of INIT_REASONS
    error: str  # NVML's or the loader's words
    line: str  # the log line that says so


@dataclass(frozen=True)
class PluginLog:
    plugin: str | None  # "bundled", "nvidia" or None when nothing told them apart
    init_failure: InitFailure | None
    registered: tuple[str, ...]  # the registration lines, in order
    kubelet_restart_seen: bool  # the plugin noticed a kubelet restart (and re-registered)
    unhealthy: tuple[str, ...]  # device health lines
    register_failures: tuple[str, ...]
    lines: int

    @property
    def empty(self) -> bool:
        return self.lines == 0


def event_fields(line: str) -> tuple[str, dict[str, str]]:
    """`event k=v k2="v 2"` (the bundled plugin's format) -> (event, fields)."""
    event, _, rest = line.strip().partition(" ")
    fields: dict[str, str] = {}
    for key, value in _EVENT_FIELD.findall(rest):
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            value = re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value[1:-1])
        fields[key] = value
    return event, fields


def _nvidia_reason(line: str) -> str | None:
    for reason, pattern in _NVIDIA_INIT_PATTERNS:
        if pattern.search(line):
            return reason
    return None


def read_plugin_log(text: str | None) -> PluginLog:
    lines = [line.rstrip() for line in (text or "").splitlines() if line.strip()]
    plugin: str | None = None
    failure: InitFailure | None = None
    registered: list[str] = []
    restart_seen = False
    unhealthy: list[str] = []
    register_failures: list[str] = []
    for line in lines:
        event, fields = event_fields(line)
        if event == "nvml_init_failed" and fields.get("reason"):
            plugin = "bundled"
            failure = InitFailure(fields["reason"], fields.get("error", ""), line)
            continue
        if event in ("registered", "plugin_ready", "plugin_starting", "device", "server_started"):
            plugin = "bundled"
            if event == "registered":
                registered.append(line)
            continue
        if event in ("kubelet_back", "restarting"):
            plugin, restart_seen = "bundled", True
            continue
        if event in ("device_unhealthy", "gpu_lost"):
            plugin = "bundled"
            unhealthy.append(line)
            continue
        if event == "register_failed":
            plugin = "bundled"
            register_failures.append(line)
            continue
        # NVIDIA's plugin: klog lines, matched by their words.
        if _NVIDIA_REGISTERED.search(line):
            plugin = plugin or "nvidia"
            registered.append(line)
        elif _NVIDIA_RESTART.search(line):
            plugin, restart_seen = plugin or "nvidia", True
        elif _NVIDIA_NO_DEVICES.search(line):
            plugin = plugin or "nvidia"
            if failure is None:
                failure = InitFailure("no_devices", "No devices found", line)
        elif _NVIDIA_UNHEALTHY.search(line):
            unhealthy.append(line)
        elif _NVIDIA_REGISTER_FAILED.search(line):
            register_failures.append(line)
        else:
            reason = _nvidia_reason(line)
            # The first NVML failure is the cause; "No devices found" after it is its effect.
            if reason is not None and (failure is None or failure.reason == "no_devices"):
                plugin = plugin or "nvidia"
                failure = InitFailure(reason, _after_colon(line), line)
    return PluginLog(
        plugin, failure, tuple(registered), restart_seen, tuple(unhealthy), tuple(register_failures), len(lines)
    )


def _after_colon(line: str) -> str:
    # klog: `E0101 12:00:00.000000       1 main.go:123] message`
    found = re.match(r"^[IWEF]\d{4} [\d:.]+\s+\d+ [^\]]+\] (.*)$", line)
    return found.group(1) if found else line.strip()
