"""Enabling Debian's contrib / non-free / non-free-firmware with one gpunode file, checked
against real-world sources files and against real apt (offline: --print-uris)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from private_apt import PrivateApt

from gpunode.bootstrap.core.host.os_release import OsRelease
from gpunode.bootstrap.core.packages.apt_sources import (
    GPUNODE_NONFREE_SOURCES,
    missing_components,
    parse_apt_sources,
    plan_apt_components,
)
from gpunode.bootstrap.errors import HostStateError, UserError

BOOKWORM = OsRelease(id="debian", version_id="12", codename="bookworm")
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"

# Debian 12's installer / cloud images: deb822, main only.
DEFAULT_DEB822 = f"""Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: {KEYRING}

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: {KEYRING}
"""
# The classic one-line file the Debian 12 installer writes (with deb-src lines).
CLASSIC = """#deb cdrom:[Debian GNU/Linux 12.5.0 _Bookworm_ - Official amd64 NETINST]/ bookworm main non-free-firmware

deb http://deb.debian.org/debian/ bookworm main non-free-firmware
deb-src http://deb.debian.org/debian/ bookworm main non-free-firmware

deb http://security.debian.org/debian-security bookworm-security main non-free-firmware
deb-src http://security.debian.org/debian-security bookworm-security main non-free-firmware

# bookworm-updates, to get updates before a point release is made;
deb http://deb.debian.org/debian/ bookworm-updates main non-free-firmware
deb-src http://deb.debian.org/debian/ bookworm-updates main non-free-firmware
"""
ALL_ENABLED = DEFAULT_DEB822.replace("Components: main", "Components: main contrib non-free non-free-firmware")


def plan(sources: dict[str, str], **kwargs: object):  # type: ignore[no-untyped-def]
    return plan_apt_components(sources, BOOKWORM, **kwargs)  # type: ignore[arg-type]


def stanzas(content: str) -> list[dict[str, str]]:
    out = []
    for block in content.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith("#"))
        if fields:
            out.append(fields)
    return out


def test_default_deb822_gets_one_file_for_the_same_mirrors_and_key() -> None:
    sources = {"/etc/apt/sources.list.d/debian.sources": DEFAULT_DEB822, "/etc/apt/sources.list": ""}
    result = plan(sources)
    assert result is not None and result.path == GPUNODE_NONFREE_SOURCES
    assert stanzas(result.content) == [
        {
            "Types": "deb",
            "URIs": "http://deb.debian.org/debian",
            "Suites": "bookworm bookworm-updates",
            "Components": "contrib non-free non-free-firmware",
            "Signed-By": KEYRING,
        },
        {
            "Types": "deb",
            "URIs": "http://deb.debian.org/debian-security",
            "Suites": "bookworm-security",
            "Components": "contrib non-free non-free-firmware",
            "Signed-By": KEYRING,
        },
    ]
    # Idempotent: with gpunode's file in place there is nothing left to do.
    assert plan({**sources, result.path: result.content}) is None


def test_already_enabled_changes_nothing() -> None:
    assert plan({"/etc/apt/sources.list.d/debian.sources": ALL_ENABLED}) is None


def test_classic_sources_list_adds_only_what_is_missing() -> None:
    sources = {"/etc/apt/sources.list": CLASSIC}
    assert missing_components(sources, BOOKWORM) == {
        "bookworm": ("contrib", "non-free"),
        "bookworm-updates": ("contrib", "non-free"),
        "bookworm-security": ("contrib", "non-free"),
    }
    result = plan(sources)
    assert result is not None
    got = stanzas(result.content)
    assert {(s["URIs"], s["Suites"], s["Components"]) for s in got} == {
        ("http://deb.debian.org/debian", "bookworm bookworm-updates", "contrib non-free"),
        ("http://security.debian.org/debian-security", "bookworm-security", "contrib non-free"),
    }
    assert all("Signed-By" not in s for s in got)  # the system's entries have none either
    assert plan({**sources, result.path: result.content}) is None


def test_disabled_and_commented_entries_do_not_count() -> None:
    disabled = ALL_ENABLED.replace("Signed-By", "Enabled: no\nSigned-By")
    commented = "# deb http://deb.debian.org/debian bookworm main contrib non-free non-free-firmware\n"
    sources = {
        "/etc/apt/sources.list.d/debian.sources": DEFAULT_DEB822,
        "/etc/apt/sources.list.d/old.sources": disabled,
        "/etc/apt/sources.list": commented,
        # apt ignores files without .list/.sources: so do we.
        "/etc/apt/sources.list.d/nonfree.list.disabled": "deb http://deb.debian.org/debian bookworm contrib non-free non-free-firmware\n",
        "/etc/apt/sources.list.d/nonfree.list.save": "deb http://deb.debian.org/debian bookworm contrib non-free non-free-firmware\n",
    }
    assert set(missing_components(sources, BOOKWORM)) == {"bookworm", "bookworm-updates", "bookworm-security"}


def test_mixed_formats_and_a_mirror_uri() -> None:
    mirror = "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg arch=amd64] http://mirror.example.org/debian/ bookworm main contrib\n"
    sources = {
        "/etc/apt/sources.list": mirror,
        "/etc/apt/sources.list.d/security.sources": (
            "Types: deb deb-src\nURIs: http://security.debian.org/debian-security\n"
            "Suites: bookworm-security\nComponents: main contrib non-free non-free-firmware\n"
            f"Signed-By: {KEYRING}\n"
        ),
    }
    result = plan(sources)
    assert result is not None
    assert stanzas(result.content) == [
        {
            "Types": "deb",
            "URIs": "http://mirror.example.org/debian",
            "Suites": "bookworm",
            "Components": "non-free non-free-firmware",
            "Signed-By": KEYRING,
            "Architectures": "amd64",
        }
    ]
    assert plan({**sources, result.path: result.content}) is None


def test_inline_signed_by_key_block_is_copied_verbatim() -> None:
    inline = (
        "Types: deb\nURIs: https://mirror.example.net/debian\nSuites: bookworm\nComponents: main\n"
        "Signed-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n mQINBGPL0BUBEADmW5NdOOHwPIJlgPu6JDcKw/NZJPR8lsD9K7UWV7XYSHbHFZ+W\n"
        " -----END PGP PUBLIC KEY BLOCK-----\n"
    )
    result = plan({"/etc/apt/sources.list.d/mirror.sources": inline})
    assert result is not None
    assert "Signed-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n mQINBG" in result.content
    assert plan({"/etc/apt/sources.list.d/mirror.sources": inline, result.path: result.content}) is None


def test_custom_needed_components_and_bad_input() -> None:
    assert plan({"/etc/apt/sources.list": CLASSIC}, needed=("non-free-firmware",)) is None
    with pytest.raises(UserError):
        plan({"/etc/apt/sources.list": CLASSIC}, needed=("non free",))
    with pytest.raises(HostStateError, match="No enabled apt source for Debian bookworm"):
        plan({"/etc/apt/sources.list": "deb http://deb.debian.org/debian bullseye main\n"})
    with pytest.raises(UserError, match="Debian only"):
        plan_apt_components({}, OsRelease(id="ubuntu", version_id="22.04", codename="jammy"))


def test_parser_reads_what_apt_reads() -> None:
    entries = parse_apt_sources(
        {"/etc/apt/sources.list": CLASSIC, "/etc/apt/sources.list.d/debian.sources": DEFAULT_DEB822}
    )
    kinds = [(e.types, e.uri, e.suites) for e in entries]
    assert (("deb-src",), "http://deb.debian.org/debian", ("bookworm",)) in kinds
    assert (("deb",), "http://deb.debian.org/debian-security", ("bookworm-security",)) in kinds


SCENARIOS = {
    "deb822-default": {"debian.sources": DEFAULT_DEB822},
    "classic": {"sources.list": CLASSIC},
    "partly-enabled": {
        "debian.sources": DEFAULT_DEB822.replace(
            "Components: main\nSigned-By", "Components: main contrib\nSigned-By", 1
        )
    },
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_real_apt_accepts_the_result_and_fetches_the_components(name: str, tmp_path: Path) -> None:
    """apt itself parses the system's files plus gpunode's (no Signed-By conflict, no
    duplicate target) and would fetch contrib, non-free and non-free-firmware for every
    own suite. --print-uris needs no network."""
    files = SCENARIOS[name]
    host_paths = {
        ("/etc/apt/" if f == "sources.list" else "/etc/apt/sources.list.d/") + f: text for f, text in files.items()
    }
    result = plan_apt_components(host_paths, BOOKWORM)
    assert result is not None
    apt = PrivateApt(tmp_path, {"system.list" if f == "sources.list" else f: t for f, t in files.items()})
    (tmp_path / "etc/apt/sources.list.d" / Path(result.path).name).write_text(result.content)
    out = apt.run("apt-get", "update", "--print-uris", check=False)
    assert out.returncode == 0 and "E:" not in out.stderr and "W:" not in out.stderr, out.stderr
    fetched = set(re.findall(r"dists/([^/]+)/([^/]+)/binary-amd64/Packages", out.stdout))
    for suite in ("bookworm", "bookworm-updates", "bookworm-security"):
        for component in ("main", "contrib", "non-free", "non-free-firmware"):
            assert (suite, component) in fetched, (suite, component)
