"""The contract every gpunode command keeps (docs/cli-contract.md), in one place.

A command joins it by being a `ContractCommand` (`@click.command(cls=ContractCommand)`, or
`@contract_command(...)`), and by returning an `Outcome` from its callback instead of
printing and exiting itself. Then:

- exit codes: 0 done or healthy; 1 the command ran and found or caused a failure; 2 bad
  input or could not check, before anything was changed; 130 on SIGINT, 143 on SIGTERM;
- no traceback for anything a user can cause: a `GpunodeError` is one paragraph "what is
  wrong. Fix: what to do.", click's usage errors are put in the same shape, and an
  unexpected exception (a bug) is one line naming it and the file its trace went to;
- `--output json` prints one envelope on stdout whatever happened (bad input included):
  `schema_version`, `command`, `ok`, `exit_code`, `dry_run`, `error` and the command's
  body, valid against `output.schema.json` next to this module;
- control characters in any message are escaped before they reach a terminal.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import click

from gpunode.bootstrap.cli.messages import escape_controls, one_paragraph, problem_and_fix
from gpunode.bootstrap.errors import GpunodeError, UserError
from gpunode.bootstrap.local_paths import state_dir

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM
SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).with_name("output.schema.json")

_INTERRUPT_REPORT = "gpunode.interrupt_report"
_EMITTED = "gpunode.emitted"
_ARGV = "gpunode.argv"


@dataclass
class Outcome:
    """What a command found or did: its exit code, its JSON body and its text."""

    exit_code: int
    body: Mapping[str, Any] = field(default_factory=dict)
    # Printed on stdout with --output text (nothing is printed when empty).
    text: str = ""
    # Why the exit code is not 0, when one sentence can say it (verify: "could not check").
    error: GpunodeError | None = None
    # A report that quotes hosts and clusters (their output, their names) has its control
    # characters escaped; a file the command prints for a pipe (render) goes out as it is.
    verbatim: bool = False


@dataclass(frozen=True)
class InterruptReport:
    """What a command had got through when it was stopped (bootstrap: hosts and steps)."""

    problem: str
    fix: str
    body: Mapping[str, Any] = field(default_factory=dict)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like SIGINT's KeyboardInterrupt so that gevent's hub hands it to
    the main greenlet the same way (it passes KeyboardInterrupt on, and swallows others)."""


def set_interrupt_report(ctx: click.Context, report: Callable[[], InterruptReport]) -> None:
    """Let the command say, when it is interrupted, how far it got (asked at that moment)."""
    ctx.meta[_INTERRUPT_REPORT] = report


def _sniff_output(args: Sequence[str]) -> str:
    """--output's value from raw arguments, for errors found before click parsed them."""
    value = "text"
    for index, arg in enumerate(args):
        if arg == "--":
            break
        if arg in ("--output", "-o") and index + 1 < len(args):
            value = args[index + 1]
        elif arg.startswith("--output="):
            value = arg.split("=", 1)[1]
    return "json" if value == "json" else "text"


def _command_name(path: str) -> str:
    words = path.split()
    return " ".join(words[1:]) if len(words) > 1 else (words[0] if words else "gpunode")


@dataclass
class _Run:
    command: str
    output: str
    dry_run: bool
    empty_body: Mapping[str, Any]

    def envelope(
        self,
        exit_code: int,
        body: Mapping[str, Any] | None,
        error: tuple[str, str | None, str] | None,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        document: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "command": self.command,
            "ok": exit_code == EXIT_OK,
            "exit_code": exit_code,
            "dry_run": self.dry_run,
            "error": None if error is None else {"problem": error[0], "fix": error[1], "kind": error[2]},
        }
        document.update(self.empty_body)
        if body:
            document.update(body)
        if extra:
            document.update(extra)
        return document

    def finish(self, outcome: Outcome) -> None:
        error = None
        if outcome.error is not None:
            problem, fix = problem_and_fix(outcome.error)
            if isinstance(outcome.error, UserError):
                kind = "bad_input"
            else:
                kind = "could_not_check" if outcome.exit_code == EXIT_BAD_INPUT else "failed"
            error = (problem, fix, kind)
            click.echo(one_paragraph(problem, fix), err=True)
        if self.output == "json":
            click.echo(json.dumps(self.envelope(outcome.exit_code, outcome.body, error), indent=2))
        elif outcome.text:
            text = outcome.text if outcome.verbatim else escape_controls(outcome.text, keep_newlines=True)
            click.echo(text, nl=not text.endswith("\n"))

    def fail(
        self, exit_code: int, problem: str, fix: str | None, kind: str, extra: Mapping[str, Any] | None = None
    ) -> None:
        click.echo(one_paragraph(problem, fix), err=True)
        if self.output == "json":
            click.echo(json.dumps(self.envelope(exit_code, None, (problem, fix, kind), extra), indent=2))


def _write_trace() -> str:
    """The current exception's full trace in a file of its own; returns where."""
    text = traceback.format_exc()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    name = f"crash-{stamp}-{os.getpid()}.txt"
    for directory in (str(state_dir()), tempfile.gettempdir()):
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            path = os.path.join(directory, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            return path
        except OSError:
            continue
    return "nowhere (no writable state or temporary directory)"


def _where(exc: BaseException) -> str:
    """The innermost place in gpunode's own code the exception passed (and where it was
    raised, when that was in a library)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "an unknown place"
    root = str(Path(__file__).resolve().parents[2])

    def shown(frame: traceback.FrameSummary) -> str:
        name = frame.filename
        name = name[len(root) + 1 :] if name.startswith(root + os.sep) else os.path.basename(name)
        return f"{name}:{frame.lineno}"

    own = tuple(os.path.join(root, part) + os.sep for part in ("bootstrap", "plugin"))
    ours = [f for f in frames if f.filename.startswith(own) and f.filename != __file__]
    last = frames[-1]
    if ours and ours[-1] is not last:
        return f"{shown(ours[-1])} (raised in {shown(last)})"
    return shown(last)


@contextlib.contextmanager
def _sigterm_as_exception() -> Iterator[None]:
    def raise_terminated(signum: int, frame: FrameType | None) -> None:
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, raise_terminated)
    except ValueError:  # not the main thread (an embedding program): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupted(run: _Run, ctx: click.Context, exc: BaseException) -> int:
    code = EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
    what = "terminated (SIGTERM)" if code == EXIT_TERMINATED else "interrupted (Ctrl-C)"
    reporter = ctx.meta.get(_INTERRUPT_REPORT)
    report = None
    if reporter is not None:
        with contextlib.suppress(Exception):
            report = reporter()
    if report is None:
        report = InterruptReport(
            problem=f"{what} before it finished.", fix="run the same command again; gpunode is safe to re-run"
        )
    else:
        report = InterruptReport(f"{what}: {report.problem}", report.fix, report.body)
    problem, fix = problem_and_fix(GpunodeError(report.problem, report.fix))
    run.fail(code, problem, fix, "interrupted", report.body)
    return code


def _output_of(ctx: click.Context) -> str:
    """--output as parsed, unless it was not given here: then as the raw arguments say (a
    group fails before its subcommand has parsed the --output given to it)."""
    given = ctx.params.get("output")
    if given in ("text", "json") and ctx.get_parameter_source("output") is not click.core.ParameterSource.DEFAULT:
        return str(given)
    return _sniff_output(ctx.meta.get(_ARGV, sys.argv[1:]))


def _guard(ctx: click.Context, empty_body: Mapping[str, Any], invoke: Callable[[], Any], *, leaf: bool) -> Any:
    """Run a command's callback under the contract; returns what click should return."""
    run = _Run(
        command=_command_name(ctx.command_path),
        output=_output_of(ctx),
        dry_run=bool(ctx.params.get("dry_run", False)),
        empty_body=empty_body,
    )
    code = EXIT_OK
    try:
        # Only gpunode's own commands turn SIGTERM into an exception; a group passes on to
        # commands that handle signals themselves (the plugin's server stops cleanly).
        with _sigterm_as_exception() if leaf else contextlib.nullcontext():
            result = invoke()
        if isinstance(result, Outcome):
            if ctx.meta.get(_EMITTED):
                return None
            ctx.meta[_EMITTED] = True
            run.finish(result)
            code = result.exit_code
            if code == EXIT_OK:
                return None
        else:
            return result
    except (click.exceptions.Exit, click.exceptions.Abort) as exc:
        if isinstance(exc, click.exceptions.Abort):  # Ctrl-C or EOF at a prompt
            code = _interrupted(run, ctx, KeyboardInterrupt())
        else:
            raise
    except click.ClickException as exc:
        _help_for_no_args(exc)
        problem = escape_controls(exc.format_message())
        if not problem.endswith("."):
            problem += "."
        run.fail(EXIT_BAD_INPUT, problem, f"see `{ctx.command_path} --help`.", "bad_input")
        code = EXIT_BAD_INPUT
    except GpunodeError as exc:
        problem, fix = problem_and_fix(exc)
        code = exc.exit_code
        run.fail(code, problem, fix, "bad_input" if isinstance(exc, UserError) else "failed")
    except KeyboardInterrupt as exc:
        code = _interrupted(run, ctx, exc)
    except Exception as exc:
        where = _where(exc)
        path = _write_trace()
        run.fail(
            EXIT_FAILED,
            f"internal error (a bug in gpunode): {escape_controls(type(exc).__name__)} at {where}; "
            f"the full trace is in {path}.",
            "Report it with that file; nothing in your input is known to be wrong.",
            "internal",
        )
        code = EXIT_FAILED
    ctx.meta[_EMITTED] = True
    raise click.exceptions.Exit(code)


def _help_for_no_args(exc: click.ClickException) -> None:
    """`gpunode` or `gpunode plugin` alone: the help, as click shows it, is the answer (exit 2)."""
    no_args = getattr(click.exceptions, "NoArgsIsHelpError", None)
    if no_args is not None and isinstance(exc, no_args):
        context = getattr(exc, "ctx", None)
        click.echo(context.get_help() if context is not None else exc.format_message(), err=True)
        raise click.exceptions.Exit(EXIT_BAD_INPUT)


def _usage_error(command: click.Command, info_name: str | None, args: Sequence[str], parent: Any, exc: Any) -> None:
    _help_for_no_args(exc)
    path = " ".join(p for p in ((parent.command_path if parent else ""), info_name or command.name or "") if p)
    run = _Run(
        command=_command_name(path),
        output=_sniff_output(list(args)),
        dry_run="--dry-run" in args,
        empty_body=getattr(command, "empty_body", {}),
    )
    problem = escape_controls(exc.format_message())
    if not problem.endswith("."):
        problem += "."
    run.fail(EXIT_BAD_INPUT, problem, f"see `{path} --help`.", "bad_input")
    raise click.exceptions.Exit(EXIT_BAD_INPUT)


class ContractCommand(click.Command):
    """A click command that keeps gpunode's contract (see the module's docstring)."""

    def __init__(self, *args: Any, empty_body: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.empty_body: Mapping[str, Any] = empty_body or {}

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        original = list(args)
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.ClickException as exc:
            _usage_error(self, info_name, original, parent, exc)
            raise  # unreachable: _usage_error raises Exit

    def invoke(self, ctx: click.Context) -> Any:
        return _guard(ctx, self.empty_body, lambda: super(ContractCommand, self).invoke(ctx), leaf=True)


class ContractGroup(click.Group):
    """A click group that keeps the contract for itself and its subcommands' resolution."""

    command_class = ContractCommand

    def __init__(self, *args: Any, empty_body: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.empty_body: Mapping[str, Any] = empty_body or {}

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        original = list(args)
        try:
            ctx = super().make_context(info_name, args, parent, **extra)
        except click.ClickException as exc:
            _usage_error(self, info_name, original, parent, exc)
            raise
        if parent is None:
            ctx.meta[_ARGV] = original  # for errors found before a subcommand parsed --output
        return ctx

    def invoke(self, ctx: click.Context) -> Any:
        return _guard(ctx, self.empty_body, lambda: super(ContractGroup, self).invoke(ctx), leaf=False)


ContractGroup.group_class = ContractGroup


def output_option(function: Callable[..., Any]) -> Callable[..., Any]:
    """The one --output option: text for people, json (the envelope) for programs."""
    return click.option(
        "--output",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        help="text for people; json: one document on stdout (schema: docs/cli-contract.md), even on failure.",
    )(function)
