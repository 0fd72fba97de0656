"""What goes into each image (pure parts of `gpunode image build --kind`), and the check that
a package unpacked from another Debian suite only lands on a base that meets its Depends."""

from __future__ import annotations

from gpunode.bootstrap.core.image.kinds import AGENT, KINDS, PLUGIN, image_requirements
from gpunode.bootstrap.core.image.oci import image_config
from gpunode.bootstrap.core.image.recipe import DEFAULT_BASE
from gpunode.bootstrap.image.foreign_deb import unmet_depends

REQUIRES = [
    "click>=8.1",
    "pyinfra<4,>=3.2",
    'tomli>=2.0; python_version < "3.11"',
    "grpcio>=1.66.2",
    'pytest>=8; extra == "test"',
    'pywin32; sys_platform == "win32"',
]


def test_the_agent_takes_every_runtime_dependency_for_the_images_python_and_the_plugin_only_its_own() -> None:
    assert image_requirements(AGENT, REQUIRES, DEFAULT_BASE) == ["click>=8.1", "pyinfra<4,>=3.2", "grpcio>=1.66.2"]
    assert image_requirements(PLUGIN, REQUIRES, DEFAULT_BASE) == ["click>=8.1", "grpcio>=1.66.2"]


def test_entry_points_are_what_the_daemonsets_expect() -> None:
    assert set(KINDS) == {"plugin", "agent"}
    # render agent's DaemonSet: command ["gpunode"], args ["agent", ...].
    assert AGENT.entrypoint == ("gpunode",) and AGENT.cmd == ("agent",) and AGENT.console_script
    assert [deb.package for deb in AGENT.foreign_debs] == ["kubectl"]
    config = image_config([], "amd64", "2026-01-01T00:00:00Z", {}, AGENT.entrypoint, AGENT.cmd)
    assert config["config"]["Entrypoint"] == ["gpunode"] and config["config"]["Cmd"] == ["agent"]


def test_a_foreign_package_needs_its_depends_met_by_the_base() -> None:
    base = {"libc6": "2.36-9+deb12u10", "util-linux": "2.38.1-5+deb12u3"}
    assert unmet_depends("libc6 (>= 2.34)", base) == []
    assert unmet_depends("libc6 (>= 2.38)", base) == ["libc6 (>= 2.38)"]
    assert unmet_depends("libfoo | libc6:any (>= 2.3), bar", base) == ["bar"]
    assert unmet_depends("", base) == []
