"""The two images gpunode builds: the device plugin's, and the in-cluster agent's.

Both stand on the same Debian base (recipe.py, cached per recipe). The plugin image holds the
gpunode wheel and only the plugin's dependencies; the agent image holds gpunode with all its
runtime dependencies (pyinfra and its side: the agent runs bootstrap's node steps), nsenter
(util-linux, Essential in Debian 12, so already in the base) and kubectl, which Debian 12 does
not package: it comes from Debian 13's archive (see ForeignDeb).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from packaging.requirements import Requirement

from gpunode.bootstrap.core.image.recipe import ARCHITECTURES, BaseRecipe
from gpunode.bootstrap.core.plugin_dependencies import plugin_requirements


@dataclass(frozen=True)
class ForeignDeb:
    """A package taken from another Debian suite's archive and unpacked as a layer (not
    installed with dpkg: the base has no apt, and mixing suites in one dpkg database is what
    Debian advises against). Its Depends must be met by the base's own packages."""

    package: str
    suite: str
    binary: str  # the file the image needs from it, checked after unpacking


@dataclass(frozen=True)
class ImageKind:
    name: str
    title: str
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    all_dependencies: bool  # every runtime dependency of gpunode, not only the plugin's
    foreign_debs: tuple[ForeignDeb, ...] = ()
    console_script: bool = False  # /usr/local/bin/gpunode


# kubectl: Debian 13 (trixie) ships it (the `kubectl` package; `kubernetes-client` is its
# transitional name there). A Go binary that needs only libc (glibc >= 2.34; bookworm has 2.36).
KUBECTL = ForeignDeb(package="kubectl", suite="trixie", binary="usr/bin/kubectl")

PLUGIN = ImageKind(
    name="plugin",
    title="gpunode device plugin",
    # What the Containerfile sets: the plugin's own entry point, serve by default.
    entrypoint=("python", "-m", "gpunode.plugin"),
    cmd=("serve",),
    all_dependencies=False,
)
AGENT = ImageKind(
    name="agent",
    title="gpunode agent",
    # `gpunode render agent`'s DaemonSet runs command ["gpunode"], args ["agent", ...].
    entrypoint=("gpunode",),
    cmd=("agent",),
    all_dependencies=True,
    foreign_debs=(KUBECTL,),
    console_script=True,
)
KINDS = {kind.name: kind for kind in (PLUGIN, AGENT)}


def image_requirements(kind: ImageKind, requires: Iterable[str], recipe: BaseRecipe) -> list[str]:
    """What pip installs into the image, out of gpunode's own requirements (with its floors)."""
    if not kind.all_dependencies:
        return plugin_requirements(requires)
    # Markers judged for the image's python and machine, never an extra (test, ...).
    environment = {
        "python_version": recipe.python_version,
        "python_full_version": f"{recipe.python_version}.0",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "os_name": "posix",
        "platform_machine": ARCHITECTURES[recipe.architecture],
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "extra": "",
    }
    wanted = []
    for text in requires:
        requirement = Requirement(text)
        if requirement.marker is None or requirement.marker.evaluate(environment):
            requirement.marker = None
            wanted.append(str(requirement))
    return wanted
