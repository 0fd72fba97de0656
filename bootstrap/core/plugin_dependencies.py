"""The bundled plugin's own runtime dependencies, as gpunode's metadata names them.

One list for every place that installs the plugin without gpunode's operator side (pyinfra,
gevent, jinja2 ...): the plugin image (core/image) and host plugin mode's venv
(node/steps/plugin_service.py); a test keeps the Containerfile's selection equal to it.
prometheus_client serves /metrics and PyYAML reads NVIDIA's device plugin config file.
"""

from __future__ import annotations

from collections.abc import Iterable

from packaging.requirements import Requirement

PLUGIN_DEPENDENCIES = ("click", "grpcio", "protobuf", "nvidia-ml-py", "prometheus_client", "pyyaml")


def plugin_requirements(requires: Iterable[str]) -> list[str]:
    """The plugin's dependencies (with gpunode's floors) out of gpunode's own requirements."""
    wanted = []
    for text in requires:
        requirement = Requirement(text)
        if requirement.name in PLUGIN_DEPENDENCIES and requirement.marker is None:
            wanted.append(str(requirement))
    return wanted
