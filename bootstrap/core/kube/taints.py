"""Taints and tolerations, as the scheduler and the DaemonSet controller match them (F15).

A GPU node is often tainted (`nvidia.com/gpu=present:NoSchedule`, or a site's own
`dedicated=ml:NoSchedule`); a device plugin DaemonSet that does not tolerate every
NoSchedule/NoExecute taint of a node never runs there, and nothing says so except a
DESIRED count one short. These rules let gpunode name the taint before waiting for a
rollout that cannot happen.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gpunode.bootstrap.errors import UserError

EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
# Effects that keep a pod off a node; PreferNoSchedule only steers the scheduler.
BLOCKING_EFFECTS = ("NoSchedule", "NoExecute")

_QUALIFIED_NAME = re.compile(
    r"^(?:[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE = re.compile(r"^(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


@dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: str

    def __str__(self) -> str:
        return f"{self.key}={self.value}:{self.effect}" if self.value else f"{self.key}:{self.effect}"

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Taint:
        return cls(str(data.get("key", "")), str(data.get("value", "") or ""), str(data.get("effect", "")))


@dataclass(frozen=True)
class Toleration:
    """`operator` Exists (any value) or Equal; an empty effect tolerates every effect."""

    key: str
    operator: str = "Exists"
    value: str = ""
    effect: str = ""

    def as_api(self) -> dict[str, str]:
        data = {"key": self.key, "operator": self.operator}
        if self.operator == "Equal":
            data["value"] = self.value
        if self.effect:
            data["effect"] = self.effect
        return data

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Toleration:
        return cls(
            str(data.get("key", "") or ""),
            str(data.get("operator", "") or "Equal"),
            str(data.get("value", "") or ""),
            str(data.get("effect", "") or ""),
        )

    def tolerates(self, taint: Taint) -> bool:
        if self.effect and self.effect != taint.effect:
            return False
        if not self.key:  # an empty key with Exists tolerates everything
            return self.operator == "Exists"
        if self.key != taint.key:
            return False
        return self.operator == "Exists" or self.value == taint.value


# What every gpunode device plugin DaemonSet and verify pod tolerates (F15).
GPU_TOLERATION = Toleration("nvidia.com/gpu", "Exists")


def parse_toleration(text: str) -> Toleration:
    """`KEY`, `KEY:EFFECT`, `KEY=VALUE` or `KEY=VALUE:EFFECT`, as `kubectl taint` writes taints."""
    rest, _, effect = text.partition(":") if ":" in text else (text, "", "")
    key, eq, value = rest.partition("=")
    fix = (
        "write it as a taint is written: KEY[=VALUE][:EFFECT], e.g. dedicated=ml:NoSchedule "
        f"(effects: {', '.join(EFFECTS)})"
    )
    if not key or not _QUALIFIED_NAME.match(key):
        raise UserError(f"--toleration {text!r}: {key!r} is not a taint key.", fix=fix)
    if eq and not _LABEL_VALUE.match(value):
        raise UserError(f"--toleration {text!r}: {value!r} is not a taint value.", fix=fix)
    if effect and effect not in EFFECTS:
        raise UserError(f"--toleration {text!r}: {effect!r} is not a taint effect.", fix=fix)
    return Toleration(key, "Equal" if eq else "Exists", value, effect)


def untolerated_taints(
    tolerations: Iterable[Toleration], taints: Iterable[Taint], effects: Sequence[str] = BLOCKING_EFFECTS
) -> list[Taint]:
    """The node's taints (of `effects`) that none of the tolerations tolerates."""
    held = list(tolerations)
    return [taint for taint in taints if taint.effect in effects and not any(t.tolerates(taint) for t in held)]


def node_taints(node: Mapping[str, Any]) -> list[Taint]:
    spec = node.get("spec") or {}
    taints = [Taint.from_api(t) for t in spec.get("taints") or [] if isinstance(t, dict)]
    if spec.get("unschedulable"):
        # A cordoned node carries this taint; DaemonSet pods tolerate it by default.
        taints.append(Taint("node.kubernetes.io/unschedulable", "", "NoSchedule"))
    return taints


# Tolerations the DaemonSet controller adds to every daemon pod by itself.
DAEMON_POD_TOLERATIONS = (
    Toleration("node.kubernetes.io/not-ready", "Exists", effect="NoExecute"),
    Toleration("node.kubernetes.io/unreachable", "Exists", effect="NoExecute"),
    Toleration("node.kubernetes.io/disk-pressure", "Exists", effect="NoSchedule"),
    Toleration("node.kubernetes.io/memory-pressure", "Exists", effect="NoSchedule"),
    Toleration("node.kubernetes.io/pid-pressure", "Exists", effect="NoSchedule"),
    Toleration("node.kubernetes.io/unschedulable", "Exists", effect="NoSchedule"),
)
