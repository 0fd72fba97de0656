"""How gpunode says what went wrong: one shape, safe for a terminal.

Every message reads "what is wrong. Fix: what to do." Values and paths appear as the user
gave them, except that control characters are escaped: a value such as `\\x1b]0;owned\\x07`
must not retitle the user's terminal or fake a line of output.
"""

from __future__ import annotations

import unicodedata

from gpunode.bootstrap.errors import GpunodeError

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\0": "\\0"}


def escape_controls(text: str, *, keep_newlines: bool = False) -> str:
    """`text` with every control character (C0, DEL, C1, and the bidi/format controls
    that reorder what a terminal shows) written as a visible escape. `keep_newlines` keeps
    line breaks and tabs (a report of several lines)."""
    out: list[str] = []
    for char in text:
        if keep_newlines and char in "\n\t":
            out.append(char)
        elif char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp"):
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return text
    if text[-1] not in ".!?":
        text += "."
    return text


def problem_and_fix(exc: GpunodeError) -> tuple[str, str | None]:
    """The problem and the fix of an error, each one escaped sentence."""
    problem = _sentence(escape_controls(exc.problem))
    fix = _sentence(escape_controls(exc.fix)) if exc.fix else None
    if fix:
        fix = fix[0].upper() + fix[1:]
    return problem, fix


def one_paragraph(problem: str, fix: str | None) -> str:
    """`gpunode: what is wrong. Fix: what to do.`"""
    return f"gpunode: {problem}" + (f" Fix: {fix}" if fix else "")
