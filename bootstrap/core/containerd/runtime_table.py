"""The `nvidia` runtime's table in containerd's CRI config: what gpunode writes there, and
the notes that say what it means (plan.py decides where it goes).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gpunode.bootstrap.core.containerd.schema import RUNC_V2, ContainerdRules
from gpunode.bootstrap.core.containerd.toml_edit import strictly_equal

DEFAULT_DROPIN_PATH = "/etc/containerd/conf.d/99-nvidia.toml"


@dataclass(frozen=True)
class RuntimeSettings:
    """What to write: the runtime's name and binary, default or not, and where."""

    runtime_name: str = "nvidia"
    binary_name: str = "/usr/bin/nvidia-container-runtime"
    set_default_runtime: bool = False
    in_place: bool = False
    dropin_path: str = DEFAULT_DROPIN_PATH


# -- the runtime table -------------------------------------------------------------------


def with_runtime(
    cri: Mapping[str, Any] | None,
    rules: ContainerdRules,
    settings: RuntimeSettings,
    notes: list[str],
    *,
    add_builtin_runc: bool,
) -> dict[str, Any]:
    """A copy of the CRI table with the runtime written (and runc, where 1.x needs it)."""
    name = settings.runtime_name
    new = copy.deepcopy(dict(cri)) if isinstance(cri, Mapping) else {}
    containerd = new.setdefault("containerd", {})
    table = containerd.get("runtimes")
    if add_builtin_runc and not table:
        table = containerd["runtimes"] = {"runc": rules.builtin_runc()}
        notes.append(
            f"containerd {rules.label} drops its built-in runc runtime as soon as a config names "
            "any runtime, which would leave pods without their default runtime; gpunode writes "
            "runc explicitly, with its built-in settings."
        )
    elif table is None:
        table = containerd["runtimes"] = {}
    existing = table.get(name)
    existing = existing if isinstance(existing, Mapping) else {}
    base_name, base = _base_runtime(containerd, table, name, builtin_runc=not rules.runtimes_replace_builtin)
    desired = _desired_runtime(existing, base_name, base, settings.binary_name)
    table[name] = desired
    notes.extend(_runtime_notes(name, existing, desired, base_name, base, settings.binary_name))
    current_default = containerd.get("default_runtime_name", "runc")
    if settings.set_default_runtime:
        containerd["default_runtime_name"] = name
        notes.append(_default_runtime_note(name, already=current_default == name))
    elif current_default == name:
        notes.append(
            f"{name} is already the default runtime (default_runtime_name, set before gpunode); "
            "it is left so. " + _default_runtime_note(name, already=True, leading=False)
        )
    return new


def _base_runtime(
    containerd: Mapping[str, Any], table: Mapping[str, Any], name: str, *, builtin_runc: bool
) -> tuple[str | None, Mapping[str, Any]]:
    """The runc-shim runtime whose options the new runtime inherits: runc, else the default one.

    runc comes first because the NVIDIA runtime wraps runc; and because a default runtime
    set to "nvidia" by an earlier run must not change what is inherited (idempotence).
    `builtin_runc`: containerd still has its built-in runc when the file does not name it.
    """
    default = containerd.get("default_runtime_name") or "runc"
    for candidate in dict.fromkeys(("runc", default)):
        if candidate == name:
            continue
        runtime = table.get(candidate)
        if runtime is None and candidate == "runc" and builtin_runc:
            return "runc", {}
        if isinstance(runtime, Mapping) and runtime.get("runtime_type", RUNC_V2) == RUNC_V2:
            return candidate, runtime
    return None, {}


def _desired_runtime(
    existing: Mapping[str, Any], base_name: str | None, base: Mapping[str, Any], binary: str
) -> dict[str, Any]:
    """The runtime table: existing keys kept, missing ones inherited, three keys enforced."""
    desired: dict[str, Any] = {"runtime_type": RUNC_V2} if not existing else {}
    desired.update(copy.deepcopy(dict(existing)))
    desired["runtime_type"] = RUNC_V2
    for key, value in base.items():
        if key not in desired and key != "options":
            desired[key] = copy.deepcopy(value)
    base_options = base.get("options") if isinstance(base.get("options"), Mapping) else {}
    existing_options = existing.get("options") if isinstance(existing.get("options"), Mapping) else {}
    assert isinstance(base_options, Mapping) and isinstance(existing_options, Mapping)
    options: dict[str, Any] = {"BinaryName": binary} if not existing_options else {}
    options.update(copy.deepcopy(dict(existing_options)))
    for key, value in base_options.items():
        if key not in options:
            options[key] = copy.deepcopy(value)
    options["BinaryName"] = binary
    # The cgroup driver must be the one every other pod (and the kubelet) uses; with no
    # runc-shim runtime to take it from, an existing setting stands.
    if base_name is not None:
        options["SystemdCgroup"] = copy.deepcopy(base_options.get("SystemdCgroup", False))
    else:
        options["SystemdCgroup"] = copy.deepcopy(existing_options.get("SystemdCgroup", False))
    desired["options"] = options
    return desired


def _runtime_notes(
    name: str,
    existing: Mapping[str, Any],
    desired: Mapping[str, Any],
    base_name: str | None,
    base: Mapping[str, Any],
    binary: str,
) -> list[str]:
    notes: list[str] = []
    options = desired["options"]
    cgroup = "true" if options["SystemdCgroup"] is True else str(options["SystemdCgroup"]).lower()
    if base_name is None:
        origin = "there is no runc-shim runtime to inherit options from"
    else:
        inherited = [k for k in (base.get("options") or {}) if k not in ("BinaryName",)]
        origin = f"options inherited from runtime {base_name} ({', '.join(inherited) or 'it sets none'})"
    if not existing:
        notes.append(f'adds runtime "{name}": the runc v2 shim running {binary}, SystemdCgroup = {cgroup}; {origin}.')
        return notes
    old_options = existing.get("options") if isinstance(existing.get("options"), Mapping) else {}
    assert isinstance(old_options, Mapping)
    old_binary = old_options.get("BinaryName")
    if old_binary != binary:
        notes.append(f'runtime "{name}" existed with BinaryName {old_binary!r}; corrected to {binary!r}.')
    if old_options.get("SystemdCgroup", False) != options["SystemdCgroup"]:
        notes.append(
            f'runtime "{name}" had SystemdCgroup = {str(old_options.get("SystemdCgroup", False)).lower()}; '
            f"set to {cgroup} like {base_name or 'runc'}, so GPU pods use the node's cgroup driver."
        )
    if existing.get("runtime_type") != RUNC_V2:
        notes.append(f'runtime "{name}" had runtime_type {existing.get("runtime_type")!r}; set to "{RUNC_V2}".')
    if strictly_equal(dict(existing), dict(desired)):
        notes.append(f'runtime "{name}" is already configured as wanted.')
    return notes


def _default_runtime_note(name: str, *, already: bool, leading: bool = True) -> str:
    head = f'makes "{name}" the default runtime, as asked. ' if leading and not already else ""
    return head + (
        "That alone gives pods no GPUs (F4, docs/failure-modes.md): a default runtime only wraps every "
        "container in the NVIDIA hook; a pod sees GPUs only when it requests nvidia.com/gpu, so "
        "that the device plugin picks the devices, and it should name the runtime explicitly "
        f"(RuntimeClass {name}, runtimeClassName: {name}) so it keeps working whatever the "
        "default is. Pods that need no GPU now also run through the NVIDIA runtime."
    )


def runtime_class_notes(settings: RuntimeSettings) -> list[str]:
    return [
        f'pods reach this runtime through a RuntimeClass whose handler is "{settings.runtime_name}" '
        f"(runtimeClassName: {settings.runtime_name}); the handler must equal the runtime name (F17)."
    ]


# -- in-place mode -----------------------------------------------------------------------
