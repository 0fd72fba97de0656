"""Read a local directory of .deb / .rpm files on the operator's machine, without dpkg or
rpm (gpunode also runs from macOS): the ar archive and control tarball of a .deb, the
lead, signature and header of an .rpm.

This runs where gpunode runs, not on the node; the result feeds
`core.toolkit_packages.plan_local_toolkit`.
"""

from __future__ import annotations

import hashlib
import io
import struct
import tarfile
from pathlib import Path

from ..core.packages.toolkit import LocalPackage
from ..errors import UserError
from ..local_input import PACKAGE_LIMIT, read_local_file

_AR_MAGIC = b"!<arch>\n"
_RPM_LEAD_MAGIC = b"\xed\xab\xee\xdb"
_RPM_HEADER_MAGIC = b"\x8e\xad\xe8\x01"
_RPM_LEAD_SIZE = 96

# RPM header tags and types (rpm's lib/rpmtag.h).
_TAG_NAME, _TAG_VERSION, _TAG_RELEASE, _TAG_EPOCH, _TAG_ARCH = 1000, 1001, 1002, 1003, 1022
_TAG_REQUIRENAME, _TAG_REQUIREFLAGS, _TAG_REQUIREVERSION = 1049, 1048, 1050
_TYPE_INT32, _TYPE_STRING, _TYPE_STRING_ARRAY, _TYPE_I18NSTRING = 4, 6, 8, 9
_RPMSENSE_RPMLIB = 1 << 24  # rpmlib(...) feature requirements, not packages
_RPMSENSE_LESS, _RPMSENSE_GREATER, _RPMSENSE_EQUAL = 0x02, 0x04, 0x08


def _bad(path: Path, what: str) -> UserError:
    return UserError(
        f"{path} is not a readable package: {what}.",
        fix="remove the file from the package directory or replace it with a good copy",
    )


# --------------------------------------------------------------------------------------
# .deb
# --------------------------------------------------------------------------------------


def _ar_members(path: Path, data: bytes) -> dict[str, bytes]:
    if not data.startswith(_AR_MAGIC):
        raise _bad(path, "no ar archive signature (a .deb is an ar archive)")
    members: dict[str, bytes] = {}
    offset = len(_AR_MAGIC)
    while offset + 60 <= len(data):
        header = data[offset : offset + 60]
        if header[58:60] != b"`\n":
            raise _bad(path, f"corrupt ar member header at byte {offset}")
        name = header[0:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError:
            raise _bad(path, f"corrupt ar member size at byte {offset}") from None
        start = offset + 60
        if start + size > len(data):
            raise _bad(path, f"ar member {name!r} is truncated")
        members[name] = data[start : start + size]
        offset = start + size + (size % 2)  # members are padded to an even size
    return members


def _control_text(path: Path, members: dict[str, bytes]) -> str:
    control_names = [name for name in members if name.startswith("control.tar")]
    if not control_names:
        raise _bad(path, "no control.tar member")
    name = control_names[0]
    if name == "control.tar.zst":
        raise UserError(
            f"{path} compresses its control data with zstd, which this Python cannot read "
            "(the standard library reads gzip, xz and uncompressed tarballs).",
            fix=f"repack it with xz: `dpkg-deb -R {path.name} pkg && dpkg-deb -Zxz --build "
            f"pkg {path.name}` (or download the package as published by NVIDIA, which "
            "uses xz)",
        )
    modes = {"control.tar.gz": "r:gz", "control.tar.xz": "r:xz", "control.tar": "r:"}
    if name not in modes:
        raise _bad(path, f"unsupported control member {name!r}")
    try:
        with tarfile.open(fileobj=io.BytesIO(members[name]), mode=modes[name]) as tar:  # type: ignore[call-overload]
            for member in tar.getmembers():
                if member.isfile() and member.name.lstrip("./") == "control":
                    extracted = tar.extractfile(member)
                    if extracted is not None:
                        return str(extracted.read().decode("utf-8", "replace"))
    except (tarfile.TarError, EOFError, OSError) as error:
        raise _bad(path, f"cannot read {name}: {error}") from None
    raise _bad(path, f"{name} has no control file")


def parse_control(text: str) -> dict[str, str]:
    """A deb822 paragraph: field -> value, continuation lines folded."""
    fields: dict[str, str] = {}
    last: str | None = None
    for line in text.splitlines():
        if not line.strip():
            break
        if line[0] in " \t":
            if last:
                fields[last] += "\n" + line.strip()
            continue
        key, sep, value = line.partition(":")
        if sep:
            last = key.strip()
            fields[last] = value.strip()
    return fields


def read_deb(path: Path) -> LocalPackage:
    data = read_local_file(path, what="a package file", limit=PACKAGE_LIMIT)
    members = _ar_members(path, data)
    if "debian-binary" not in members:
        raise _bad(path, "no debian-binary member")
    control = parse_control(_control_text(path, members))
    for field in ("Package", "Version", "Architecture"):
        if not control.get(field):
            raise _bad(path, f"its control file has no {field}")
    depends = tuple(
        dep.strip()
        for field in ("Pre-Depends", "Depends")
        for dep in control.get(field, "").replace("\n", " ").split(",")
        if dep.strip()
    )
    return LocalPackage(
        name=control["Package"],
        version=control["Version"],
        architecture=control["Architecture"],
        depends=depends,
        file_name=path.name,
        sha256=hashlib.sha256(data).hexdigest(),
        path=str(path),
        format="deb",
    )


# --------------------------------------------------------------------------------------
# .rpm
# --------------------------------------------------------------------------------------


def _rpm_header(path: Path, data: bytes, offset: int) -> tuple[dict[int, object], int]:
    """Tag -> value of the header at `offset`, and the offset just past it."""
    if data[offset : offset + 4] != _RPM_HEADER_MAGIC:
        raise _bad(path, f"no RPM header at byte {offset}")
    try:
        count, store_size = struct.unpack(">II", data[offset + 8 : offset + 16])
    except struct.error:
        raise _bad(path, "truncated RPM header") from None
    index_start = offset + 16
    store_start = index_start + 16 * count
    end = store_start + store_size
    if end > len(data):
        raise _bad(path, "truncated RPM header")
    store = data[store_start:end]
    tags: dict[int, object] = {}
    for i in range(count):
        tag, kind, where, n = struct.unpack(">iiii", data[index_start + 16 * i : index_start + 16 * (i + 1)])
        if where < 0 or where > len(store):
            raise _bad(path, "corrupt RPM header index")
        if kind in (_TYPE_STRING, _TYPE_I18NSTRING, _TYPE_STRING_ARRAY):
            strings = []
            pos = where
            for _ in range(n if kind == _TYPE_STRING_ARRAY else 1):
                stop = store.find(b"\0", pos)
                if stop < 0:
                    raise _bad(path, "unterminated string in RPM header")
                strings.append(store[pos:stop].decode("utf-8", "replace"))
                pos = stop + 1
            tags[tag] = strings if kind == _TYPE_STRING_ARRAY else strings[0]
        elif kind == _TYPE_INT32:
            tags[tag] = list(struct.unpack(f">{n}i", store[where : where + 4 * n]))
    return tags, end


def _rpm_requires(tags: dict[int, object]) -> tuple[str, ...]:
    names = tags.get(_TAG_REQUIRENAME) or []
    flags = tags.get(_TAG_REQUIREFLAGS) or []
    versions = tags.get(_TAG_REQUIREVERSION) or []
    assert isinstance(names, list) and isinstance(flags, list) and isinstance(versions, list)
    out: list[str] = []
    for i, name in enumerate(names):
        flag = flags[i] if i < len(flags) else 0
        if flag & _RPMSENSE_RPMLIB or str(name).startswith("rpmlib("):
            continue
        op = (
            ("<" if flag & _RPMSENSE_LESS else "")
            + (">" if flag & _RPMSENSE_GREATER else "")
            + ("=" if flag & _RPMSENSE_EQUAL else "")
        )
        version = versions[i] if i < len(versions) else ""
        text = f"{name} {op} {version}" if op and version else str(name)
        if text not in out:
            out.append(text)
    return tuple(out)


def read_rpm(path: Path) -> LocalPackage:
    data = read_local_file(path, what="a package file", limit=PACKAGE_LIMIT)
    if data[:4] != _RPM_LEAD_MAGIC or len(data) < _RPM_LEAD_SIZE:
        raise _bad(path, "no RPM lead")
    _, signature_end = _rpm_header(path, data, _RPM_LEAD_SIZE)
    # The signature header is padded to a multiple of 8 bytes; the main header follows.
    main_start = signature_end + (-signature_end % 8)
    tags, _ = _rpm_header(path, data, main_start)
    name, version, release, arch = (tags.get(t) for t in (_TAG_NAME, _TAG_VERSION, _TAG_RELEASE, _TAG_ARCH))
    if not all(isinstance(v, str) and v for v in (name, version, release, arch)):
        raise _bad(path, "its header lacks name, version, release or arch")
    epoch = tags.get(_TAG_EPOCH)
    full = f"{version}-{release}"
    if isinstance(epoch, list) and epoch and epoch[0]:
        full = f"{epoch[0]}:{full}"
    return LocalPackage(
        name=str(name),
        version=full,
        architecture=str(arch),
        depends=_rpm_requires(tags),
        file_name=path.name,
        sha256=hashlib.sha256(data).hexdigest(),
        path=str(path),
        format="rpm",
    )


# --------------------------------------------------------------------------------------
# A directory
# --------------------------------------------------------------------------------------


def read_local_packages(directory: Path) -> list[LocalPackage]:
    """Every .deb and .rpm file in `directory` (not recursive), sorted by file name."""
    if not directory.is_dir():
        raise UserError(
            f"The toolkit package directory {directory} does not exist or is not a directory.",
            fix="pass --toolkit-packages with a directory that holds the toolkit's .deb or .rpm files",
        )
    packages: list[LocalPackage] = []
    for path in sorted(directory.iterdir()):
        if not path.is_file():
            continue
        if path.suffix == ".deb":
            packages.append(read_deb(path))
        elif path.suffix == ".rpm":
            packages.append(read_rpm(path))
    if not packages:
        raise UserError(
            f"{directory} holds no .deb or .rpm files.",
            fix="put the four NVIDIA container toolkit package files in it",
        )
    return packages
