"""What gpunode recorded about a host it bootstrapped: /var/lib/gpunode/state.json.

The record carries no timestamp, so an unchanged host keeps a byte-identical file and a
re-run writes nothing. verify, doctor and the next bootstrap read it back.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

STATE_PATH = "/var/lib/gpunode/state.json"
RECORD_FORMAT = 1


@dataclass(frozen=True)
class HostRecord:
    gpunode_version: str
    node_name: str
    gpu_count: int
    gpus: tuple[str, ...] = ()
    driver_version: str | None = None
    driver_packages: dict[str, str] = field(default_factory=dict)
    kernel_module: str = "dkms"
    nvml_library: str | None = None
    toolkit_version: str | None = None
    containerd_files: tuple[str, ...] = ()
    runtime_path: str | None = None
    plugin_mode: str = "daemonset"

    def to_json(self) -> str:
        data: dict[str, Any] = {"format": RECORD_FORMAT, **asdict(self)}
        return json.dumps(data, indent=2, sort_keys=True) + "\n"


def parse_record(text: str | None) -> HostRecord | None:
    """The record, or None when there is none or it cannot be read (it is only a record)."""
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT:
        return None
    known = {f.name for f in fields(HostRecord)}
    values = {k: v for k, v in data.items() if k in known}
    for key in ("gpus", "containerd_files"):
        if isinstance(values.get(key), list):
            values[key] = tuple(values[key])
    try:
        return HostRecord(**values)
    except TypeError:
        return None
