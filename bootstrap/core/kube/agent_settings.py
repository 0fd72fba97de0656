"""The agent's node settings: the same settings as `gpunode bootstrap`, from a ConfigMap. Pure.

The ConfigMap `gpunode-agent` (key `settings.yaml`) holds what an inventory holds for SSH
runs, without the `gpunode_` prefix, plus per-node overrides chosen by the Node's labels:

    settings:                       # every node
      driver_version: 535.261.03
      kernel_module: none
    nodes:                          # then, in order, each entry whose selector matches
      - selector: {nvidia.com/gpu.product: Tesla-K80}
        settings: {driver_branch: "470"}

The values are checked by bootstrap's own settings rules (`resolve_settings`), so a value
refused on the command line is refused here too, named with where it came from. Paths of
the operator's machine in bootstrap (`toolkit_packages`, `plugin_wheels`) are paths in the
agent's container here (a volume with the packages, for air-gapped nodes).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

import yaml

from gpunode.bootstrap.core.settings import DATA_PREFIX, NodeSettings, resolve_settings
from gpunode.bootstrap.errors import UserError

CONFIGMAP_NAME = "gpunode-agent"
CONFIGMAP_KEY = "settings.yaml"


def _mapping(where: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise UserError(
            f"{where} is not a mapping of setting names to values.",
            fix=f"write {where} as `name: value` lines (see gpunode render agent)",
        )
    return value


def parse_agent_config(text: str | None) -> tuple[dict[str, Any], list[tuple[dict[str, str], dict[str, Any]]]]:
    """(settings for every node, [(selector, settings)]) from the ConfigMap's text."""
    where = f"ConfigMap {CONFIGMAP_NAME} key {CONFIGMAP_KEY}"
    if not text or not text.strip():
        return {}, []
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"{where} is not YAML: {exc}", fix="fix the YAML in the ConfigMap") from exc
    data = _mapping(where, data)
    unknown = sorted(set(data) - {"settings", "nodes"})
    if unknown:
        raise UserError(f"{where} has unknown key(s) {', '.join(unknown)}.", fix="use only `settings` and `nodes`")
    common = _mapping(f"{where}: settings", data.get("settings"))
    overrides: list[tuple[dict[str, str], dict[str, Any]]] = []
    entries = data.get("nodes") or []
    if not isinstance(entries, list):
        raise UserError(f"{where}: nodes is not a list.", fix="write nodes as a list of {selector, settings}")
    for index, entry in enumerate(entries):
        entry = _mapping(f"{where}: nodes[{index}]", entry)
        selector = _mapping(f"{where}: nodes[{index}].selector", entry.get("selector"))
        if not selector:
            raise UserError(
                f"{where}: nodes[{index}] has no selector.", fix="give the node labels it applies to, e.g. {k: v}"
            )
        overrides.append(
            (
                {k: str(v) for k, v in selector.items()},
                _mapping(f"{where}: nodes[{index}].settings", entry.get("settings")),
            )
        )
    return common, overrides


def node_settings(
    node_name: str, labels: Mapping[str, str], config_text: str | None, flags: Mapping[str, Any]
) -> NodeSettings:
    """ConfigMap settings, then the overrides whose selector the node's labels match (in
    order, later wins), then the agent's own flags; checked as bootstrap checks them."""
    common, overrides = parse_agent_config(config_text)
    known = {f.name for f in fields(NodeSettings)}
    data: dict[str, Any] = {}
    for source, values in [("settings", common)] + [
        (f"nodes entry {selector}", values)
        for selector, values in overrides
        if all(labels.get(k) == v for k, v in selector.items())
    ]:
        for name, value in values.items():
            if name not in known:
                allowed = ", ".join(sorted(known))
                raise UserError(
                    f"ConfigMap {CONFIGMAP_NAME}: {source}: {name!r} is not an agent setting.",
                    fix=f"use one of: {allowed}",
                )
            data[DATA_PREFIX + name] = value
    return resolve_settings(f"node {node_name}", data, dict(flags))
