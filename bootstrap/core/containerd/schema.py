"""What gpunode knows about containerd's versions and config layouts (pure data, no I/O).

Everything here was checked against real binaries (Debian's containerd 1.6.20, 1.7.24 and
2.1.9, see tests/unit/test_containerd_binaries.py):

- Config schema 2 (containerd 1.x, still read by 2.x) keeps the CRI runtimes under
  `plugins."io.containerd.grpc.v1.cri".containerd.runtimes`; schema 3 (2.x) under
  `plugins."io.containerd.cri.v1.runtime".containerd.runtimes`; schema 4 (2.3 and later)
  keeps them where 3 does.
- containerd 1.x replaces a whole plugin table from an import: a drop-in that names
  `plugins."io.containerd.grpc.v1.cri"` wipes every CRI setting of the main file.
- containerd 1.x also drops its built-in `runc` runtime as soon as a config names any
  runtime, so a config that only adds `nvidia` leaves the default runtime undefined.
- containerd 2.x merges imported plugin tables key by key, keeps its built-in runtimes, and
  reads no drop-in directory unless `imports` names it.
- containerd 1.6 resolves a relative glob in `imports` against its working directory, not
  the main file's directory (1.7 and 2.x use the main file's directory for both).
- containerd 2.x applies an import's `version` to the merged config: a schema 3 drop-in over
  a schema 2 main file makes containerd ignore the main file's CRI settings, and a schema 2
  drop-in over a schema 3 main file is silently ignored. A drop-in must use the main file's
  schema.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gpunode.bootstrap.errors import UserError

RUNC_V2 = "io.containerd.runc.v2"

_CRI_PLUGIN_V2 = "io.containerd.grpc.v1.cri"
_CRI_RUNTIME_PLUGIN_V3 = "io.containerd.cri.v1.runtime"


class ContainerdConfigError(UserError):
    """Bad containerd input: a config file, a version, or settings gpunode cannot honour."""


class TomlSyntaxError(ContainerdConfigError):
    """A file that is not valid TOML; names the file, line and column."""

    def __init__(self, path: str, line: int | None, column: int | None, reason: str) -> None:
        where = f"line {line}, column {column}" if line is not None else "end of file"
        super().__init__(
            f"{path} is not valid TOML ({where}): {reason}.",
            fix=f"correct {path} at that spot (containerd would refuse it too); gpunode wrote nothing.",
        )
        self.path = path
        self.line = line
        self.column = column
        self.reason = reason


class UnsupportedSchemaError(ContainerdConfigError):
    """A config schema version gpunode will not guess at (1, none, unknown, too new)."""


class UnsupportedContainerdVersionError(ContainerdConfigError):
    """A containerd version string gpunode cannot read, or a containerd it does not know."""


class K3sManagedConfigError(ContainerdConfigError):
    """k3s owns containerd's config; the requested change cannot be made the k3s way."""


class InvalidRuntimeSettingsError(ContainerdConfigError):
    """RuntimeSettings with a value that would make a broken or unsafe config."""


class ConfigStructureError(ContainerdConfigError):
    """Valid TOML whose shape containerd would reject (a table where a value is, ...)."""


_VERSION_TOKEN = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?(?:[-+~].*)?$")


def parse_containerd_version(text: str) -> tuple[int, int, int]:
    """(major, minor, patch) from `containerd --version` output or a bare version.

    Accepts Debian's `containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3`,
    upstream's `containerd containerd.io 1.7.27 05044ec...`, 2.x's
    `containerd github.com/containerd/containerd/v2 2.1.9+unknown`, k3s's `v1.7.23-k3s2`,
    and bare `2.1`, `v2.0.0`, `1.7.24~ds1-6`.
    """
    for token in text.split():
        match = _VERSION_TOKEN.match(token)
        if match:
            major, minor, patch = match.group(1), match.group(2), match.group(3)
            return int(major), int(minor), int(patch or 0)
    raise UnsupportedContainerdVersionError(
        f"cannot read a containerd version from {text.strip()!r}.",
        fix="pass the output of `containerd --version`, or a version such as 1.7 or 2.1.",
    )


@dataclass(frozen=True)
class ContainerdRules:
    """How one containerd release reads its config, as far as the runtime merge cares."""

    version: tuple[int, int, int]

    @property
    def label(self) -> str:
        return ".".join(str(part) for part in self.version)

    @property
    def major(self) -> int:
        return self.version[0]

    @property
    def imports_replace_plugin_tables(self) -> bool:
        """containerd 1.x: an imported plugin table replaces the main file's wholesale."""
        return self.major == 1

    @property
    def runtimes_replace_builtin(self) -> bool:
        """containerd 1.x: a config that names any runtime loses the built-in `runc`."""
        return self.major == 1

    @property
    def relative_globs_follow_config_dir(self) -> bool:
        """1.6 resolves a relative import *glob* against its working directory (a plain
        relative path against the config's directory); 1.7 and 2.x resolve both against
        the config's directory."""
        return self.version >= (1, 7, 0)

    @property
    def schemas(self) -> tuple[int, ...]:
        """The config schema versions this containerd loads."""
        if self.major == 1:
            return (2,)
        if self.version < (2, 3, 0):
            return (2, 3)
        return (2, 3, 4)

    @property
    def native_schema(self) -> int:
        """The schema gpunode writes when there is no config file yet.

        2.x gets 3, not 4: every 2.x release reads 3, and a node rolled back from 2.3 to an
        earlier 2.x would refuse a version 4 file.
        """
        return 2 if self.major == 1 else 3

    def builtin_runc(self) -> dict[str, object]:
        """The built-in `runc` runtime, as gpunode writes it when 1.x would otherwise drop it.

        Options are left out: an absent option is the same zero value the built-in table
        lists. 1.7 gives its runc `sandbox_mode = "podsandbox"`.
        """
        table: dict[str, object] = {"runtime_type": RUNC_V2}
        if self.version >= (1, 7, 0) and self.major == 1:
            table["sandbox_mode"] = "podsandbox"
        return table


def containerd_rules(containerd_version: str) -> ContainerdRules:
    version = parse_containerd_version(containerd_version)
    if (version[0] == 1 and version[1] >= 3) or version[0] == 2:
        return ContainerdRules(version)
    raise UnsupportedContainerdVersionError(
        f"containerd {'.'.join(map(str, version))} is not a release gpunode knows how to configure "
        "(it knows 1.3 to 1.7, whose config schema is 2, and 2.x, whose schemas are 2 to 4).",
        fix="configure the nvidia runtime by hand, or run a containerd 1.6, 1.7 or 2.x.",
    )


def cri_plugin_key(schema: int) -> str:
    """The plugin table that holds `containerd.runtimes` in a config of this schema."""
    return _CRI_PLUGIN_V2 if schema == 2 else _CRI_RUNTIME_PLUGIN_V3


def cri_path(schema: int) -> tuple[str, ...]:
    return ("plugins", cri_plugin_key(schema))


def runtimes_path(schema: int) -> tuple[str, ...]:
    return (*cri_path(schema), "containerd", "runtimes")


def default_runtime_path(schema: int) -> tuple[str, ...]:
    return (*cri_path(schema), "containerd", "default_runtime_name")


def check_schema(schema: int | None, rules: ContainerdRules, path: str) -> int:
    """The file's schema if this containerd reads it, else an error that says what to do."""
    if schema is None or schema == 1:
        what = "has no `version` key" if schema is None else "says `version = 1`"
        if rules.major >= 2:
            fix = (
                f"convert it with `containerd config migrate > new.toml` (containerd "
                f"{rules.label} prints the current layout), review new.toml and put it in "
                f"place of {path}; or move {path} away so gpunode starts from containerd's "
                "built-in defaults."
            )
        else:
            fix = (
                f"add `version = 2` at the top of {path} and rename its plugin tables to "
                'the full plugin IDs (`[plugins.cri]` becomes `[plugins."io.containerd.grpc.v1.cri"]`, '
                "see containerd's docs/PLUGINS.md); or move the file away so gpunode starts "
                "from containerd's built-in defaults."
            )
        raise UnsupportedSchemaError(
            f"{path} {what}, so containerd reads it in the deprecated version 1 layout, whose "
            "plugin names gpunode will not guess at.",
            fix=fix,
        )
    if schema in (2, 3, 4):
        if schema in rules.schemas:
            return schema
        newest = max(rules.schemas)
        raise UnsupportedSchemaError(
            f"{path} says `version = {schema}`, but containerd {rules.label} reads config "
            f"versions up to {newest}; it would refuse this file or ignore its plugin settings.",
            fix=(
                f"check the containerd version you gave ({rules.label}); if it is right, "
                f"write {path} in the version {newest} layout (`containerd config default` "
                "of this containerd shows it)."
            ),
        )
    raise UnsupportedSchemaError(
        f"{path} says `version = {schema}`, a containerd config schema gpunode does not know (it knows 2, 3 and 4).",
        fix=f"check {path}; if a newer containerd wrote it, add the nvidia runtime by hand.",
    )
