"""Whether the default plugin image exists in its registry.

The release workflow (.github/workflows/release.yml) pushes ghcr.io/gpunode/gpunode:<version>
and only then builds the wheel, writing the pushed reference into `published-image.txt`
beside this module. A wheel from that release knows its image is there; a checkout, or a
wheel built any other way, does not, and bootstrap says so before a node meets
ErrImagePull.
"""

from __future__ import annotations

from importlib.resources import files

from gpunode.bootstrap.core.kube.manifests import bundled_image

MARKER = "published-image.txt"


def default_image_published() -> bool:
    marker = files("gpunode.bootstrap.image").joinpath(MARKER)
    try:
        return marker.read_text().strip() == bundled_image()
    except (FileNotFoundError, OSError):
        return False


def unpublished_image_notice(plugin: str, image: str | None, plugin_mode: str | None, published: bool) -> str | None:
    """What to tell a user whose DaemonSet would run an image no registry has, or None."""
    if plugin != "bundled" or image is not None or plugin_mode == "host" or published:
        return None
    default = bundled_image()
    return (
        f"The default plugin image {default} is not published (no release of this gpunode "
        "version has pushed it): the DaemonSet's pods would end in ErrImagePull. Fix: build it "
        "with `gpunode image build --archive plugin.tar` and import it on every GPU node "
        "(`ctr -n k8s.io images import plugin.tar`), or push it to your registry and pass "
        "`--image REF`; for a single node, `--plugin-mode host` runs the plugin as a service "
        "on the node, with no image."
    )
