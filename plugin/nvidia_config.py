"""NVIDIA's device plugin config file (`version: v1`), read as NVIDIA's plugin reads it.

The schema is NVIDIA's (api/config/v1 of k8s-device-plugin): `flags` (with `plugin` and
`gfd` sections), `resources` (`gpus`/`mig` name patterns), `sharing` (`timeSlicing` or
`mps`), `imex`. NVIDIA's parser ignores keys it does not know; this one refuses them, and
refuses values gpunode's plugin cannot honour, naming the key and its line in the file, so
that nothing in a config is silently without effect.

NVIDIA's rules kept here: a resource name without the `nvidia.com/` prefix gets it;
replicas must be at least 2; `renameByDefault` renames `<name>` to `<name>.shared`;
`sharing.mps` without `failRequestsGreaterThanOne` refuses requests for more than one
replica (time-slicing does not, unless told); `devices` is `all`, a count, or a list of GPU
indices, MIG indices (`0:1`) or UUIDs. Where gpunode differs: it honours `resources`,
`rename` and `devices` (NVIDIA's current releases warn and ignore them), and it refuses a
config with both `timeSlicing` and `mps` replicas (NVIDIA silently takes MPS).

Pure apart from reading the file: text in, `FileConfig` out, `ConfigError` on refusal.
"""

from __future__ import annotations

import re
import uuid as uuidlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from gpunode.plugin.config import ConfigError, PluginConfig
from gpunode.plugin.sharing import (
    NO_SHARING,
    SHARED_SUFFIX,
    DeviceSelection,
    ReplicatedResource,
    ResourcePattern,
    Sharing,
    SharingStrategy,
)

NVIDIA_PREFIX = "nvidia.com"
MAX_RESOURCE_NAME = 63
DEFAULT_CDI_ANNOTATION_PREFIX = "cdi.k8s.io/"
DEFAULT_NVIDIA_CTK_PATH = "/usr/bin/nvidia-ctk"
DEFAULT_CONTAINER_DRIVER_ROOT = "/driver-root"

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$")
_GFD_KEYS = ("oneshot", "noTimestamp", "sleepInterval", "outputFile", "machineTypeFile")


class ConfigFileError(ConfigError):
    """A config file that cannot be used: which file, which line, which key, and the fix."""

    def __init__(self, source: str, line: int | None, key: str, problem: str, fix: str) -> None:
        where = f"{source} line {line}" if line is not None else source
        super().__init__(f"{where}: {key}: {problem}. Fix: {fix}")
        self.source, self.line, self.key, self.problem = source, line, key, problem


@dataclass(frozen=True)
class FileConfig:
    """What a config file sets. `settings` holds PluginConfig fields by their Python name,
    only those the file sets (command-line flags override them)."""

    source: str
    settings: dict[str, Any] = field(default_factory=dict)
    gpu_resources: tuple[ResourcePattern, ...] = ()
    mig_resources: tuple[ResourcePattern, ...] = ()
    sharing: Sharing = NO_SHARING
    notes: tuple[str, ...] = ()  # what the file sets that the plugin leaves to others (GFD)


# -- YAML nodes with their lines --


class _Reader:
    """Walks PyYAML's node tree (which keeps each node's line) with typed accessors."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._constructor = yaml.SafeLoader("")

    def fail(self, node: yaml.Node | None, key: str, problem: str, fix: str) -> ConfigFileError:
        line = node.start_mark.line + 1 if node is not None else None
        return ConfigFileError(self.source, line, key, problem, fix)

    def mapping(self, node: yaml.Node, key: str, allowed: tuple[str, ...]) -> dict[str, yaml.Node]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, key, "must be a mapping of keys to values", f"write {key} as `key: value` lines")
        out: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            name = self._constructor.construct_object(key_node, deep=True)
            path = f"{key}.{name}" if key else str(name)
            if not isinstance(name, str) or name not in allowed:
                raise self.fail(
                    key_node,
                    path,
                    "is not a key of NVIDIA's config v1 that gpunode supports",
                    f"remove it or correct its spelling; allowed here: {', '.join(allowed)}",
                )
            if name in out:
                raise self.fail(key_node, path, "is given twice", "keep one of the two")
            out[name] = value_node
        return out

    def value(self, node: yaml.Node) -> Any:
        return self._constructor.construct_object(node, deep=True)

    def scalar(self, node: yaml.Node, key: str, kind: type, fix: str) -> Any:
        value = self.value(node) if isinstance(node, yaml.ScalarNode) else None
        # bool is an int in Python: check it on its own.
        ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        if not ok:
            shown = (
                node.value
                if isinstance(node, yaml.ScalarNode)
                else ("a list" if isinstance(node, yaml.SequenceNode) else "a mapping")
            )
            raise self.fail(node, key, f"{shown!r} is not a {kind.__name__}", fix)
        return value

    def choice(self, node: yaml.Node, key: str, choices: tuple[str, ...], unsupported: dict[str, str]) -> str:
        value = self.scalar(node, key, str, f"use one of {', '.join(choices)}")
        if value in unsupported:
            raise self.fail(node, key, f"{value!r} is not supported by gpunode's plugin", unsupported[value])
        if value not in choices:
            raise self.fail(
                node, key, f"{value!r} is not one of {', '.join(choices)}", f"use one of {', '.join(choices)}"
            )
        return str(value)

    def sequence(self, node: yaml.Node, key: str) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, key, "must be a list", f"write {key} as a list of `- ...` items")
        return list(node.value)


def resource_name(reader: _Reader, node: yaml.Node, key: str) -> str:
    """NVIDIA's ResourceName: `nvidia.com/` added when missing, at most 63 characters,
    the part after the prefix a DNS subdomain."""
    raw = reader.scalar(node, key, str, "give a resource name such as nvidia.com/gpu")
    full = raw if raw.startswith(NVIDIA_PREFIX + "/") else f"{NVIDIA_PREFIX}/{raw}"
    local = full.split("/", 1)[1]
    if len(full) > MAX_RESOURCE_NAME:
        raise reader.fail(node, key, f"{full!r} is longer than {MAX_RESOURCE_NAME} characters", "use a shorter name")
    if not _DNS_SUBDOMAIN.match(local) or len(local) > 253:
        raise reader.fail(
            node,
            key,
            f"{full!r}: the part after nvidia.com/ must be lower-case letters, digits, '-' and '.'",
            "use a name such as nvidia.com/gpu or nvidia.com/gpu.shared",
        )
    return full


# -- sections --

_FLAG_KEYS = (
    "migStrategy",
    "failOnInitError",
    "mpsRoot",
    "nvidiaDriverRoot",
    "nvidiaDevRoot",
    "gdrcopyEnabled",
    "gdsEnabled",
    "mofedEnabled",
    "useNodeFeatureAPI",
    "deviceDiscoveryStrategy",
    "plugin",
    "gfd",
)
_PLUGIN_KEYS = (
    "passDeviceSpecs",
    "deviceListStrategy",
    "deviceIDStrategy",
    "cdiAnnotationPrefix",
    "nvidiaCTKPath",
    "containerDriverRoot",
    "sharedDevicesAllocationPolicy",
)


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _flags(reader: _Reader, node: yaml.Node, settings: dict[str, Any], notes: list[str]) -> None:
    entries = reader.mapping(node, "flags", _FLAG_KEYS)
    booleans = {
        "failOnInitError": "fail_on_init_error",
        "gdrcopyEnabled": "gdrcopy_enabled",
        "gdsEnabled": "gds_enabled",
        "mofedEnabled": "mofed_enabled",
    }
    for key, value in entries.items():
        path = f"flags.{key}"
        if _is_null(value):
            continue  # NVIDIA's null: the flag's default
        if key == "migStrategy":
            settings["mig_strategy"] = reader.choice(value, path, ("none", "single", "mixed"), {})
        elif key in booleans:
            settings[booleans[key]] = reader.scalar(value, path, bool, "use true or false")
        elif key in ("nvidiaDriverRoot", "nvidiaDevRoot", "mpsRoot"):
            text = reader.scalar(value, path, str, "give an absolute path")
            if not text.startswith("/"):
                raise reader.fail(value, path, f"{text!r} is not an absolute path", "give an absolute path")
            settings[{"nvidiaDriverRoot": "driver_root", "nvidiaDevRoot": "dev_root", "mpsRoot": "mps_root"}[key]] = (
                Path(text)
            )
        elif key == "useNodeFeatureAPI":
            reader.scalar(value, path, bool, "use true or false")
            notes.append("flags.useNodeFeatureAPI is read by gpu-feature-discovery, not by the device plugin")
        elif key == "deviceDiscoveryStrategy":
            reader.choice(
                value,
                path,
                ("auto", "nvml"),
                {"tegra": "gpunode's plugin discovers GPUs through NVML only; use auto or nvml"},
            )
        elif key == "plugin":
            _plugin_flags(reader, value, settings)
        elif key == "gfd":
            for gfd_key in reader.mapping(value, "flags.gfd", _GFD_KEYS):
                notes.append(f"flags.gfd.{gfd_key} is read by gpu-feature-discovery, not by the device plugin")


def _device_list_strategy(reader: _Reader, node: yaml.Node, key: str) -> str:
    items = [node] if isinstance(node, yaml.ScalarNode) else reader.sequence(node, key)
    unsupported = {
        "volume-mounts": "gpunode's plugin passes devices as NVIDIA_VISIBLE_DEVICES (envvar) or CDI (cdi-cri)",
        "cdi-annotations": "use cdi-cri (CDI devices in the Allocate answer), which containerd 1.7+ reads",
    }
    chosen = [reader.choice(item, key, ("envvar", "cdi-cri"), unsupported) for item in items]
    if len(set(chosen)) != 1:
        raise reader.fail(
            node, key, "gpunode's plugin takes exactly one device list strategy", "give envvar or cdi-cri"
        )
    return "cdi" if chosen[0] == "cdi-cri" else "envvar"


def _plugin_flags(reader: _Reader, node: yaml.Node, settings: dict[str, Any]) -> None:
    fixed_defaults = {
        "cdiAnnotationPrefix": (DEFAULT_CDI_ANNOTATION_PREFIX, "only used with cdi-annotations, which gpunode lacks"),
        "nvidiaCTKPath": (DEFAULT_NVIDIA_CTK_PATH, "gpunode's plugin does not generate CDI specs with nvidia-ctk"),
        "containerDriverRoot": (
            DEFAULT_CONTAINER_DRIVER_ROOT,
            "gpunode's plugin loads the libnvidia-ml mounted at /usr/local/lib, not from a driver root",
        ),
    }
    for key, value in reader.mapping(node, "flags.plugin", _PLUGIN_KEYS).items():
        path = f"flags.plugin.{key}"
        if _is_null(value):
            continue
        if key == "passDeviceSpecs":
            settings["pass_device_specs"] = reader.scalar(value, path, bool, "use true or false")
        elif key == "deviceListStrategy":
            settings["device_list_strategy"] = _device_list_strategy(reader, value, path)
        elif key == "deviceIDStrategy":
            settings["device_id_strategy"] = reader.choice(value, path, ("uuid", "index"), {})
        elif key == "sharedDevicesAllocationPolicy":
            settings["allocation_policy"] = reader.choice(value, path, ("distributed", "packed"), {})
        else:
            default, why = fixed_defaults[key]
            text = reader.scalar(value, path, str, f"use {default}")
            if text != default:
                raise reader.fail(value, path, f"{text!r} cannot take effect: {why}", f"remove it (or set {default})")


def _patterns(reader: _Reader, node: yaml.Node, key: str) -> tuple[ResourcePattern, ...]:
    out = []
    for i, item in enumerate(reader.sequence(node, key)):
        entry = reader.mapping(item, f"{key}[{i}]", ("pattern", "name"))
        for needed in ("pattern", "name"):
            if needed not in entry:
                raise reader.fail(item, f"{key}[{i}]", f"has no {needed!r}", "give both pattern and name")
        pattern = reader.scalar(entry["pattern"], f"{key}[{i}].pattern", str, "give a name pattern such as '*A100*'")
        out.append(ResourcePattern(pattern, resource_name(reader, entry["name"], f"{key}[{i}].name")))
    return tuple(out)


def _is_uuid(text: str) -> bool:
    try:
        uuidlib.UUID(text)
    except ValueError:
        return False
    return True


def _device_ref(text: str) -> bool:
    """A GPU index, a MIG index (`0:1`), a GPU UUID or a MIG UUID (either form)."""
    if re.fullmatch(r"\d+(:\d+)?", text):
        return True
    if text.startswith("GPU-"):
        return _is_uuid(text[4:])
    if text.startswith("MIG-"):
        rest = text[4:]
        if _is_uuid(rest):
            return True
        parts = rest.split("/")
        return (
            len(parts) == 3
            and _device_ref(parts[0])
            and parts[0].startswith("GPU-")
            and all(p.isdigit() for p in parts[1:])
        )
    return False


def _devices(reader: _Reader, node: yaml.Node, key: str) -> DeviceSelection:
    if isinstance(node, yaml.ScalarNode):
        value = reader.value(node)
        if value == "all":
            return "all"
        if isinstance(value, int) and not isinstance(value, bool):
            if value <= 0:
                raise reader.fail(
                    node, key, f"a count of devices must be > 0, not {value}", "give a count of 1 or more"
                )
            return int(value)
        raise reader.fail(node, key, f"{node.value!r} is neither 'all', a count, nor a list", "use all, N or a list")
    refs = []
    for item in reader.sequence(node, key):
        value = reader.value(item)
        text = str(value) if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else value
        if not isinstance(text, str) or not _device_ref(text):
            raise reader.fail(
                item,
                key,
                f"{item.value!r} is not a GPU index, MIG index (0:1) or UUID",
                "list devices as 0, '0:1' or GPU-<uuid>",
            )
        refs.append(text)
    return tuple(refs)


def _replicated(reader: _Reader, node: yaml.Node, key: str, strategy: SharingStrategy) -> Sharing:
    entries = reader.mapping(node, key, ("renameByDefault", "failRequestsGreaterThanOne", "resources"))
    rename_by_default = False
    if "renameByDefault" in entries:
        rename_by_default = reader.scalar(entries["renameByDefault"], f"{key}.renameByDefault", bool, "true or false")
    # NVIDIA: MPS refuses requests for more than one replica unless told otherwise.
    fail_gt_one = strategy == "mps"
    if "failRequestsGreaterThanOne" in entries:
        fail_gt_one = reader.scalar(
            entries["failRequestsGreaterThanOne"], f"{key}.failRequestsGreaterThanOne", bool, "use true or false"
        )
    if "resources" not in entries or not reader.sequence(entries["resources"], f"{key}.resources"):
        raise reader.fail(node, f"{key}.resources", "no resources specified", "list at least one name with replicas")
    resources: list[ReplicatedResource] = []
    for i, item in enumerate(reader.sequence(entries["resources"], f"{key}.resources")):
        path = f"{key}.resources[{i}]"
        entry = reader.mapping(item, path, ("name", "rename", "devices", "replicas"))
        if "name" not in entry:
            raise reader.fail(item, path, "no resource name specified", "add name: nvidia.com/gpu")
        if "replicas" not in entry:
            raise reader.fail(item, path, "no replicas specified", "add replicas: N (2 or more)")
        name = resource_name(reader, entry["name"], f"{path}.name")
        replicas = reader.scalar(entry["replicas"], f"{path}.replicas", int, "give a whole number of 2 or more")
        if replicas < 2:
            raise reader.fail(
                entry["replicas"], f"{path}.replicas", f"{replicas} replicas: the number must be >= 2", "give 2 or more"
            )
        rename = resource_name(reader, entry["rename"], f"{path}.rename") if "rename" in entry else None
        if rename is None and rename_by_default:
            rename = name + SHARED_SUFFIX
        devices = _devices(reader, entry["devices"], f"{path}.devices") if "devices" in entry else "all"
        if any(r.name == name for r in resources):
            raise reader.fail(item, f"{path}.name", f"{name} is listed twice", "list each resource once")
        resources.append(ReplicatedResource(name=name, replicas=replicas, rename=rename, devices=devices))
    return Sharing(strategy=strategy, fail_requests_greater_than_one=fail_gt_one, resources=tuple(resources))


def _sharing(reader: _Reader, node: yaml.Node) -> Sharing:
    entries = reader.mapping(node, "sharing", ("timeSlicing", "mps"))
    found = {
        key: _replicated(reader, value, f"sharing.{key}", "mps" if key == "mps" else "time-slicing")
        for key, value in entries.items()
        if not _is_null(value)
    }
    if len(found) == 2:
        raise reader.fail(
            entries["mps"],
            "sharing",
            "timeSlicing and mps are both set; they are mutually exclusive",
            "keep one of them",
        )
    return next(iter(found.values()), NO_SHARING)


def _imex(reader: _Reader, node: yaml.Node) -> None:
    entries = reader.mapping(node, "imex", ("channelIDs", "required"))
    if "channelIDs" in entries and not _is_null(entries["channelIDs"]):
        ids = reader.sequence(entries["channelIDs"], "imex.channelIDs")
        if ids:
            raise reader.fail(
                entries["channelIDs"],
                "imex.channelIDs",
                "IMEX channels are not supported by gpunode's plugin",
                "remove imex.channelIDs (or leave it empty), or run NVIDIA's plugin on IMEX nodes",
            )
    if "required" in entries:
        reader.scalar(entries["required"], "imex.required", bool, "use true or false")


def parse_config_text(text: str, source: str) -> FileConfig:
    """NVIDIA's config v1 (YAML or JSON) -> FileConfig; ConfigFileError names what is refused."""
    reader = _Reader(source)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigFileError(
            source, mark.line + 1 if mark else None, "(file)", f"not valid YAML: {problem}", "correct the YAML syntax"
        ) from None
    if root is None or _is_null(root):
        raise ConfigFileError(source, None, "(file)", "is empty", "give at least `version: v1`")
    entries = reader.mapping(root, "", ("version", "flags", "resources", "sharing", "imex"))
    if "version" in entries:
        version = reader.scalar(entries["version"], "version", str, "use version: v1")
        if version != "v1":
            raise reader.fail(entries["version"], "version", f"unknown version {version!r}", "use version: v1")
    settings: dict[str, Any] = {}
    notes: list[str] = []
    if "flags" in entries and not _is_null(entries["flags"]):
        _flags(reader, entries["flags"], settings, notes)
    gpus: tuple[ResourcePattern, ...] = ()
    migs: tuple[ResourcePattern, ...] = ()
    if "resources" in entries and not _is_null(entries["resources"]):
        sections = reader.mapping(entries["resources"], "resources", ("gpus", "mig"))
        gpus = _patterns(reader, sections["gpus"], "resources.gpus") if "gpus" in sections else ()
        migs = _patterns(reader, sections["mig"], "resources.mig") if "mig" in sections else ()
    sharing = NO_SHARING
    if "sharing" in entries and not _is_null(entries["sharing"]):
        sharing = _sharing(reader, entries["sharing"])
    if "imex" in entries and not _is_null(entries["imex"]):
        _imex(reader, entries["imex"])
    if sharing.strategy == "mps":
        mig = settings.get("mig_strategy")
        if mig == "mixed":
            raise reader.fail(
                entries["sharing"],
                "sharing.mps",
                "MPS cannot be used with migStrategy mixed",
                "use time-slicing on MIG",
            )
    return FileConfig(
        source=source, settings=settings, gpu_resources=gpus, mig_resources=migs, sharing=sharing, notes=tuple(notes)
    )


def load_config_file(path: Path) -> FileConfig:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigFileError(
            str(path), None, "(file)", f"cannot be read ({exc.strerror or exc})", "give a readable config file"
        ) from exc
    except UnicodeDecodeError:
        raise ConfigFileError(str(path), None, "(file)", "is not UTF-8 text", "give a YAML or JSON file") from None
    return parse_config_text(text, str(path))


def apply_file(base: PluginConfig, file: FileConfig, explicit: frozenset[str]) -> PluginConfig:
    """The plugin's settings with a config file: the file's values, except where a flag or
    environment variable was given (`explicit`, PluginConfig field names), as NVIDIA's
    plugin orders them (command line > environment > file)."""
    settings = {key: value for key, value in file.settings.items() if key not in explicit}
    if "dev_root" not in settings and "driver_root" in settings and "dev_root" not in explicit:
        settings["dev_root"] = settings["driver_root"]  # NVIDIA: nvidiaDevRoot defaults to nvidiaDriverRoot
    config = replace(
        base,
        **settings,
        gpu_resources=file.gpu_resources,
        mig_resources=file.mig_resources,
        sharing=file.sharing,
        config_source=file.source,
    )
    if config.sharing.strategy == "mps":
        if config.mig_strategy == "mixed":
            raise ConfigError(
                f"{file.source}: sharing.mps cannot be used with MIG strategy mixed. "
                "Fix: use sharing.timeSlicing, or MIG strategy none or single"
            )
        if config.mps_root is None:
            raise ConfigError(
                f"{file.source}: sharing.mps needs flags.mpsRoot, the host directory the MPS control daemon "
                "shares with its clients. Fix: add `mpsRoot: /run/nvidia/mps` under flags"
            )
    return config
