"""`gpunode image build`: the device plugin's or the agent's image as an archive, built without
any registry."""

from __future__ import annotations

import os
from pathlib import Path

import click

from gpunode.bootstrap.cli.contract import EXIT_OK, ContractGroup, Outcome, output_option
from gpunode.bootstrap.core.image.kinds import KINDS
from gpunode.bootstrap.core.kube.agent_manifests import agent_image
from gpunode.bootstrap.core.kube.plugin_deployment import bundled_image


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpunode" / "image"


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


@click.group("image", cls=ContractGroup)
def image() -> None:
    """gpunode's images: the device plugin's (what its DaemonSet runs in daemonset plugin mode)
    and the in-cluster agent's (what `gpunode render agent`'s DaemonSet runs)."""


@image.command("build", empty_body={"archive": None})
@click.option(
    "--archive",
    required=True,
    metavar="FILE.tar",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the image archive (OCI image layout with docker's manifest.json).",
)
@click.option(
    "--kind",
    type=click.Choice(sorted(KINDS)),
    default="plugin",
    show_default=True,
    help="plugin: the device plugin (gpunode with only the plugin's dependencies); agent: "
    "`gpunode agent` (gpunode with all its dependencies, nsenter, and kubectl from Debian 13).",
)
@click.option(
    "--tag",
    metavar="REF",
    help="The image's name and tag. Default: the name the DaemonSet uses by default, "
    "ghcr.io/gpunode/gpunode:<gpunode version> (--kind agent: ghcr.io/gpunode/gpunode-agent:<version>).",
)
@click.option(
    "--wheels",
    metavar="DIR",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Use only these wheels (no package index): the gpunode wheel and the plugin's "
    "dependencies for the image's python (3.11) and machine.",
)
@click.option(
    "--source",
    metavar="DIR",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="The gpunode checkout to build the wheel from. Default: the one gpunode runs from.",
)
@click.option(
    "--cache-dir",
    metavar="DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the Debian base is kept between builds. Default: ~/.cache/gpunode/image.",
)
@output_option
def build(
    archive: Path,
    kind: str,
    tag: str | None,
    wheels: Path | None,
    source: Path | None,
    cache_dir: Path | None,
    output: str,
) -> Outcome:
    """Build the plugin image (or, --kind agent, the agent image) into FILE.tar (--archive), with
    no registry: a Debian 12 base made by mmdebstrap (python3 from Debian), the gpunode wheel
    and only the plugin's dependencies (agent: all of gpunode's, nsenter from the base's
    util-linux, and kubectl unpacked from Debian 13's signed archive).

    \b
    Load it where the plugin runs (every GPU node, or a registry of your own):
      ctr -n k8s.io images import FILE.tar      (containerd, as the kubelet sees it)
      podman load -i FILE.tar
    then bootstrap (or `gpunode render agent`) with the image's name: it is the default name
    unless --tag was given (`--image REF` for another name).

    Needs mmdebstrap (root, or unprivileged user namespaces) and, without --wheels, a
    package index. The base is built once per recipe and cached (--cache-dir). Exit status
    0 when written, 1 when the build failed, 2 on bad input.
    """
    from gpunode.bootstrap.image.build import BuildRequest, build_image

    reference = tag or (agent_image() if kind == "agent" else bundled_image())
    report = build_image(
        BuildRequest(
            output=archive,
            reference=reference,
            cache_dir=cache_dir or default_cache_dir(),
            wheels=wheels,
            source=source,
            kind=KINDS[kind],
        )
    )
    python3 = report.debian_packages.get("python3", "?")
    lines = [
        f"built {report.reference} into {report.output}",
        f"  archive:  {_mb(report.archive_bytes)} (ctr images import / podman load / docker load)",
        f"  unpacked: {_mb(report.unpacked_bytes)} in {len(report.layers)} layers",
        f"  base:     Debian bookworm, {len(report.debian_packages)} packages, python3 {python3}"
        f" ({'cached' if report.base_cached else 'built now'})",
        *(f"  {name}:  {version} (Debian 13, unpacked)" for name, version in report.foreign_packages.items()),
        "  python packages: " + ", ".join(f"{n} {v}" for n, v in report.python_packages.items()),
        f"  manifest: {report.manifest_digest}",
        f"  took:     {report.seconds:.1f} s",
    ]
    body = {
        "archive": str(report.output),
        "kind": kind,
        "reference": report.reference,
        "manifest_digest": report.manifest_digest,
        "layers": report.layers,
        "archive_bytes": report.archive_bytes,
        "unpacked_bytes": report.unpacked_bytes,
        "python_packages": report.python_packages,
        "debian_packages": report.debian_packages,
        "foreign_packages": report.foreign_packages,
        "base_cached": report.base_cached,
        "seconds": round(report.seconds, 1),
    }
    return Outcome(EXIT_OK, body, "\n".join(lines) + "\n")
