"""`gpunode render containerd`: the containerd runtime merge for a config file, offline.

Thin: read the file, call the core merge, print. It never runs containerd and never
writes a file; the node step does that (validated with `containerd config dump`).
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from gpunode.bootstrap.cli.contract import EXIT_OK, ContractCommand, Outcome, output_option
from gpunode.bootstrap.cli.messages import escape_controls
from gpunode.bootstrap.core.containerd.plan import (
    DEFAULT_DROPIN_PATH,
    FileChange,
    RuntimeSettings,
    config_schema_version,
    plan_runtime_merge,
)
from gpunode.bootstrap.errors import UserError
from gpunode.bootstrap.local_input import read_local_file

# What a file's schema says about the containerd that reads it, when --containerd-version
# is not given. Schema 2 is written by 1.x (and still read by 2.x): the 1.x rules give a
# result that both load (tests/unit/test_containerd_cli.py proves it with real binaries).
_ASSUMED_FOR_SCHEMA = {2: "1.7.0", 3: "2.0.0", 4: "2.3.0"}


def _read_config(path: Path) -> str | None:
    if not path.exists():
        if os.path.lexists(path):
            raise UserError(
                f"{path} is a symlink that leads nowhere (its target is missing, or the links loop).",
                fix="give the config file itself, or repair the link.",
            )
        return None
    data = read_local_file(path, what="a containerd config file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path} is not UTF-8 text (byte {exc.start}), so it is no TOML file containerd reads.",
            fix="give the containerd config.toml.",
        ) from None


def _status(change: FileChange) -> str:
    if change.old_text is None:
        return "new file"
    return "changed" if change.changed else "unchanged"


@click.command("containerd", cls=ContractCommand, empty_body={"files": [], "notes": [], "diff": None})
@click.option(
    "--config",
    "config_file",
    required=True,
    type=click.Path(dir_okay=True, path_type=Path),
    help="The containerd config.toml to merge into. A path that does not exist stands for a node "
    "with no config file (containerd's built-in defaults).",
)
@click.option(
    "--containerd-version",
    metavar="V",
    help="The node's containerd: a version (1.7, 2.1.4) or the output of `containerd --version`. "
    "Default: what the file's schema implies (2: 1.x, 3: 2.x).",
)
@click.option("--in-place", is_flag=True, help="Edit config.toml itself and print the complete new file, nothing else.")
@click.option("--diff", "show_diff", is_flag=True, help="Print a unified diff instead of the new files.")
@click.option(
    "--set-default-runtime",
    is_flag=True,
    help="Also make nvidia containerd's default runtime (alone that gives pods no GPUs: see the note).",
)
@click.option(
    "--runtime-path",
    default=RuntimeSettings().binary_name,
    show_default=True,
    metavar="PATH",
    help="The NVIDIA container runtime binary (the toolkit's).",
)
@click.option(
    "--dropin",
    "dropin_path",
    default=DEFAULT_DROPIN_PATH,
    show_default=True,
    metavar="PATH",
    help="Where the drop-in goes on the node (the imports entry names it).",
)
@click.option("--k3s", is_flag=True, help="The node runs k3s, which renders containerd's config itself.")
@output_option
def containerd_command(
    config_file: Path,
    containerd_version: str | None,
    in_place: bool,
    show_diff: bool,
    set_default_runtime: bool,
    runtime_path: str,
    dropin_path: str,
    k3s: bool,
    output: str,
) -> Outcome:
    """Add the containerd runtime "nvidia" to a config, and print what would be written.

    \b
    By default the runtime goes into a drop-in (/etc/containerd/conf.d/99-nvidia.toml) that
    config.toml imports; comments, order and every other setting of config.toml are kept.
    Exit status: 0 done, 2 bad input (the reason on standard error, nothing written).
    """
    text = _read_config(config_file)
    notes: list[str] = []
    if text is None:
        notes.append(f"{config_file} does not exist: starting from containerd's built-in defaults.")
    version = containerd_version
    if version is None:
        schema = config_schema_version(text, str(config_file))
        if schema is None and not k3s:
            what = "does not exist" if text is None else "sets nothing"
            raise UserError(
                f"{config_file} {what}, so no config schema tells which containerd the node runs.",
                fix="pass --containerd-version (the output of `containerd --version` on the node).",
            )
        version = _ASSUMED_FOR_SCHEMA.get(schema or 2, "1.7.0")
        if schema in _ASSUMED_FOR_SCHEMA:
            major = version.split(".")[0]
            notes.append(
                f"assuming containerd {major}.x from `version = {schema}` in {config_file}; "
                "pass --containerd-version to be exact."
            )
    settings = RuntimeSettings(
        binary_name=runtime_path,
        set_default_runtime=set_default_runtime,
        in_place=in_place,
        dropin_path=dropin_path,
    )
    plan = plan_runtime_merge(
        text, containerd_version=version, settings=settings, config_path=str(config_file), k3s=k3s
    )
    notes += plan.notes
    if show_diff and not plan.changed:
        notes.append("nothing to change.")
    for note in notes:  # notes go to stderr, so that stdout stays the file (or diff) alone
        click.echo(f"note: {escape_controls(note)}", err=True)
    body = {
        "files": [{"path": c.path, "status": _status(c), "content": c.new_text} for c in plan.files],
        "notes": notes,
        "diff": plan.diff,
    }
    if show_diff:
        out = plan.diff
    elif in_place:
        out = plan.files[0].new_text
    else:
        out = "".join(
            f"# ==> {c.path} ({_status(c)}) <==\n"
            + c.new_text
            + ("\n" if c.new_text and not c.new_text.endswith("\n") else "")
            for c in plan.files
        )
    return Outcome(EXIT_OK, body, out, verbatim=True)
