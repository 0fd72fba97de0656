"""Whether gpunode's default images exist in their registry.

The release workflow (.github/workflows/release.yml) pushes ghcr.io/gpunode/gpunode:<version>
(the plugin) and ghcr.io/gpunode/gpunode-agent:<version> (the agent), and only then builds
the wheel, writing the pushed references, one a line, into `published-image.txt` beside this
module. A wheel from that release knows its images are there; a checkout, or a wheel built
any other way, does not, and bootstrap / render agent say so before a node meets ErrImagePull.
"""

from __future__ import annotations

from importlib.resources import files

from gpunode.bootstrap.core.kube.agent_manifests import agent_image
from gpunode.bootstrap.core.kube.plugin_deployment import bundled_image

MARKER = "published-image.txt"


def published_images() -> set[str]:
    marker = files("gpunode.bootstrap.image").joinpath(MARKER)
    try:
        return {line.strip() for line in marker.read_text().splitlines() if line.strip()}
    except (FileNotFoundError, OSError):
        return set()


def default_image_published() -> bool:
    return bundled_image() in published_images()


def default_agent_image_published() -> bool:
    return agent_image() in published_images()


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


def unpublished_agent_image_notice(image: str | None, published: bool) -> str | None:
    """What `render agent` tells a user whose DaemonSet would name an image no registry has."""
    if image is not None or published:
        return None
    return (
        f"The default agent image {agent_image()} is not published (no release of this gpunode "
        "version has pushed it): the agent's pods would end in ErrImagePull. Fix: build it with "
        "`gpunode image build --kind agent --archive agent.tar` and import it on every GPU node "
        "(`ctr -n k8s.io images import agent.tar`), or push it to your registry and pass "
        "`--image REF` to `gpunode render agent`."
    )
