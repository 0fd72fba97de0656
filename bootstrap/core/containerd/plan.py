"""The containerd `nvidia` runtime merge: config text in, checked new text(s) out, no I/O.

`plan_runtime_merge` adds (or corrects) the runtime `nvidia` - the runc v2 shim running the
NVIDIA container runtime, every other runc option (SystemdCgroup above all) inherited from
the node's runc runtime - to a containerd config of schema 2, 3 or 4, either as a drop-in
that the main file imports (the default) or in the main file itself. Comments, key order
and every unrelated setting of the user's file are kept; the result is idempotent. What
containerd really does with it is proven with the real binaries in
tests/unit/test_containerd_binaries.py; see containerd_schema.py for the findings.
"""

from __future__ import annotations

import copy
import difflib
import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from gpunode.bootstrap.core.containerd.effective import (
    default_runtime_name,
    dump_schema,
    effective_runtime,
    runtime_binary,
    runtime_problems,
    runtimes,
    systemd_cgroup,
)
from gpunode.bootstrap.core.containerd.runtime_table import (
    DEFAULT_DROPIN_PATH,
    RuntimeSettings,
    runtime_class_notes,
    with_runtime,
)
from gpunode.bootstrap.core.containerd.schema import (
    ConfigStructureError,
    ContainerdConfigError,
    ContainerdRules,
    InvalidRuntimeSettingsError,
    K3sManagedConfigError,
    TomlSyntaxError,
    UnsupportedContainerdVersionError,
    UnsupportedSchemaError,
    check_schema,
    containerd_rules,
    cri_path,
    default_runtime_path,
    parse_containerd_version,
    runtimes_path,
)
from gpunode.bootstrap.core.containerd.toml_edit import (
    TomlEditor,
    check_rendering,
    edit_checked,
    insert_root_key,
    load_strict,
    lookup,
    strictly_equal,
)

__all__ = [
    "DEFAULT_DROPIN_PATH",
    "ConfigStructureError",
    "ContainerdConfigError",
    "FileChange",
    "InvalidRuntimeSettingsError",
    "K3S_RUNTIME_BINARIES",
    "K3sManagedConfigError",
    "MergePlan",
    "RuntimeSettings",
    "TomlSyntaxError",
    "UnsupportedContainerdVersionError",
    "UnsupportedSchemaError",
    "config_schema_version",
    "default_runtime_name",
    "dump_schema",
    "effective_runtime",
    "parse_containerd_version",
    "plan_runtime_merge",
    "runtime_binary",
    "runtime_problems",
    "runtimes",
    "systemd_cgroup",
]

DEFAULT_CONFIG_PATH = "/etc/containerd/config.toml"

# Where k3s looks for the toolkit's runtime when it renders its containerd config
# (pkg/agent/containerd/runtimes.go: the GPU operator's location first, then /usr/bin).
K3S_RUNTIME_BINARIES = (
    "/usr/local/nvidia/toolkit/nvidia-container-runtime",
    "/usr/bin/nvidia-container-runtime",
)

_GLOB = re.compile(r"[*?\[]")

# A RuntimeClass handler must be a DNS label, and the handler is the runtime's name (F17).
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")

_NEW_MAIN_HEADER = (
    "# containerd configuration written by gpunode. Everything not set here is containerd's\n"
    "# built-in default (`containerd config default` lists them).\n"
)


@dataclass(frozen=True)
class FileChange:
    """One file's current text (None: the file does not exist) and the text to write."""

    path: str
    old_text: str | None
    new_text: str

    @property
    def changed(self) -> bool:
        return self.old_text != self.new_text

    def diff(self) -> str:
        """Unified diff from the current to the new text ('' when unchanged)."""
        if not self.changed:
            return ""
        old_lines = _diff_lines(self.old_text or "")
        new_lines = _diff_lines(self.new_text)
        from_file = self.path if self.old_text is not None else "/dev/null"
        return "".join(difflib.unified_diff(old_lines, new_lines, fromfile=from_file, tofile=self.path))


def _diff_lines(text: str) -> list[str]:
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n\\ No newline at end of file\n"
    return lines


@dataclass(frozen=True)
class MergePlan:
    """The files to write (main config first, then the drop-in) and what the user should know.

    `mode` is "drop-in", "in-place" or "k3s" (k3s writes its own config: no files).
    """

    schema_version: int
    files: tuple[FileChange, ...]
    notes: tuple[str, ...]
    mode: str = "drop-in"
    containerd_version: tuple[int, int, int] = (0, 0, 0)

    @property
    def changed(self) -> bool:
        return any(change.changed for change in self.files)

    @property
    def diff(self) -> str:
        return "".join(change.diff() for change in self.files)


def config_schema_version(config_text: str | None, config_path: str = DEFAULT_CONFIG_PATH) -> int | None:
    """The `version` of a config file; None when there is no file or it sets nothing at all.

    A file with settings but no `version` is schema 1 to containerd: that is returned as 1.
    """
    if config_text is None:
        return None
    model = load_strict(config_text, config_path)
    if not model:
        return None
    version = model.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool):
        raise UnsupportedSchemaError(
            f"{config_path} has `version = {version!r}`; containerd wants a whole number there.",
            fix=f"set `version = 2` (containerd 1.x) or `version = 3` (2.x) in {config_path}.",
        )
    return version


def plan_runtime_merge(
    config_text: str | None,
    *,
    containerd_version: str,
    settings: RuntimeSettings,
    config_path: str = DEFAULT_CONFIG_PATH,
    dropin_text: str | None = None,
    k3s: bool = False,
) -> MergePlan:
    """Plan the runtime merge; raises a ContainerdConfigError (a UserError) on bad input.

    `config_text` is the main config (None: no file, containerd's built-in defaults),
    `dropin_text` the current drop-in at settings.dropin_path (None: absent), `k3s` whether
    k3s renders this containerd's config.
    """
    rules = containerd_rules(containerd_version)
    _check_settings(settings)
    if k3s:
        return _plan_k3s(config_text, rules, settings, config_path)
    main_model = load_strict(config_text, config_path) if config_text is not None else {}
    schema = _schema(config_text, main_model, rules, config_path)
    _check_structure(main_model, schema, config_path, settings.runtime_name)
    notes: list[str] = []
    if settings.in_place:
        files = _plan_in_place(config_text, main_model, schema, rules, settings, config_path, dropin_text, notes)
        mode = "in-place"
    else:
        files = _plan_dropin(config_text, main_model, schema, rules, settings, config_path, dropin_text, notes)
        mode = "drop-in"
    notes.extend(runtime_class_notes(settings))
    return MergePlan(schema, files, tuple(notes), mode, rules.version)


# -- checks ------------------------------------------------------------------------------


def _check_settings(settings: RuntimeSettings) -> None:
    name = settings.runtime_name
    if not _DNS_LABEL.match(name):
        raise InvalidRuntimeSettingsError(
            f"runtime name {name!r} cannot be a RuntimeClass handler (it must be a DNS label: "
            "lowercase letters, digits and '-', at most 63 characters).",
            fix="use the default name nvidia, or another DNS label.",
        )
    if name == "runc":
        raise InvalidRuntimeSettingsError(
            "runtime name 'runc' would replace containerd's plain runtime with the NVIDIA one.",
            fix="use the default name nvidia.",
        )
    for label, path in (("runtime path", settings.binary_name), ("drop-in path", settings.dropin_path)):
        if not path.startswith("/") or any(ch in path for ch in "\n\r\t\0"):
            raise InvalidRuntimeSettingsError(
                f"{label} {path!r} is not an absolute path.",
                fix=f"give the {label} as an absolute path, e.g. "
                f"{RuntimeSettings().binary_name if label == 'runtime path' else DEFAULT_DROPIN_PATH}.",
            )


def _schema(config_text: str | None, model: dict[str, Any], rules: ContainerdRules, path: str) -> int:
    """The schema to write in: the file's, or this containerd's own when the file sets nothing."""
    if config_text is None or not model:
        return rules.native_schema
    if "version" not in model:
        return check_schema(None, rules, path)
    version = config_schema_version(config_text, path)
    assert version is not None
    return check_schema(version, rules, path)


def _check_structure(model: Mapping[str, Any], schema: int, path: str, runtime_name: str) -> None:
    """Tables containerd expects to be tables; `imports` a list of paths."""
    imports = model.get("imports")
    if imports is not None and not (isinstance(imports, list) and all(isinstance(i, str) for i in imports)):
        raise ConfigStructureError(
            f"{path} has `imports = {imports!r}`; containerd wants a list of file paths there.",
            fix=f'write it as a list, e.g. imports = ["{DEFAULT_DROPIN_PATH}"].',
        )
    keys = (*runtimes_path(schema), runtime_name)
    node: Any = model
    for depth, key in enumerate(keys):
        if not isinstance(node, Mapping) or key not in node:
            return
        node = node[key]
        if not isinstance(node, Mapping):
            dotted = ".".join(_toml_key(k) for k in keys[: depth + 1])
            raise ConfigStructureError(
                f"{path} sets {dotted} to a value, but containerd expects a table there.",
                fix=f"make {dotted} a table (or remove it) in {path}.",
            )


def _toml_key(key: str) -> str:
    return key if re.match(r"^[A-Za-z0-9_-]+$", key) else f'"{key}"'


def _plan_in_place(
    config_text: str | None,
    model: dict[str, Any],
    schema: int,
    rules: ContainerdRules,
    settings: RuntimeSettings,
    config_path: str,
    dropin_text: str | None,
    notes: list[str],
) -> tuple[FileChange, ...]:
    if dropin_text is not None and _imports_cover(model.get("imports") or [], settings.dropin_path, config_path, rules):
        raise ContainerdConfigError(
            f"{config_path} imports {settings.dropin_path}, which exists; containerd applies it "
            "after the main file, so it would override a runtime written in place.",
            fix=f"use the drop-in mode (the default), or remove {settings.dropin_path} and its "
            f"imports entry from {config_path} first.",
        )
    new_cri = with_runtime(
        lookup(model, cri_path(schema)), rules, settings, notes, add_builtin_runc=rules.runtimes_replace_builtin
    )
    imports = model.get("imports") or []
    if imports:
        how = (
            "an imported file that has the CRI table replaces it whole, the runtime written here included"
            if rules.imports_replace_plugin_tables
            else "what an imported file sets overrides what is written here"
        )
        notes.append(
            f"{config_path} imports {', '.join(imports)}; with containerd {rules.label} {how}. "
            "`containerd config dump` shows the effective result."
        )
    text = config_text if config_text is not None else _NEW_MAIN_HEADER

    def edits(editor: TomlEditor) -> None:
        if editor.get(("version",)) is None:
            editor.set(("version",), schema)
        editor.sync(cri_path(schema), new_cri, prune=False)

    new_text = edit_checked(text, config_path, model, edits)
    return (FileChange(config_path, config_text, new_text),)


# -- drop-in mode ------------------------------------------------------------------------


def _plan_dropin(
    config_text: str | None,
    model: dict[str, Any],
    schema: int,
    rules: ContainerdRules,
    settings: RuntimeSettings,
    config_path: str,
    dropin_text: str | None,
    notes: list[str],
) -> tuple[FileChange, FileChange]:
    dropin_path = settings.dropin_path
    if posixpath.normpath(dropin_path) == posixpath.normpath(config_path):
        raise InvalidRuntimeSettingsError(
            f"the drop-in path {dropin_path} is the main config itself.",
            fix="give the drop-in a path of its own, or use --in-place.",
        )
    dropin_model = load_strict(dropin_text, dropin_path) if dropin_text is not None else {}
    dropin_source = dropin_text if dropin_text is not None else _dropin_header(config_path, rules, schema)
    dropin_schema = dropin_model.get("version", schema)
    if not strictly_equal(dropin_schema, schema):
        # An import's version applies to the merged config (proven with 2.x): a drop-in
        # of another schema would be misread, so it is written anew.
        notes.append(
            f"{dropin_path} was written for config version {dropin_schema!r}, but {config_path} "
            f"is version {schema}; gpunode writes the drop-in anew, dropping what it held: "
            f"{', '.join(sorted(_leaves(dropin_model)))}."
        )
        dropin_model = {}
        dropin_source = _dropin_header(config_path, rules, schema)
    if dropin_model:
        _check_structure(dropin_model, schema, dropin_path, settings.runtime_name)

    # The main file: only an imports entry.
    imports = list(model.get("imports") or [])
    covered = _imports_cover(imports, dropin_path, config_path, rules)
    main_source = config_text if config_text is not None else _NEW_MAIN_HEADER

    def main_edits(editor: TomlEditor) -> None:
        if editor.get(("version",)) is None:
            editor.set(("version",), schema)
        if not covered:
            editor.append(("imports",), dropin_path)

    if covered and "version" in model:
        new_main = main_source
    else:
        new_main = _edit_main_for_import(main_source, config_path, model, main_edits, imports, dropin_path)
    others = [entry for entry in imports if not _imports_cover([entry], dropin_path, config_path, rules)]
    ignored_globs = [e for e in imports if not e.startswith("/") and _GLOB.search(e) and not covered]
    if ignored_globs and not rules.relative_globs_follow_config_dir:
        notes.append(
            f"containerd {rules.label} resolves the relative glob import(s) {', '.join(ignored_globs)} "
            "against its working directory, not against the directory of "
            f"{config_path} (1.7 fixed that), so gpunode adds its drop-in's absolute path."
        )

    # The drop-in.
    if rules.imports_replace_plugin_tables:
        main_cri = lookup(model, cri_path(schema))
        dropin_cri = lookup(dropin_model, cri_path(schema))
        new_cri = with_runtime(main_cri, rules, settings, notes, add_builtin_runc=True)
        notes.append(
            f"containerd {rules.label} replaces a whole plugin table from an import, so the drop-in "
            f'carries a copy of the [plugins."{cri_path(schema)[1]}"] table of {config_path} with '
            f"the runtime added; later changes to that table in {config_path} take effect only "
            "when gpunode writes the drop-in again (or use --in-place)."
        )
        lost = _leaves(dropin_cri) - _leaves(new_cri) if isinstance(dropin_cri, Mapping) else set()
        if lost:
            notes.append(
                f"{dropin_path} set CRI options that {config_path} does not have; the drop-in is "
                f"rewritten from {config_path}, so these go: {', '.join(sorted(lost))}."
            )
        if others:
            notes.append(
                f"{config_path} also imports {', '.join(others)}; with containerd {rules.label} the "
                "last import that defines the CRI table replaces it whole, so CRI settings in those "
                "files and this drop-in exclude each other. If they set CRI options, use --in-place."
            )

        def dropin_edits(editor: TomlEditor) -> None:
            editor.set_if_different(("version",), schema)
            editor.sync(cri_path(schema), new_cri, prune=True)

    else:
        view = _deep_merge(model, dropin_model)
        new_cri = with_runtime(lookup(view, cri_path(schema)), rules, settings, notes, add_builtin_runc=False)
        runtime_table = new_cri["containerd"]["runtimes"][settings.runtime_name]
        if isinstance(lookup(model, (*runtimes_path(schema), settings.runtime_name)), Mapping):
            notes.append(
                f'{config_path} also defines runtime "{settings.runtime_name}"; containerd '
                f"{rules.label} merges the drop-in over it key by key, so the drop-in's values win."
            )

        def dropin_edits(editor: TomlEditor) -> None:
            editor.set_if_different(("version",), schema)
            editor.sync((*runtimes_path(schema), settings.runtime_name), runtime_table, prune=False)
            if settings.set_default_runtime:
                editor.set_if_different(default_runtime_path(schema), settings.runtime_name)

    new_dropin = edit_checked(dropin_source, dropin_path, dropin_model, dropin_edits)
    return FileChange(config_path, config_text, new_main), FileChange(dropin_path, dropin_text, new_dropin)


def _edit_main_for_import(
    text: str,
    config_path: str,
    model: dict[str, Any],
    edits: Callable[[TomlEditor], None],
    imports: list[str],
    dropin_path: str,
) -> str:
    """The main file with its imports entry; by plain text when tomlkit cannot hold the file."""
    try:
        return edit_checked(text, config_path, model, edits)
    except ConfigStructureError:
        if "imports" in model or "version" not in model:
            raise
    fallback = insert_root_key(text, "imports", [*imports, dropin_path])
    if check_rendering(fallback, {**model, "imports": [*imports, dropin_path]}, editable=False) is not None:
        raise ConfigStructureError(
            f"gpunode cannot add its imports entry to {config_path} without disturbing its layout.",
            fix=f'add imports = ["{dropin_path}"] at the top of {config_path} yourself, then run gpunode again.',
        )
    return fallback


def _dropin_header(config_path: str, rules: ContainerdRules, schema: int) -> str:
    lines = [
        "# The containerd runtime for the NVIDIA container toolkit, written by gpunode.",
        f"# {config_path} imports this file; gpunode rewrites it when it runs.",
    ]
    if rules.imports_replace_plugin_tables:
        lines += [
            "# containerd 1.x replaces a whole plugin table from an import, so this file carries",
            f"# a copy of the CRI table of {config_path}: change CRI settings there, then run",
            "# gpunode again.",
        ]
    return "\n".join(lines) + "\n"


def _imports_cover(imports: list[str], target: str, config_path: str, rules: ContainerdRules) -> bool:
    """Whether an imports entry (a path or glob, relative to the main file) names `target`.

    A relative glob counts only where containerd resolves it against the main file's
    directory (not 1.6, which uses its working directory).
    """
    target_parts = posixpath.normpath(target).split("/")
    base = posixpath.dirname(config_path)
    for entry in imports:
        if not entry.startswith("/") and _GLOB.search(entry) and not rules.relative_globs_follow_config_dir:
            continue
        pattern = posixpath.normpath(posixpath.join(base, entry))
        parts = pattern.split("/")
        if len(parts) == len(target_parts) and all(fnmatchcase(t, p) for t, p in zip(target_parts, parts)):
            return True
    return False


def _deep_merge(under: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """containerd 2.x's import merge: tables merge key by key, the import's values win."""
    merged = copy.deepcopy(dict(under))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _leaves(table: Any, prefix: str = "") -> set[str]:
    if not isinstance(table, Mapping):
        return {prefix} if prefix else set()
    found: set[str] = set()
    for key, value in table.items():
        found |= _leaves(value, f"{prefix}.{_toml_key(key)}" if prefix else _toml_key(key))
    return found


# -- k3s ---------------------------------------------------------------------------------


def _plan_k3s(
    config_text: str | None, rules: ContainerdRules, settings: RuntimeSettings, config_path: str
) -> MergePlan:
    why = (
        f"k3s renders {config_path} from its template (config.toml.tmpl) on every start, so an "
        "edit there is lost at the next restart; gpunode never edits it."
    )
    if settings.in_place:
        raise K3sManagedConfigError(
            why + " In-place mode cannot work on k3s.",
            fix="drop --in-place: on k3s gpunode relies on k3s's own detection of the NVIDIA runtime.",
        )
    if settings.set_default_runtime:
        raise K3sManagedConfigError(
            why + " The default runtime is k3s's to set.",
            fix=f"set `default-runtime: {settings.runtime_name}` in /etc/rancher/k3s/config.yaml (k3s's "
            "--default-runtime option) and restart k3s; better still, use runtimeClassName (F4).",
        )
    if settings.runtime_name != "nvidia" or settings.binary_name not in K3S_RUNTIME_BINARIES:
        raise K3sManagedConfigError(
            why + f" k3s itself adds a runtime named nvidia when it finds "
            f"{' or '.join(K3S_RUNTIME_BINARIES)}; runtime {settings.runtime_name!r} running "
            f"{settings.binary_name} is not what it detects.",
            fix="use the default runtime name and path (install the toolkit's package), or write "
            'your own config.toml.tmpl that keeps k3s\'s base template ({{ template "base" . }}) '
            "and adds the runtime.",
        )
    schema = rules.native_schema
    notes = [
        why + f" k3s adds the runtime nvidia itself (runc v2 shim, BinaryName "
        f"{settings.binary_name}, its own SystemdCgroup setting) when it finds the toolkit's "
        "binary at start: install the toolkit, then restart k3s. A config.toml.tmpl of your own "
        'must keep {{ template "base" . }} or the detected runtime is lost.'
    ]
    if config_text is not None:
        model = load_strict(config_text, config_path)
        version = model.get("version")
        if isinstance(version, int) and not isinstance(version, bool) and version in (2, 3, 4):
            schema = version
        runtime = lookup(model, (*runtimes_path(schema), settings.runtime_name))
        if isinstance(runtime, Mapping) and runtime_binary(dict(runtime)) == settings.binary_name:
            notes.append(f'{config_path} already has runtime "nvidia" running {settings.binary_name}.')
        else:
            notes.append(
                f'{config_path} has no runtime "nvidia" running {settings.binary_name} yet: restart '
                "k3s once the toolkit is installed."
            )
    notes.extend(runtime_class_notes(settings))
    return MergePlan(schema, (), tuple(notes), "k3s", rules.version)
