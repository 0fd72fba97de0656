"""Enable Debian's contrib / non-free / non-free-firmware components without editing the
system's own apt sources.

NVIDIA's driver lives in `non-free`, its GSP firmware in `non-free-firmware`, and the glue
packages it depends on (`nvidia-alternative` -> `glx-alternative-nvidia`, `nvidia-support`,
`nvidia-modprobe`, `nvidia-persistenced`) in `contrib`: all three must be on for the
distro's own suites. gpunode reads every sources file, and when something is missing it
writes ONE file of its own that adds only the missing components, for the same mirrors,
suites and signing options the system already uses (apt refuses two entries for one
mirror and suite whose Signed-By differ).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gpunode.bootstrap.core.host.os_release import OsRelease
from gpunode.bootstrap.core.packages.common import FileSpec
from gpunode.bootstrap.errors import HostStateError, UserError

GPUNODE_NONFREE_SOURCES = "/etc/apt/sources.list.d/gpunode-debian-nonfree.sources"
DEBIAN_COMPONENT_ORDER = ("main", "contrib", "non-free", "non-free-firmware")
DEFAULT_NEEDED = ("contrib", "non-free", "non-free-firmware")

# Options that belong to a mirror + suite as a whole: apt wants them identical on every
# entry for it, so a new entry copies them. (deb822 field name, one-line option name)
_SHARED_OPTIONS = (("Signed-By", "signed-by"), ("Architectures", "arch"), ("Trusted", "trusted"))


@dataclass(frozen=True)
class SourceEntry:
    """One `deb` line, or one deb822 stanza expanded to its URIs."""

    path: str
    types: tuple[str, ...]
    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]
    options: tuple[tuple[str, str], ...]  # deb822 field name -> value, as written
    enabled: bool = True


def _apt_reads(path: str) -> str | None:
    """The format apt reads a file in, or None for a file apt ignores."""
    name = path.rsplit("/", 1)[-1]
    if path.endswith("/sources.list") or name == "sources.list":
        return "list"
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
        return None
    if name.endswith(".list"):
        return "list"
    if name.endswith(".sources"):
        return "deb822"
    return None


def _normalise_uri(uri: str) -> str:
    return uri.rstrip("/")


def _parse_one_line(path: str, text: str) -> list[SourceEntry]:
    entries: list[SourceEntry] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.match(r"^(deb|deb-src)\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s*(.*)$", line)
        if not match:
            continue
        kind, options_text, uri, suite, rest = match.groups()
        options: list[tuple[str, str]] = []
        for option in (options_text or "").split():
            key, _, value = option.partition("=")
            for field_name, option_name in _SHARED_OPTIONS:
                if key.strip().lower() == option_name:
                    options.append((field_name, value.replace(",", " ")))
        entries.append(
            SourceEntry(
                path=path,
                types=(kind,),
                uri=_normalise_uri(uri),
                suites=(suite,),
                components=tuple(rest.split()),
                options=tuple(options),
            )
        )
    return entries


def _deb822_stanzas(text: str) -> list[dict[str, str]]:
    """Stanzas as field -> value (continuation lines kept, joined with newlines)."""
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last_key: str | None = None
    for raw in text.splitlines():
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if current:
                stanzas.append(current)
            current, last_key = {}, None
            continue
        if raw[0] in " \t":
            if last_key is not None:
                current[last_key] += "\n" + raw
            continue
        key, sep, value = raw.partition(":")
        if not sep:
            continue
        last_key = key.strip()
        current[last_key] = value.strip()
    if current:
        stanzas.append(current)
    return stanzas


def _field(stanza: Mapping[str, str], name: str) -> str | None:
    for key, value in stanza.items():
        if key.lower() == name.lower():
            return value
    return None


def _parse_deb822(path: str, text: str) -> list[SourceEntry]:
    entries: list[SourceEntry] = []
    for stanza in _deb822_stanzas(text):
        types = tuple((_field(stanza, "Types") or "").split())
        uris = (_field(stanza, "URIs") or "").split()
        suites = tuple((_field(stanza, "Suites") or "").split())
        components = tuple((_field(stanza, "Components") or "").split())
        enabled = (_field(stanza, "Enabled") or "yes").strip().lower() not in ("no", "false", "0")
        options = tuple(
            (field_name, value)
            for field_name, _ in _SHARED_OPTIONS
            if (value := _field(stanza, field_name)) is not None
        )
        for uri in uris:
            entries.append(
                SourceEntry(
                    path=path,
                    types=types,
                    uri=_normalise_uri(uri),
                    suites=suites,
                    components=components,
                    options=options,
                    enabled=enabled,
                )
            )
    return entries


def parse_apt_sources(sources: Mapping[str, str]) -> list[SourceEntry]:
    """Every entry apt would read from these files (path -> text), in apt's file order.

    Files apt ignores (`foo.list.disabled`, `foo.save`) are skipped, like apt does.
    """

    def order(path: str) -> tuple[int, str]:
        return (0 if path.rsplit("/", 1)[-1] == "sources.list" else 1, path)

    entries: list[SourceEntry] = []
    for path in sorted(sources, key=order):
        kind = _apt_reads(path)
        if kind == "list":
            entries += _parse_one_line(path, sources[path])
        elif kind == "deb822":
            entries += _parse_deb822(path, sources[path])
    return entries


def debian_own_suites(os: OsRelease) -> tuple[str, ...]:
    if os.id != "debian":
        raise UserError(f"Enabling Debian components applies to Debian only, not to {os.describe()}.")
    if not os.codename:
        raise HostStateError(
            "/etc/os-release has no VERSION_CODENAME, so gpunode cannot tell which Debian "
            "suites to enable non-free for.",
            fix="run gpunode on a Debian stable release (bookworm, trixie)",
        )
    return (os.codename, f"{os.codename}-updates", f"{os.codename}-security")


def _canonical(components: Iterable[str]) -> tuple[str, ...]:
    wanted = set(components)
    known = [c for c in DEBIAN_COMPONENT_ORDER if c in wanted]
    return tuple(known + sorted(wanted - set(known)))


def missing_components(
    sources: Mapping[str, str], os: OsRelease, needed: tuple[str, ...] = DEFAULT_NEEDED
) -> dict[str, tuple[str, ...]]:
    """Own suite -> the needed components no enabled `deb` entry provides for it.

    Only suites the system already uses are considered; the result is empty when all
    needed components are on.
    """
    own = debian_own_suites(os)
    entries = [e for e in parse_apt_sources(sources) if e.enabled and "deb" in e.types]
    present: dict[str, set[str]] = {}
    for entry in entries:
        for suite in entry.suites:
            if suite in own:
                present.setdefault(suite, set()).update(entry.components)
    if not present:
        raise HostStateError(
            f"No enabled apt source for Debian {os.codename} was found in "
            f"{', '.join(sorted(sources)) or 'the sources files'}, so gpunode cannot tell "
            "which mirror to enable non-free on.",
            fix=f"add a `deb` source for {os.codename} (the Debian archive or your mirror) and run gpunode again",
        )
    missing: dict[str, tuple[str, ...]] = {}
    for suite in own:
        if suite in present:
            gap = [c for c in needed if c not in present[suite]]
            if gap:
                missing[suite] = _canonical(gap)
    return missing


def _render_stanza(
    uri: str, suites: list[str], components: tuple[str, ...], options: tuple[tuple[str, str], ...]
) -> str:
    lines = ["Types: deb", f"URIs: {uri}", f"Suites: {' '.join(suites)}", f"Components: {' '.join(components)}"]
    for name, value in options:
        # An inline key block starts on the next line: no blank after the colon.
        lines.append(f"{name}:{value}" if value.startswith("\n") else f"{name}: {value}")
    return "\n".join(lines) + "\n"


def plan_apt_components(
    sources: Mapping[str, str],
    os: OsRelease,
    needed: tuple[str, ...] = DEFAULT_NEEDED,
) -> FileSpec | None:
    """The gpunode sources file that turns on the missing components, or None.

    `sources` is the text of /etc/apt/sources.list and of every file in
    /etc/apt/sources.list.d/, keyed by path. None means every needed component is
    already enabled for every Debian suite of this release the system uses, which is
    also the answer once the returned file is among `sources` (idempotent).
    """
    for component in needed:
        if not re.fullmatch(r"[a-z0-9][a-z0-9.+\-]*", component):
            raise UserError(f"Invalid apt component name {component!r}.")
    missing = missing_components(sources, os, needed)
    if not missing:
        return None
    own = debian_own_suites(os)
    # (uri, options, components) -> suites, in the order the system lists them.
    groups: dict[tuple[str, tuple[tuple[str, str], ...], tuple[str, ...]], list[str]] = {}
    seen: set[tuple[str, str]] = set()
    for entry in parse_apt_sources(sources):
        if not entry.enabled or "deb" not in entry.types:
            continue
        for suite in entry.suites:
            if suite not in own or suite not in missing or (entry.uri, suite) in seen:
                continue
            seen.add((entry.uri, suite))
            groups.setdefault((entry.uri, entry.options, missing[suite]), []).append(suite)
    header = (
        "# Written by gpunode. NVIDIA's driver packages come from Debian's contrib, non-free\n"
        "# and non-free-firmware components; this adds the ones the system's own sources do\n"
        "# not enable, for the same mirrors, suites and keys. The system's files are untouched.\n"
    )
    stanzas = [
        _render_stanza(uri, suites, components, options) for (uri, options, components), suites in groups.items()
    ]
    return FileSpec(path=GPUNODE_NONFREE_SOURCES, content=header + "\n".join(stanzas))
