"""Secret values kept out of what gpunode prints: diffs, step details, JSON, logs.

containerd configs hold registry credentials (`registry.configs."<host>".auth` with
`username`, `password`, `auth`, `identitytoken`), and a failed command can echo them.
Whatever gpunode shows a person or a log, it passes through `mask_secrets`, which replaces
the value of every key whose name says it holds a secret, in TOML (`key = value`, inline
tables), JSON (`"key": value`) and YAML (`key: value`) alike. The files on the host keep
their values; only what is shown is masked.
"""

from __future__ import annotations

import re

MASK = '"***"'

# A key that names a secret (matched inside the name: registry_password, x-auth-token).
_SECRET_WORDS = r"(?:password|passwd|passphrase|auth|token|secret|credential|api_?key|private_?key|bearer)"
_KEY = rf"""(?:"[^"\n]*{_SECRET_WORDS}[^"\n]*"|'[^'\n]*{_SECRET_WORDS}[^'\n]*'|[\w-]*{_SECRET_WORDS}[\w-]*)"""
_VALUE = r"""(?:"(?:[^"\\\n]|\\.)*"|'[^'\n]*'|\{[^}\n]*\}|[^\s,}\]]+)"""
_ASSIGNMENT = re.compile(rf"(?i)({_KEY}\s*[=:]\s*)({_VALUE})")


def mask_secrets(text: str) -> str:
    """`text` with the value of every secret-bearing key replaced by "***"."""
    if not text:
        return text
    return _ASSIGNMENT.sub(lambda match: match.group(1) + MASK, text)
