"""The runtime merge as a property over many generated containerd configs (no binaries).

Each example is a config drawn at random - schema 2 or 3, with or without runc, an old
`nvidia` runtime with a wrong BinaryName, other runtimes, imports, other plugins - and
written in one of the many ways TOML allows (nested headers, flat headers out of order,
dotted keys, inline tables, indentation, comments). The merge must then: parse, keep every
comment and every unrelated setting, give the runtime the right binary and runc's cgroup
driver in the config containerd will effectively run with (modelled here; the model itself
is proven against real binaries in test_containerd_binaries.py), and change nothing when
fed its own output.
"""

from __future__ import annotations

import copy
import re
import sys
from typing import Any

import tomlkit
import tomlkit.exceptions
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gpunode.bootstrap.core.containerd.plan import ConfigStructureError, RuntimeSettings, plan_runtime_merge

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

CRI = {2: "io.containerd.grpc.v1.cri", 3: "io.containerd.cri.v1.runtime"}
RUNC_V2 = "io.containerd.runc.v2"
DROPIN = "/etc/containerd/conf.d/99-nvidia.toml"
CONFIG = "/etc/containerd/config.toml"


# -- generating configs -------------------------------------------------------------------

paths = st.sampled_from(["/usr/bin/runc", "/usr/local/sbin/runc", "/opt/x y/runc", 'C:\\odd"path'])


@st.composite
def runtime_tables(draw: st.DrawFn, *, kind: str) -> dict[str, Any]:
    table: dict[str, Any] = {}
    if kind == "nvidia":
        if draw(st.booleans()):
            table["runtime_type"] = draw(st.sampled_from([RUNC_V2, "io.containerd.runtime.v1.linux"]))
        if draw(st.booleans()):
            table["privileged_without_host_devices"] = draw(st.booleans())
        options: dict[str, Any] = {}
        if draw(st.booleans()):
            options["BinaryName"] = draw(
                st.sampled_from(["/wrong/nvidia-container-runtime", "/usr/bin/nvidia-container-runtime", ""])
            )
        if draw(st.booleans()):
            options["SystemdCgroup"] = draw(st.booleans())
        if options or draw(st.booleans()):
            table["options"] = options
        return table
    if draw(st.booleans()):
        table["runtime_type"] = RUNC_V2
    if draw(st.booleans()):
        table["pod_annotations"] = draw(st.lists(st.sampled_from(["a.example/x", "b.example/*"]), max_size=2))
    options = {}
    if draw(st.booleans()):
        options["SystemdCgroup"] = draw(st.booleans())
    if draw(st.booleans()):
        options["BinaryName"] = draw(paths)
    if draw(st.booleans()):
        options["Root"] = "/run/containerd/runc"
    if draw(st.booleans()):
        options["NoPivotRoot"] = draw(st.booleans())
    if options or draw(st.booleans()):
        table["options"] = options
    return table


@st.composite
def configs(draw: st.DrawFn) -> tuple[dict[str, Any], int]:
    schema = draw(st.sampled_from([2, 3]))
    config: dict[str, Any] = {"version": schema}
    if draw(st.booleans()):
        config["root"] = "/var/lib/containerd"
    if draw(st.booleans()):
        config["oom_score"] = draw(st.integers(-999, 0))
    imports = draw(st.sampled_from([None, [], ["/etc/containerd/other.toml"], ["conf.d/*.toml"], [DROPIN]]))
    if imports is not None:
        config["imports"] = imports
    if draw(st.booleans()):
        config["grpc"] = {"address": "/run/containerd/containerd.sock", "max_recv_message_size": 16777216}
    plugins: dict[str, Any] = {}
    if draw(st.booleans()):
        plugins["io.containerd.internal.v1.opt"] = {"path": "/opt/containerd"}
    cri: dict[str, Any] = {}
    if draw(st.booleans()):
        cri["enable_selinux"] = draw(st.booleans())
    if draw(st.booleans()):
        cri["cni"] = {"bin_dir": "/opt/cni/bin", "conf_dir": "/etc/cni/net.d"}
    if draw(st.booleans()):
        containerd: dict[str, Any] = {}
        if draw(st.booleans()):
            containerd["default_runtime_name"] = draw(st.sampled_from(["runc", "crun", "nvidia"]))
        if draw(st.booleans()):
            containerd["snapshotter"] = "overlayfs"
        if draw(st.booleans()):
            runtimes: dict[str, Any] = {}
            for name in draw(st.permutations(["runc", "crun", "nvidia"])):
                if draw(st.booleans()):
                    runtimes[name] = draw(runtime_tables(kind="nvidia" if name == "nvidia" else "runc"))
            containerd["runtimes"] = runtimes
        cri["containerd"] = containerd
    if draw(st.booleans()):
        cri["registry"] = {"config_path": "/etc/containerd/certs.d"}
    if cri or draw(st.booleans()):
        plugins[CRI[schema]] = cri
    if plugins:
        config["plugins"] = plugins
    return config, schema


def _key(key: str, quote: str) -> str:
    if re.match(r"^[A-Za-z0-9_-]+$", key):
        return key
    return f"{quote}{key}{quote}" if quote == "'" else '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k, chr(34))} = {_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


@st.composite
def rendered(draw: st.DrawFn, config: dict[str, Any]) -> tuple[str, list[str]]:
    """TOML text for `config` in a randomly chosen layout, and the comments it carries."""
    quote = draw(st.sampled_from(['"', "'"]))
    indent_step = draw(st.sampled_from([0, 2]))
    comments: list[str] = []
    counter = iter(range(10_000))

    def comment() -> str:
        if draw(st.integers(0, 3)) == 0:
            text = f"# note {next(counter)}: keep me"
            comments.append(text)
            return text
        return ""

    sections: list[tuple[tuple[str, ...], list[str]]] = []

    def emit(path: tuple[str, ...], table: dict[str, Any], lines: list[str], prefix: str) -> None:
        """Write `table`'s content into `lines` (dotted under prefix) or into new sections."""
        for key, value in table.items():
            if isinstance(value, dict):
                style = draw(st.sampled_from(["header", "header", "dotted", "inline"])) if value else "header"
                if style == "header" and not prefix:
                    own: list[str] = []
                    sections.append(((*path, key), own))
                    emit((*path, key), value, own, "")
                elif style == "inline" or (style == "header" and prefix):
                    lines.append(f"{prefix}{_key(key, quote)} = {_value(value)}")
                else:
                    if not value:
                        lines.append(f"{prefix}{_key(key, quote)} = {{}}")
                    emit((*path, key), value, lines, f"{prefix}{_key(key, quote)}.")
            else:
                note = comment()
                lines.append(f"{prefix}{_key(key, quote)} = {_value(value)}" + (f"  {note}" if note else ""))

    root_lines: list[str] = []
    emit((), config, root_lines, "")
    if draw(st.booleans()):
        order = draw(st.permutations(range(len(sections))))
        sections = [sections[i] for i in order]
    out = []
    head = comment()
    if head:
        out.append(head)
    out.extend(root_lines)
    for path, lines in sections:
        pad = " " * (indent_step * (len(path) - 1))
        note = comment()
        if note:
            out.append(pad + note)
        out.append(pad + "[" + ".".join(_key(k, quote) for k in path) + "]")
        out.extend(pad + " " * indent_step + line for line in lines)
        out.append("")
    return "\n".join(out) + "\n", comments


# -- the model of what containerd runs with -------------------------------------------------


def effective(main: dict[str, Any], dropin: dict[str, Any] | None, major: int, schema: int) -> dict[str, Any]:
    """containerd's view: 1.x replaces the drop-in's plugin tables whole, 2.x merges them."""
    merged = copy.deepcopy(main)
    if dropin is None:
        return merged
    if major == 1:
        for name, table in dropin.get("plugins", {}).items():
            merged.setdefault("plugins", {})[name] = copy.deepcopy(table)
        return merged

    def deep(under: dict[str, Any], over: dict[str, Any]) -> None:
        for key, value in over.items():
            if isinstance(value, dict) and isinstance(under.get(key), dict):
                deep(under[key], value)
            else:
                under[key] = copy.deepcopy(value)

    deep(merged, {k: v for k, v in dropin.items() if k != "version"})
    return merged


def cri_of(config: dict[str, Any], schema: int) -> dict[str, Any]:
    return copy.deepcopy(config.get("plugins", {}).get(CRI[schema], {}))


def runtimes_of(cri: dict[str, Any], major: int) -> dict[str, Any]:
    """The runtimes containerd has, built-in ones included."""
    table = cri.get("containerd", {}).get("runtimes")
    if major == 1:
        return copy.deepcopy(table) if table else {"runc": {"runtime_type": RUNC_V2}}
    merged = {"runc": {"runtime_type": RUNC_V2}}
    merged.update(copy.deepcopy(table or {}))
    return merged


def expected_cgroup(cri: dict[str, Any], name: str, major: int) -> Any:
    """runc's SystemdCgroup (built-in: false), else the default runtime's if it is a runc shim."""
    default = cri.get("containerd", {}).get("default_runtime_name") or "runc"
    table = cri.get("containerd", {}).get("runtimes") or {}
    for candidate in dict.fromkeys(("runc", default)):
        runtime = table.get(candidate)
        if candidate == name:
            continue
        if runtime is None and candidate == "runc" and (major >= 2 or not table):
            return False
        if isinstance(runtime, dict) and runtime.get("runtime_type", RUNC_V2) == RUNC_V2:
            return runtime.get("options", {}).get("SystemdCgroup", False)
    return table.get(name, {}).get("options", {}).get("SystemdCgroup", False)


def without_runtime_changes(cri: dict[str, Any], name: str, major: int, *, default_set: bool) -> dict[str, Any]:
    """The CRI table with what the merge may change taken out, built-ins made explicit."""
    cri = copy.deepcopy(cri)
    containerd = cri.setdefault("containerd", {})
    runtimes = runtimes_of(cri, major)
    runtimes.pop(name, None)
    for table in runtimes.values():  # an absent option is its zero value to the shim
        options = table.get("options")
        if isinstance(options, dict):
            table["options"] = {k: v for k, v in options.items() if v not in ("", 0, False)}
            if not table["options"]:
                del table["options"]
        if table.get("sandbox_mode") == "podsandbox":
            del table["sandbox_mode"]
    containerd["runtimes"] = runtimes
    if default_set:
        containerd.pop("default_runtime_name", None)
    return cri


# -- the property ---------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    drawn=configs(),
    in_place=st.booleans(),
    set_default=st.booleans(),
    binary=st.sampled_from(["/usr/bin/nvidia-container-runtime", "/usr/local/nvidia/toolkit/nvidia-container-runtime"]),
)
def test_merge_is_right_preserving_and_idempotent(
    data: st.DataObject, drawn: tuple[dict[str, Any], int], in_place: bool, set_default: bool, binary: str
) -> None:
    config, schema = drawn
    text, comments = data.draw(rendered(config))
    assert tomllib.loads(text) == config  # the generator's own sanity
    version = data.draw(st.sampled_from(["1.6.20", "1.7.24", "2.1.9"] if schema == 2 else ["2.1.9"]))
    major = int(version[0])
    wanted = RuntimeSettings(binary_name=binary, set_default_runtime=set_default, in_place=in_place)

    try:
        plan = plan_runtime_merge(text, containerd_version=version, settings=wanted, config_path=CONFIG)
    except ConfigStructureError as refused:
        # Only a layout tomlkit cannot read, or (in place) one it reads but cannot insert
        # into, may be refused, with the drop-in mode as the fix; and never in drop-in mode
        # when there is no imports array to extend.
        assert "drop-in mode" in str(refused)
        try:
            tomlkit.parse(text)
        except tomlkit.exceptions.TOMLKitError:
            event("refused: a layout tomlkit cannot read")
        else:
            assert in_place and "cannot edit its table layout" in str(refused)
            event("refused in place: a layout tomlkit reads but cannot insert into")
        assert in_place or "imports" in config
        return
    event(f"{plan.mode}, containerd {version[0]}.x")

    assert plan.schema_version == schema
    assert plan.files[0].path == CONFIG and plan.files[0].old_text == text
    new_main_text = plan.files[0].new_text
    new_main = tomllib.loads(new_main_text)
    for note in comments:
        assert note in new_main_text, "a comment of the user's file was lost"
    dropin: dict[str, Any] | None = None
    if in_place:
        assert len(plan.files) == 1
    else:
        assert [f.path for f in plan.files] == [CONFIG, DROPIN]
        dropin = tomllib.loads(plan.files[1].new_text)
        assert dropin["version"] == schema
        # Drop-in mode leaves the main file alone but for the imports entry.
        expected_main = copy.deepcopy(config)
        # containerd 1.6 resolves a relative glob against its working directory (proven in
        # test_containerd_binaries.py), so only 1.7 and later see the drop-in through it.
        covering = (DROPIN, "conf.d/*.toml") if version != "1.6.20" else (DROPIN,)
        if not any(entry in covering for entry in config.get("imports", [])):
            expected_main["imports"] = [*config.get("imports", []), DROPIN]
        assert new_main == expected_main

    # What containerd will run with.
    after = effective(new_main, dropin, major, schema)
    before_cri, after_cri = cri_of(config, schema), cri_of(after, schema)
    runtime = runtimes_of(after_cri, major)["nvidia"]
    assert runtime["runtime_type"] == RUNC_V2
    assert runtime["options"]["BinaryName"] == binary
    assert runtime["options"]["SystemdCgroup"] == expected_cgroup(before_cri, "nvidia", major)
    default_after = after_cri.get("containerd", {}).get("default_runtime_name", "runc")
    default_before = before_cri.get("containerd", {}).get("default_runtime_name", "runc")
    assert default_after == ("nvidia" if set_default else default_before)
    # Nothing else changed: the CRI table apart from the runtime, and everything outside it.
    assert without_runtime_changes(after_cri, "nvidia", major, default_set=set_default) == without_runtime_changes(
        before_cri, "nvidia", major, default_set=set_default
    )
    for side in (config, after):
        side.get("plugins", {}).pop(CRI[schema], None)
        if not side.get("plugins", True):
            del side["plugins"]
        side.pop("imports", None)
    assert after == config

    # Fed its own output, the merge changes nothing.
    again = plan_runtime_merge(
        new_main_text,
        containerd_version=version,
        settings=wanted,
        config_path=CONFIG,
        dropin_text=None if in_place else plan.files[1].new_text,
    )
    assert not again.changed, again.diff
