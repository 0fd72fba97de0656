"""Regular expressions that Prometheus will evaluate (`=~` matchers in alert rules)."""

from __future__ import annotations

from gpunode.bootstrap.errors import UserError


def re2_problem(pattern: str) -> str | None:
    """Why Prometheus would refuse `pattern`, or None. Prometheus matches label values with
    Go's regexp, which is RE2: Python's `re` accepts lookarounds and backreferences that
    RE2 rejects, so only RE2 itself can say (google-re2, the RE2 library's own binding)."""
    import re2

    options = re2.Options()
    options.log_errors = False  # RE2 would also log the error on stderr through absl
    try:
        re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        return reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)
    return None


def check_re2(flag: str, pattern: str, example: str) -> None:
    """Refuse `pattern`, given as option `flag`, when Prometheus could not evaluate it."""
    problem = re2_problem(pattern)
    if problem is not None:
        raise UserError(
            f"{flag} {pattern!r} is not an RE2 regular expression, the syntax Prometheus uses ({problem}).",
            fix=f"give an RE2 expression such as {example} (RE2 has no lookaround and no backreferences)",
        )
