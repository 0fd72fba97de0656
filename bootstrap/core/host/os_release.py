"""The host's distribution, as /etc/os-release tells it (os-release(5))."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Literal

Family = Literal["debian", "rhel", "unknown"]

_DEBIAN_IDS = frozenset({"debian", "ubuntu"})
_RHEL_IDS = frozenset({"rhel", "centos", "rocky", "almalinux", "fedora", "ol", "amzn"})
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class OsRelease:
    """ID, VERSION_ID, VERSION_CODENAME and ID_LIKE of /etc/os-release."""

    id: str
    version_id: str = ""
    codename: str = ""
    id_like: tuple[str, ...] = ()

    @property
    def family(self) -> Family:
        """Which package world the host lives in: apt/dpkg, dnf/rpm, or neither."""
        if self.id in _DEBIAN_IDS or any(like in _DEBIAN_IDS for like in self.id_like):
            return "debian"
        if self.id in _RHEL_IDS or any(like in _RHEL_IDS for like in self.id_like):
            return "rhel"
        return "unknown"

    @property
    def major_version(self) -> str:
        """ "9" for VERSION_ID="9.4", "22" for "22.04"; "" when the file has no VERSION_ID."""
        return self.version_id.split(".", 1)[0]

    def describe(self) -> str:
        """A short human name for messages: "debian 12 (bookworm)"."""
        text = self.id
        if self.version_id:
            text += f" {self.version_id}"
        if self.codename:
            text += f" ({self.codename})"
        return text


def _unquote(raw: str) -> str | None:
    """One os-release value with shell quoting rules; None for a line that is not valid."""
    try:
        words = shlex.split(raw, comments=False, posix=True)
    except ValueError:
        return None
    if not words:
        return ""
    if len(words) != 1:
        # An unquoted value with blanks is invalid by os-release(5); take it as written
        # rather than dropping the whole field.
        return " ".join(words)
    return words[0]


def parse_os_release_fields(text: str) -> dict[str, str]:
    """Every KEY=value assignment; comments, blank and malformed lines are skipped."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, raw = line.split("=", 1)
        key = key.strip()
        if not _KEY.match(key):
            continue
        value = _unquote(raw.strip())
        if value is not None:
            fields[key] = value
    return fields


def parse_os_release(text: str) -> OsRelease:
    """Parse the text of /etc/os-release (or /usr/lib/os-release).

    ID defaults to "linux" as os-release(5) says. Ubuntu's UBUNTU_CODENAME stands in when
    VERSION_CODENAME is missing (old releases), and Debian testing/sid without VERSION_ID
    keep an empty version.
    """
    fields = parse_os_release_fields(text)
    codename = fields.get("VERSION_CODENAME") or fields.get("UBUNTU_CODENAME", "")
    return OsRelease(
        id=fields.get("ID", "linux").lower(),
        version_id=fields.get("VERSION_ID", ""),
        codename=codename.lower(),
        id_like=tuple(word.lower() for word in fields.get("ID_LIKE", "").split()),
    )
