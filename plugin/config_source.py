"""Per-node config: a ConfigMap of named configs (mounted as a directory, one file per
name) and the node label `nvidia.com/device-plugin.config` choosing one, as NVIDIA's
config-manager does it, but inside the plugin process: a change of the label or of the
ConfigMap's files reaches the plugin within seconds and needs no pod restart.

Which config, as NVIDIA's config-manager chooses: the label's value when the label is set
(a name the ConfigMap lacks is refused and the config in force stays); else the default
(`--default-config`); else the config named `default`; else the only config, when there
is one; else none (the plugin's flags alone).

This module only chooses and reads; whether a config is good enough to switch to is the
caller's (serve.py) decision, which it logs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gpunode.plugin.kube_client import KubeApiError, KubeClient
from gpunode.plugin.log import log_event
from gpunode.plugin.watch import DirectoryWatcher

DEFAULT_LABEL = "nvidia.com/device-plugin.config"
FALLBACK_NAME = "default"
RETRY_SECONDS = 1.0


@dataclass(frozen=True)
class Choice:
    """The config to use: its name (None: no config, the flags alone) and text, or the
    reason none can be chosen (`problem`), which keeps the config in force."""

    name: str | None
    text: str | None = None
    problem: str | None = None
    label: str | None = None


def config_names(directory: Path) -> list[str]:
    """The configs in a mounted ConfigMap: its files, without the `..data` bookkeeping."""
    try:
        return sorted(p.name for p in directory.iterdir() if not p.name.startswith(".") and p.is_file())
    except OSError:
        return []


def choose(label: str | None, directory: Path, default: str | None) -> Choice:
    names = config_names(directory)

    def read(name: str) -> Choice:
        try:
            return Choice(name=name, text=(directory / name).read_text(), label=label)
        except (OSError, UnicodeDecodeError) as exc:
            return Choice(name=None, problem=f"config {name} cannot be read: {exc}", label=label)

    if label:
        if label not in names:
            shown = ", ".join(names) or "none"
            return Choice(
                name=None,
                problem=f"the node label {DEFAULT_LABEL}={label} names a config the ConfigMap does not have "
                f"(it has: {shown})",
                label=label,
            )
        return read(label)
    if default:
        if default not in names:
            return Choice(name=None, problem=f"the default config {default} is not in the ConfigMap", label=label)
        return read(default)
    if FALLBACK_NAME in names:
        return read(FALLBACK_NAME)
    if len(names) == 1:
        return read(names[0])
    return Choice(name=None, text=None, label=label)


class NodeConfigWatcher(threading.Thread):
    """Follows the node's label (an API watch) and the ConfigMap's directory (inotify), and
    calls `on_choice` whenever the chosen config (name or content) may have changed."""

    def __init__(
        self,
        client: KubeClient,
        node_name: str,
        label_key: str,
        directory: Path,
        default: str | None,
        on_choice: Callable[[Choice], None],
    ) -> None:
        super().__init__(name="node-config", daemon=True)
        self._client = client
        self._node = node_name
        self._label_key = label_key
        self._directory = directory
        self._default = default
        self._on_choice = on_choice
        self._label: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._files = DirectoryWatcher(directory, self.reevaluate, poll_seconds=2.0)

    def initial(self) -> Choice:
        """The choice at start, from one read of the node (its label unknown if the API
        cannot be reached: the fallback order then decides, and the watch corrects it)."""
        try:
            node = self._client.get_node(self._node)
            self._label = node.get("metadata", {}).get("labels", {}).get(self._label_key) or None
        except KubeApiError as exc:
            log_event("node_label_unknown", node=self._node, label=self._label_key, error=str(exc))
        return choose(self._label, self._directory, self._default)

    def reevaluate(self) -> None:
        with self._lock:
            choice = choose(self._label, self._directory, self._default)
        self._on_choice(choice)

    def stop(self) -> None:
        self._stop.set()
        self._files.stop()

    def run(self) -> None:
        self._files.start()
        version = ""
        while not self._stop.is_set():
            try:
                if not version:
                    node = self._client.get_node(self._node)
                    version = node["metadata"].get("resourceVersion", "")
                    self._label_seen(node)
                for event in self._client.watch_node(self._node, version):
                    if event.get("type") == "ERROR":
                        version = ""  # too old: read the node again
                        break
                    node = event.get("object", {})
                    version = node.get("metadata", {}).get("resourceVersion", version)
                    if event.get("type") in ("ADDED", "MODIFIED"):
                        self._label_seen(node)
            except (KubeApiError, KeyError, TypeError) as exc:
                log_event("node_watch_failed", node=self._node, error=str(exc), retry_in=f"{RETRY_SECONDS:g}s")
                version = ""
                self._stop.wait(RETRY_SECONDS)
            else:
                time.sleep(0)  # the stream ended on its timeout: watch again from `version`

    def _label_seen(self, node: dict[str, object]) -> None:
        metadata = node.get("metadata")
        labels = metadata.get("labels", {}) if isinstance(metadata, dict) else {}
        label = labels.get(self._label_key) if isinstance(labels, dict) else None
        with self._lock:
            changed = (label or None) != self._label
            self._label = label or None
        if changed:
            log_event("node_label_changed", node=self._node, label=self._label_key, value=label or None)
            self.reevaluate()
