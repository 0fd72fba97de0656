"""The Debian base layer: built once per recipe with mmdebstrap, kept compressed in a cache.

`<cache>/base-<recipe key>/` holds `layer.tar.gz` (the root filesystem as one gzip layer)
and `layer.json` (its digests, size and the Debian packages in it). Building happens under
a file lock and lands by rename, so two builds at once share one base.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from gpunode.bootstrap.core.image.oci import Blob, Layer
from gpunode.bootstrap.core.image.recipe import BaseRecipe
from gpunode.bootstrap.errors import HostStateError, UserError

_CHUNK = 1 << 20


@dataclass(frozen=True)
class BaseLayer:
    layer: Layer
    path: Path  # the gzip file
    unpacked_bytes: int
    debian_packages: dict[str, str]  # name -> version
    cached: bool  # True: taken from the cache, not built now


@contextmanager
def locked(path: Path) -> Iterator[None]:
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def gzip_layer(source: IO[bytes], target: Path) -> tuple[Blob, str, int]:
    """Compress a layer tar into `target`: (the stored blob, the diff_id, uncompressed size)."""
    plain = hashlib.sha256()
    size = 0
    with open(target, "wb") as raw:
        packed = _HashingWriter(raw)
        # mtime 0 and no file name in the header: the same tar always gives the same digest.
        with gzip.GzipFile(filename="", mode="wb", fileobj=packed, mtime=0, compresslevel=6) as out:
            while chunk := source.read(_CHUNK):
                plain.update(chunk)
                size += len(chunk)
                out.write(chunk)
    return Blob(f"sha256:{packed.sha.hexdigest()}", packed.size), f"sha256:{plain.hexdigest()}", size


class _HashingWriter:
    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


def _dpkg_packages(status: str) -> dict[str, str]:
    packages: dict[str, str] = {}
    for stanza in status.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line[0].isspace())
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            packages[fields["Package"]] = fields.get("Version", "")
    return packages


def _inspect(tar_path: Path, recipe: BaseRecipe) -> dict[str, str]:
    """The base's Debian packages; refuses a base without the python the wheels are for."""
    python = f"./usr/bin/python{recipe.python_version}"
    status = ""
    found_python = found_link = False
    with tarfile.open(tar_path) as tar:
        for member in tar:
            if member.name == python:
                found_python = True
            elif member.name == "./usr/bin/python":
                found_link = True
            elif member.name == "./var/lib/dpkg/status":
                extracted = tar.extractfile(member)
                status = extracted.read().decode() if extracted else ""
    if not (found_python and found_link):
        raise HostStateError(
            f"The Debian {recipe.suite} base has no {python[1:]} or /usr/bin/python: the recipe and "
            "the suite's python3 disagree.",
            f"Set python_version to the python3 of Debian {recipe.suite} in the base recipe.",
        )
    return _dpkg_packages(status)


def base_layer(recipe: BaseRecipe, cache_dir: Path) -> BaseLayer:
    """The base for `recipe`, from the cache or built now with mmdebstrap."""
    home = cache_dir / f"base-{recipe.key()}"
    home.mkdir(parents=True, exist_ok=True)
    cached = True
    if not (home / "layer.json").is_file():
        with locked(home / ".lock"):
            if not (home / "layer.json").is_file():
                _build(recipe, home)
                cached = False
    meta = json.loads((home / "layer.json").read_text())
    layer = Layer(Blob(meta["digest"], meta["size"]), meta["diff_id"], meta["created_by"])
    return BaseLayer(layer, home / "layer.tar.gz", meta["unpacked_bytes"], meta["debian_packages"], cached)


def _build(recipe: BaseRecipe, home: Path) -> None:
    if shutil.which("mmdebstrap") is None:
        raise UserError(
            "Building the plugin image needs mmdebstrap, which is not installed.",
            "Install it (Debian and Ubuntu: apt-get install mmdebstrap), or build from the Containerfile "
            "with a registry's python base.",
        )
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=home))
    try:
        tar_path = work / "base.tar"
        log = home / "mmdebstrap.log"
        with open(log, "w") as out:
            result = subprocess.run(recipe.mmdebstrap_argv(str(tar_path)), stdout=out, stderr=subprocess.STDOUT)
        if result.returncode != 0:
            tail = log.read_text(errors="replace")[-2000:]
            raise HostStateError(
                f"mmdebstrap could not build the Debian {recipe.suite} base (exit {result.returncode}):\n{tail}",
                f"Read {log}; check that {recipe.mirror} is reachable, and run as root or where "
                "unprivileged user namespaces are allowed.",
            )
        packages = _inspect(tar_path, recipe)
        with open(tar_path, "rb") as source:
            blob, diff_id, unpacked = gzip_layer(source, work / "layer.tar.gz")
        meta = {
            "digest": blob.digest,
            "size": blob.size,
            "diff_id": diff_id,
            "unpacked_bytes": unpacked,
            "created_by": f"mmdebstrap --variant={recipe.variant} {recipe.suite} + {' '.join(recipe.packages)}",
            "debian_packages": packages,
        }
        os.replace(work / "layer.tar.gz", home / "layer.tar.gz")
        (work / "layer.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
        os.replace(work / "layer.json", home / "layer.json")  # last: the base is whole
    finally:
        shutil.rmtree(work, ignore_errors=True)
