"""Read containerd's effective config: the output of `containerd config dump`.

The dump is the merged config containerd would run with (main file, imports, built-in
defaults); 1.x prints it in schema 2, 2.x in schema 3 whatever the file's schema was. These
readers are what the node step validates a new config with before a restart, what the
verify suite checks, and what `gpunode doctor` judges a node by (docs/failure-modes.md, F17).
"""

from __future__ import annotations

import sys
from typing import Any

from gpunode.bootstrap.core.containerd.schema import RUNC_V2, default_runtime_path, runtimes_path
from gpunode.bootstrap.core.containerd.toml_edit import lookup
from gpunode.bootstrap.errors import HostStateError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


def _load_dump(dump_text: str) -> tuple[dict[str, Any], int]:
    try:
        data = tomllib.loads(dump_text)
    except tomllib.TOMLDecodeError as exc:
        raise HostStateError(
            f"the output of `containerd config dump` is not TOML ({exc}).",
            fix="run `containerd config dump` on the node and read its error; containerd "
            "prints its config only when the config loads.",
        ) from None
    version = data.get("version", 1)
    if not isinstance(version, int) or version < 2:
        raise HostStateError(
            f"the containerd config dump says version {version!r}; gpunode reads dumps of "
            "containerd 1.3 and later (version 2 or newer).",
            fix="upgrade containerd to 1.6 or later.",
        )
    return data, version


def dump_schema(dump_text: str) -> int:
    """The config schema the dump is printed in (2 for containerd 1.x, 3 or 4 for 2.x)."""
    return _load_dump(dump_text)[1]


def runtimes(dump_text: str) -> dict[str, dict[str, Any]]:
    """Every CRI runtime in the dump, by name (plain data)."""
    data, version = _load_dump(dump_text)
    found = lookup(data, runtimes_path(version))
    if not isinstance(found, dict):
        return {}
    return {name: table for name, table in found.items() if isinstance(table, dict)}


def effective_runtime(dump_text: str, runtime_name: str = "nvidia") -> dict[str, object] | None:
    """The runtime's table as containerd will use it, or None when it has no such runtime."""
    runtime: dict[str, object] | None = runtimes(dump_text).get(runtime_name)
    return runtime


def default_runtime_name(dump_text: str) -> str:
    """The runtime CRI uses for pods without a RuntimeClass (`runc` unless changed)."""
    data, version = _load_dump(dump_text)
    name = lookup(data, default_runtime_path(version))
    return name if isinstance(name, str) and name else "runc"


def runtime_binary(runtime: dict[str, object]) -> str:
    """The OCI runtime binary a runc-shim runtime runs (`runc` when BinaryName is empty)."""
    options = runtime.get("options")
    binary = options.get("BinaryName") if isinstance(options, dict) else None
    return binary if isinstance(binary, str) and binary else "runc"


def systemd_cgroup(runtime: dict[str, object]) -> bool:
    options = runtime.get("options")
    return bool(isinstance(options, dict) and options.get("SystemdCgroup") is True)


def runtime_problems(
    dump_text: str,
    *,
    runtime_name: str = "nvidia",
    binary_name: str | None = None,
) -> tuple[str, ...]:
    """What is wrong with the runtime in an effective config, in plain words; () when fine.

    With `binary_name`, the runtime must run exactly that binary; without, any binary whose
    name starts with `nvidia-container-runtime`.
    """
    found = runtimes(dump_text)
    runtime = found.get(runtime_name)
    if runtime is None:
        names = ", ".join(sorted(found)) or "none"
        return (
            f'containerd has no runtime "{runtime_name}" (it has: {names}); pods with '
            f'runtimeClassName: {runtime_name} fail with `no runtime for "{runtime_name}" is '
            "configured` (F17). Write the runtime (gpunode bootstrap, or gpunode render "
            "containerd) and restart containerd.",
        )
    problems: list[str] = []
    runtime_type = runtime.get("runtime_type")
    if runtime_type != RUNC_V2:
        problems.append(
            f'runtime "{runtime_name}" has runtime_type {runtime_type!r}, not "{RUNC_V2}": '
            "the NVIDIA runtime is run through the runc v2 shim."
        )
    binary = runtime_binary(runtime)
    if binary_name is not None and binary != binary_name:
        problems.append(
            f'runtime "{runtime_name}" runs {binary!r}, not {binary_name!r}: containers get no '
            "NVIDIA devices or libraries unless the NVIDIA container runtime wraps runc."
        )
    elif binary_name is None and not binary.rsplit("/", 1)[-1].startswith("nvidia-container-runtime"):
        problems.append(
            f'runtime "{runtime_name}" runs {binary!r}, which is not the NVIDIA container '
            "runtime: containers get no NVIDIA devices or libraries."
        )
    reference_name = default_runtime_name(dump_text)
    if reference_name == runtime_name:
        reference_name = "runc"
    reference = found.get(reference_name)
    if reference is not None and systemd_cgroup(reference) != systemd_cgroup(runtime):
        problems.append(
            f'runtime "{runtime_name}" has SystemdCgroup = {str(systemd_cgroup(runtime)).lower()} '
            f'but "{reference_name}" has {str(systemd_cgroup(reference)).lower()}: GPU pods would '
            "use a different cgroup driver from every other pod (and from the kubelet's)."
        )
    return tuple(problems)
