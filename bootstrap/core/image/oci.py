"""The image archive's documents: an OCI image layout that also carries docker's manifest.json.

One tar file that both kinds of loader take: `ctr images import` and `podman load` read the
OCI layout (oci-layout, index.json, blobs/sha256/...), `docker load` and older tools read
manifest.json, which points at the same blobs (docker save writes the same shape since
Docker 25). The image name travels as `io.containerd.image.name` (what ctr names the
image after) and `org.opencontainers.image.ref.name` (the tag, for OCI tools).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

OCI_LAYOUT = {"imageLayoutVersion": "1.0.0"}
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"

ENV = [
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "PYTHONUNBUFFERED=1",
    # The packages come compiled; a container never writes bytecode next to them.
    "PYTHONDONTWRITEBYTECODE=1",
]


@dataclass(frozen=True)
class Blob:
    """A content-addressed file: its sha256 digest ("sha256:<hex>") and size in bytes."""

    digest: str
    size: int

    @property
    def path(self) -> str:
        return "blobs/sha256/" + self.digest.split(":", 1)[1]


@dataclass(frozen=True)
class Layer:
    blob: Blob  # the gzip-compressed layer as stored
    diff_id: str  # sha256 of the uncompressed tar
    created_by: str  # for the image's history


def canonical(document: dict[str, Any] | list[Any]) -> bytes:
    """The bytes a JSON document is stored as (sorted keys, no spaces: stable digests)."""
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def image_config(
    layers: list[Layer],
    architecture: str,
    created: str,
    labels: dict[str, str],
    entrypoint: tuple[str, ...],
    cmd: tuple[str, ...],
) -> dict[str, Any]:
    config = {"Env": ENV, "Entrypoint": list(entrypoint), "Cmd": list(cmd), "Labels": labels}
    return {
        "architecture": architecture,
        "os": "linux",
        "created": created,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created": created, "created_by": layer.created_by} for layer in layers],
    }


def image_manifest(config: Blob, layers: list[Layer], labels: dict[str, str]) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config.digest, "size": config.size},
        "layers": [
            {"mediaType": MEDIA_LAYER_GZIP, "digest": layer.blob.digest, "size": layer.blob.size} for layer in layers
        ],
        "annotations": labels,
    }


def split_reference(reference: str) -> tuple[str, str]:
    """ "ghcr.io/gpunode/gpunode:0.1.0" -> ("ghcr.io/gpunode/gpunode", "0.1.0")."""
    name, _, tag = reference.rpartition(":")
    if not name or "/" in tag:
        return reference, "latest"
    return name, tag


def image_index(manifest: Blob, reference: str, architecture: str) -> dict[str, Any]:
    _, tag = split_reference(reference)
    return {
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [
            {
                "mediaType": MEDIA_MANIFEST,
                "digest": manifest.digest,
                "size": manifest.size,
                "platform": {"architecture": architecture, "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": reference,
                    "org.opencontainers.image.ref.name": tag,
                },
            }
        ],
    }


def docker_manifest(config: Blob, layers: list[Layer], reference: str) -> list[dict[str, Any]]:
    return [{"Config": config.path, "RepoTags": [reference], "Layers": [layer.blob.path for layer in layers]}]
