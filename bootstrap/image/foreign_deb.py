"""A package from another Debian suite's archive, as one image layer (kubectl for the agent).

Debian 12 has no kubectl; Debian 13 ships one. The .deb is fetched by `apt-get download`
with an apt configuration of its own (its sources, lists and cache under a temporary
directory: the build machine's apt is neither read nor changed), so the archive's signature
is checked against debian-archive-keyring as for any Debian install. The package is
unpacked with `dpkg-deb -x` (not installed: the base has no apt and keeps one suite in its
dpkg database), only if every Depends is met by the base's own packages and versions.
The layer is cached per (package, suite, architecture, version) beside the base.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gpunode.bootstrap.core.image.kinds import ForeignDeb
from gpunode.bootstrap.core.image.oci import Blob, Layer
from gpunode.bootstrap.core.image.recipe import BaseRecipe
from gpunode.bootstrap.errors import HostStateError, UserError
from gpunode.bootstrap.image.base import gzip_layer, locked
from gpunode.bootstrap.image.layer_tar import tree_layer_tar

KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# As the base: no documentation or manual pages (the copyright file stays).
_DROPPED = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale")


@dataclass(frozen=True)
class DebLayer:
    layer: Layer
    path: Path
    unpacked_bytes: int
    version: str


def deb_layer(deb: ForeignDeb, recipe: BaseRecipe, base_packages: dict[str, str], cache_dir: Path) -> DebLayer:
    home = cache_dir / f"deb-{deb.package}-{deb.suite}-{recipe.architecture}"
    home.mkdir(parents=True, exist_ok=True)
    with locked(home / ".lock"):
        if not (home / "layer.json").is_file():
            _build(deb, recipe, base_packages, home)
    meta = json.loads((home / "layer.json").read_text())
    layer = Layer(Blob(meta["digest"], meta["size"]), meta["diff_id"], meta["created_by"])
    return DebLayer(layer, home / "layer.tar.gz", meta["unpacked_bytes"], meta["version"])


def _apt(work: Path, recipe: BaseRecipe, suite: str, *args: str) -> None:
    if shutil.which("apt-get") is None or not Path(KEYRING).is_file():
        raise UserError(
            "Building the agent image needs apt-get and debian-archive-keyring (to fetch kubectl "
            f"from Debian {suite}).",
            "Install them (apt-get install apt debian-archive-keyring), on a Debian or Ubuntu machine.",
        )
    for sub in ("lists/partial", "cache/archives/partial", "etc/apt.conf.d", "etc/preferences.d"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    (work / "status").touch()
    (work / "sources.list").write_text(f"deb [signed-by={KEYRING}] {recipe.mirror} {suite} main\n")
    options = {
        "Dir::Etc::main": "/dev/null",
        "Dir::Etc::parts": str(work / "etc/apt.conf.d"),
        "Dir::Etc::sourcelist": str(work / "sources.list"),
        "Dir::Etc::sourceparts": "/dev/null",
        "Dir::Etc::preferencesparts": str(work / "etc/preferences.d"),
        "Dir::State": str(work),
        "Dir::State::lists": str(work / "lists"),
        "Dir::State::status": str(work / "status"),
        "Dir::Cache": str(work / "cache"),
        "APT::Architecture": recipe.architecture,
        "APT::Architectures": recipe.architecture,
        "Acquire::Languages": "none",
        "Debug::NoLocking": "true",
    }
    argv = ["apt-get", "-q"] + [f"-o{key}={value}" for key, value in options.items()] + list(args)
    result = subprocess.run(argv, capture_output=True, text=True, cwd=work, timeout=900)
    if result.returncode != 0:
        raise HostStateError(
            f"apt-get {' '.join(args)} from Debian {suite} failed (exit {result.returncode}):\n"
            f"{result.stderr.strip()[-2000:]}",
            f"Check that {recipe.mirror} is reachable from this machine.",
        )


def _field(deb_file: Path, name: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "-f", str(deb_file), name], capture_output=True, text=True, check=True
    ).stdout.strip()


def unmet_depends(depends: str, base_packages: dict[str, str]) -> list[str]:
    """The dependencies (`a (>= 1), b | c`) the base's packages do not meet."""
    unmet = []
    for clause in filter(None, (c.strip() for c in depends.split(","))):
        if not any(_met(alternative.strip(), base_packages) for alternative in clause.split("|")):
            unmet.append(clause)
    return unmet


def _met(alternative: str, base_packages: dict[str, str]) -> bool:
    name, _, constraint = alternative.partition("(")
    name = name.strip().split(":")[0]
    if name not in base_packages:
        return False
    if not constraint:
        return True
    relation, version = constraint.rstrip(")").split()
    ops = {">=": "ge", "<=": "le", ">>": "gt", "<<": "lt", "=": "eq"}
    check = ["dpkg", "--compare-versions", base_packages[name], ops[relation], version]
    return subprocess.run(check, capture_output=True).returncode == 0


def _drop_docs(root: Path) -> None:
    for dropped in _DROPPED:
        if dropped != "usr/share/doc":
            shutil.rmtree(root / dropped, ignore_errors=True)
            continue
        for path in sorted((root / dropped).rglob("*"), reverse=True):
            if path.is_file() and path.name != "copyright":
                path.unlink()


def _build(deb: ForeignDeb, recipe: BaseRecipe, base_packages: dict[str, str], home: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=home))
    try:
        _apt(work, recipe, deb.suite, "update")
        _apt(work, recipe, deb.suite, "download", deb.package)
        found = sorted(work.glob(f"{deb.package}_*.deb"))
        if not found:
            raise HostStateError(f"apt-get download left no {deb.package} package.", "Run the build again.")
        deb_file = found[-1]
        version = _field(deb_file, "Version")
        unmet = unmet_depends(_field(deb_file, "Depends"), base_packages)
        if unmet:
            raise HostStateError(
                f"{deb.package} {version} from Debian {deb.suite} needs {', '.join(unmet)}, which the "
                f"Debian {recipe.suite} base does not have.",
                "Take the package from a suite whose dependencies the base meets (ForeignDeb in "
                "bootstrap/core/image/kinds.py).",
            )
        root = work / "root"
        subprocess.run(["dpkg-deb", "-x", str(deb_file), str(root)], check=True, capture_output=True)
        if not (root / deb.binary).is_file():
            raise HostStateError(f"{deb.package} {version} has no {deb.binary}.", "Check ForeignDeb.binary.")
        _drop_docs(root)
        tree_layer_tar(root, work / "layer.tar", mtime=0)
        with open(work / "layer.tar", "rb") as plain:
            blob, diff_id, unpacked = gzip_layer(plain, work / "layer.tar.gz")
        meta = {
            "digest": blob.digest,
            "size": blob.size,
            "diff_id": diff_id,
            "unpacked_bytes": unpacked,
            "version": version,
            "created_by": f"dpkg-deb -x {deb.package}_{version} (Debian {deb.suite}, {recipe.architecture})",
        }
        os.replace(work / "layer.tar.gz", home / "layer.tar.gz")
        (work / "layer.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
        os.replace(work / "layer.json", home / "layer.json")
    finally:
        shutil.rmtree(work, ignore_errors=True)
