"""`gpunode image build`: the plugin or agent image as one archive, with no registry at all.

Layers: the Debian base (base.py, cached per recipe), for the agent a layer per package
from another Debian suite (foreign_deb.py: kubectl), and the Python packages (the gpunode
wheel with only the plugin's dependencies, or with all of gpunode's for the agent,
installed by pip for the base's python and architecture into /usr/local). The archive is an OCI image layout with docker's
manifest.json beside it (core/image/oci.py), written to a temporary name and renamed.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from email.parser import HeaderParser
from importlib.metadata import requires
from pathlib import Path

from gpunode.bootstrap.core.image.kinds import PLUGIN, ImageKind, image_requirements
from gpunode.bootstrap.core.image.oci import (
    OCI_LAYOUT,
    Blob,
    Layer,
    canonical,
    docker_manifest,
    image_config,
    image_index,
    image_manifest,
)
from gpunode.bootstrap.core.image.recipe import DEFAULT_BASE, BaseRecipe
from gpunode.bootstrap.errors import HostStateError, UserError
from gpunode.bootstrap.image.base import base_layer, gzip_layer
from gpunode.bootstrap.image.foreign_deb import deb_layer
from gpunode.bootstrap.image.layer_tar import tree_layer_tar

# What the gpunode wheel is built from (the Containerfile copies the same).
WHEEL_SOURCES = ("pyproject.toml", "README.md", "LICENSE", "bootstrap", "plugin", "templates")


@dataclass(frozen=True)
class BuildRequest:
    output: Path
    reference: str
    cache_dir: Path
    wheels: Path | None = None  # a directory with the gpunode wheel and its plugin dependencies
    source: Path | None = None  # a gpunode checkout to build the wheel from
    recipe: BaseRecipe = DEFAULT_BASE
    kind: ImageKind = PLUGIN


@dataclass(frozen=True)
class BuildReport:
    output: Path
    reference: str
    manifest_digest: str
    archive_bytes: int
    unpacked_bytes: int
    python_packages: dict[str, str]  # name -> version, as installed in the image
    debian_packages: dict[str, str]
    base_cached: bool
    seconds: float
    layers: list[str] = field(default_factory=list)
    foreign_packages: dict[str, str] = field(default_factory=dict)  # e.g. kubectl -> version (Debian 13)


def checkout_of_this_gpunode() -> Path | None:
    """The source tree gpunode runs from, when it is a checkout (editable install)."""
    root = Path(__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and 'name = "gpunode"' in pyproject.read_text() and (root / "plugin").is_dir():
        return root
    return None


def _pip(*args: str, what: str) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet", *args]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise HostStateError(
            f"pip could not {what} (exit {result.returncode}):\n{result.stderr.strip()[-2000:]}",
            "Check that the package index is reachable, or give --wheels with the gpunode wheel and "
            "its plugin dependencies for this platform (pip download --only-binary=:all: "
            "--platform manylinux2014_x86_64 --python-version 3.11 click grpcio protobuf nvidia-ml-py).",
        )


def _gpunode_wheel(request: BuildRequest, into: Path) -> None:
    if request.wheels is not None:
        found = sorted(request.wheels.glob("gpunode-*.whl"))
        if not found:
            raise UserError(
                f"--wheels {request.wheels} holds no gpunode-*.whl.",
                "Put the gpunode wheel there (pip wheel --no-deps <checkout>), or leave --wheels out "
                "to build it from the checkout.",
            )
        shutil.copy2(found[-1], into / found[-1].name)
        return
    source = request.source or checkout_of_this_gpunode()
    if source is None:
        raise UserError(
            "There is no gpunode checkout to build the wheel from (gpunode is installed from a wheel).",
            "Give --source with a gpunode checkout, or --wheels with the gpunode wheel and its plugin dependencies.",
        )
    # Built from a copy of what the wheel is made of (what the Containerfile copies): the
    # build leaves build/ and *.egg-info behind, which must not land in the user's checkout.
    copy = into.parent / "source"
    copy.mkdir()
    for name in WHEEL_SOURCES:
        path = source / name
        if path.is_dir():
            shutil.copytree(path, copy / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif path.is_file():
            shutil.copy2(path, copy / name)
    _pip("wheel", "--no-deps", "--wheel-dir", str(into), str(copy), what=f"build the gpunode wheel from {source}")


def _dependency_wheels(request: BuildRequest, into: Path) -> None:
    """The image's dependencies (and theirs) as wheels for the image's python and machine."""
    recipe = request.recipe
    platform = [f"--platform={tag}" for tag in recipe.wheel_platforms()]
    index = ["--no-index", f"--find-links={request.wheels}"] if request.wheels else []
    _pip(
        "download",
        "--dest",
        str(into),
        "--only-binary=:all:",
        *platform,
        f"--python-version={recipe.python_version}",
        "--implementation=cp",
        *index,
        *image_requirements(request.kind, requires("gpunode") or [], recipe),
        what=f"download the {request.kind.name} image's dependencies",
    )


def _install(recipe: BaseRecipe, wheels: Path, target: Path) -> dict[str, str]:
    """Install every wheel in `wheels` (already resolved: no dependency resolution) into `target`."""
    _pip(
        "install",
        "--target",
        str(target),
        "--no-deps",
        "--no-index",
        "--no-compile",
        "--only-binary=:all:",
        *[f"--platform={tag}" for tag in recipe.wheel_platforms()],
        f"--python-version={recipe.python_version}",
        "--implementation=cp",
        *sorted(str(w) for w in wheels.glob("*.whl")),
        what="install the Python packages for the image",
    )
    shutil.rmtree(target / "bin", ignore_errors=True)  # console scripts for this host's python
    # pip records where each wheel came from (a temporary path of this build): nothing the
    # image needs, and it would make two builds of the same inputs differ.
    for direct_url in target.glob("*.dist-info/direct_url.json"):
        direct_url.unlink()
        record = direct_url.with_name("RECORD")
        lines = record.read_text().splitlines(keepends=True)
        record.write_text(
            "".join(line for line in lines if not line.startswith(f"{direct_url.parent.name}/direct_url.json,"))
        )
    if sys.version_info[:2] == tuple(int(p) for p in recipe.python_version.split(".")):
        # Bytecode the image's python accepts without checking timestamps (the layer's files
        # carry a fixed mtime): a container starts without compiling the plugin.
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", "-j0", "--invalidation-mode", "unchecked-hash"]
            # Tracebacks name the files where they are in the image, not where they were built.
            + ["-s", str(target), "-p", f"/{recipe.site_packages}", str(target)],
            check=True,
        )
    installed = {}
    for metadata in target.glob("*.dist-info/METADATA"):
        headers = HeaderParser().parsestr(metadata.read_text(errors="replace"))
        installed[headers["Name"]] = headers["Version"]
    return dict(sorted(installed.items(), key=lambda item: item[0].lower()))


# The console script pip would write, for the image's own python (pip's are for this host's).
CONSOLE_SCRIPT = """#!/usr/bin/python3
import sys

from gpunode.bootstrap.cli.main import console_main

sys.exit(console_main())
"""


def _write_archive(output: Path, blobs: dict[Blob, Path | bytes], index: bytes, docker: bytes) -> None:
    partial = output.with_name(f".{output.name}.{os.getpid()}.partial")
    try:
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:

            def add_bytes(name: str, data: bytes) -> None:
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))

            add_bytes("oci-layout", canonical(OCI_LAYOUT))
            add_bytes("index.json", index)
            add_bytes("manifest.json", docker)
            for blob, content in blobs.items():
                if isinstance(content, bytes):
                    add_bytes(blob.path, content)
                else:
                    info = tar.gettarinfo(str(content), arcname=blob.path)
                    info.uid = info.gid = 0
                    info.uname = info.gname = "root"
                    info.mode = 0o644
                    with open(content, "rb") as data:
                        tar.addfile(info, data)
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)


def _check_output(output: Path) -> None:
    if output.exists() and not output.is_file():
        raise UserError(f"--archive {output} exists and is not a file.", "Give the path of a .tar file to write.")
    if not output.parent.is_dir():
        raise UserError(
            f"--archive {output}: the directory {output.parent} does not exist.",
            "Create the directory, or give a path in one that exists.",
        )


def _python_layer(request: BuildRequest, work: Path, epoch: int) -> tuple[Layer, Path, int, dict[str, str]]:
    """The gpunode wheel and its dependencies for this kind, installed under /usr/local."""
    recipe = request.recipe
    wheels, tree = work / "wheels", work / "tree"
    wheels.mkdir()
    _gpunode_wheel(request, wheels)
    _dependency_wheels(request, wheels)
    installed = _install(recipe, wheels, tree / recipe.site_packages)
    if "gpunode" not in installed:
        raise HostStateError("The gpunode wheel was not installed into the image.", "Check --wheels or --source.")
    if request.kind.console_script:
        script = tree / "usr/local/bin/gpunode"
        script.parent.mkdir(parents=True)
        script.write_text(CONSOLE_SCRIPT)
        script.chmod(0o755)
    tree_layer_tar(tree, work / "site.tar", mtime=epoch)
    with open(work / "site.tar", "rb") as plain:
        blob, diff_id, site_bytes = gzip_layer(plain, work / "site.tar.gz")
    packages = " ".join(f"{name}=={installed[name]}" for name in installed)
    layer = Layer(blob, diff_id, f"pip install --target /{recipe.site_packages} {packages}")
    return layer, work / "site.tar.gz", site_bytes, installed


def build_image(request: BuildRequest) -> BuildReport:
    started = time.monotonic()
    _check_output(request.output)
    recipe, kind = request.recipe, request.kind
    base = base_layer(recipe, request.cache_dir)
    debs = [deb_layer(deb, recipe, base.debian_packages, request.cache_dir) for deb in kind.foreign_debs]
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    with tempfile.TemporaryDirectory(prefix="gpunode-image-") as tmp:
        work = Path(tmp)
        site, site_path, site_bytes, installed = _python_layer(request, work, epoch)
        layers = [base.layer, *(deb.layer for deb in debs), site]
        labels = {
            "org.opencontainers.image.title": kind.title,
            "org.opencontainers.image.version": installed["gpunode"],
            "org.opencontainers.image.created": created,
            "org.opencontainers.image.base.name": f"debian:{recipe.suite} (mmdebstrap {recipe.variant})",
        }
        config = canonical(image_config(layers, recipe.architecture, created, labels, kind.entrypoint, kind.cmd))
        config_blob = _blob_of(config)
        manifest = canonical(image_manifest(config_blob, layers, labels))
        manifest_blob = _blob_of(manifest)
        blobs: dict[Blob, Path | bytes] = {base.layer.blob: base.path}
        blobs.update({deb.layer.blob: deb.path for deb in debs})
        blobs.update({site.blob: site_path, config_blob: config, manifest_blob: manifest})
        _write_archive(
            request.output,
            blobs,
            canonical(image_index(manifest_blob, request.reference, recipe.architecture)),
            canonical(docker_manifest(config_blob, layers, request.reference)),
        )
    return BuildReport(
        output=request.output,
        reference=request.reference,
        manifest_digest=manifest_blob.digest,
        archive_bytes=request.output.stat().st_size,
        unpacked_bytes=base.unpacked_bytes + sum(deb.unpacked_bytes for deb in debs) + site_bytes,
        python_packages=installed,
        debian_packages=base.debian_packages,
        base_cached=base.cached,
        seconds=time.monotonic() - started,
        layers=[layer.blob.digest for layer in layers],
        foreign_packages={deb.package: layer.version for deb, layer in zip(kind.foreign_debs, debs, strict=True)},
    )


def _blob_of(data: bytes) -> Blob:
    return Blob(f"sha256:{hashlib.sha256(data).hexdigest()}", len(data))
