"""`gpunode image build`: the device plugin image as one archive, with no registry at all.

Two layers: the Debian base (base.py, cached per recipe) and the plugin's packages (the
gpunode wheel and only the plugin's dependencies, installed by pip for the base's python
and architecture into /usr/local). The archive is an OCI image layout with docker's
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
from gpunode.bootstrap.core.image.recipe import DEFAULT_BASE, BaseRecipe, plugin_requirements
from gpunode.bootstrap.errors import HostStateError, UserError
from gpunode.bootstrap.image.base import base_layer, gzip_layer

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


def _plugin_wheels(request: BuildRequest, into: Path) -> None:
    """The plugin's dependencies (and theirs) as wheels for the image's python and machine."""
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
        *plugin_requirements(requires("gpunode") or []),
        what="download the plugin's dependencies",
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
        what="install the plugin's packages for the image",
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


def _site_layer_tar(recipe: BaseRecipe, target: Path, out: Path, mtime: int) -> None:
    """A layer tar of `target` under the image's site-packages: root-owned, fixed times, sorted."""
    prefix = recipe.site_packages
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        parts = prefix.split("/")
        for depth in range(1, len(parts) + 1):
            info = tarfile.TarInfo("/".join(parts[:depth]))
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, mtime
            tar.addfile(info)
        for path in sorted(target.rglob("*")):
            info = tar.gettarinfo(str(path), arcname=f"{prefix}/{path.relative_to(target)}")
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = mtime
            info.mode = 0o755 if path.is_dir() or os.access(path, os.X_OK) else 0o644
            if path.is_file() and not path.is_symlink():
                with open(path, "rb") as data:
                    tar.addfile(info, data)
            else:
                tar.addfile(info)


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


def build_image(request: BuildRequest) -> BuildReport:
    started = time.monotonic()
    output = request.output
    if output.exists() and not output.is_file():
        raise UserError(f"--archive {output} exists and is not a file.", "Give the path of a .tar file to write.")
    if not output.parent.is_dir():
        raise UserError(
            f"--archive {output}: the directory {output.parent} does not exist.",
            "Create the directory, or give a path in one that exists.",
        )
    recipe = request.recipe
    base = base_layer(recipe, request.cache_dir)
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    with tempfile.TemporaryDirectory(prefix="gpunode-image-") as tmp:
        work = Path(tmp)
        wheels, target = work / "wheels", work / "site"
        wheels.mkdir()
        _gpunode_wheel(request, wheels)
        _plugin_wheels(request, wheels)
        installed = _install(recipe, wheels, target)
        if "gpunode" not in installed:
            raise HostStateError("The gpunode wheel was not installed into the image.", "Check --wheels or --source.")
        _site_layer_tar(recipe, target, work / "site.tar", mtime=epoch)
        with open(work / "site.tar", "rb") as plain:
            blob, diff_id, site_bytes = gzip_layer(plain, work / "site.tar.gz")
        packages = " ".join(f"{name}=={installed[name]}" for name in installed)
        site = Layer(blob, diff_id, f"pip install --target /{recipe.site_packages} {packages}")
        layers = [base.layer, site]
        labels = {
            "org.opencontainers.image.title": "gpunode device plugin",
            "org.opencontainers.image.version": installed["gpunode"],
            "org.opencontainers.image.created": created,
            "org.opencontainers.image.base.name": f"debian:{recipe.suite} (mmdebstrap {recipe.variant})",
        }
        config = canonical(image_config(layers, recipe.architecture, created, labels))
        config_blob = _blob_of(config)
        manifest = canonical(image_manifest(config_blob, layers, labels))
        manifest_blob = _blob_of(manifest)
        _write_archive(
            output,
            {base.layer.blob: base.path, site.blob: work / "site.tar.gz", config_blob: config, manifest_blob: manifest},
            canonical(image_index(manifest_blob, request.reference, recipe.architecture)),
            canonical(docker_manifest(config_blob, layers, request.reference)),
        )
    return BuildReport(
        output=output,
        reference=request.reference,
        manifest_digest=manifest_blob.digest,
        archive_bytes=output.stat().st_size,
        unpacked_bytes=base.unpacked_bytes + site_bytes,
        python_packages=installed,
        debian_packages=base.debian_packages,
        base_cached=base.cached,
        seconds=time.monotonic() - started,
        layers=[layer.blob.digest for layer in layers],
    )


def _blob_of(data: bytes) -> Blob:
    return Blob(f"sha256:{hashlib.sha256(data).hexdigest()}", len(data))
