"""A bare host's first containerd config: `containerd config default` of the real binaries
(Debian's 1.6, 1.7 and 2.x), SystemdCgroup set as kubeadm's documentation says, loaded by
the same binary."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import tomllib
from standins.containerd_binaries import containerd_bins  # noqa: F401  (fixture)

from gpunode.bootstrap.core.containerd.initial import INITIAL_HEADER, initial_config
from gpunode.bootstrap.core.containerd.schema import ContainerdConfigError


def runc_options(effective: dict, version: str) -> dict:  # type: ignore[type-arg]
    plugin = "io.containerd.grpc.v1.cri" if version.startswith("1.") else "io.containerd.cri.v1.runtime"
    return effective["plugins"][plugin]["containerd"]["runtimes"]["runc"]["options"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("systemd", [True, False], ids=["systemd", "no-systemd"])
def test_default_config_with_the_init_systems_cgroup_driver_loads(
    containerd_bins: dict[str, Path],
    tmp_path: Path,
    systemd: bool,
) -> None:
    for version, binary in containerd_bins.items():
        default = subprocess.run([str(binary), "config", "default"], capture_output=True, text=True, check=True).stdout
        text = initial_config(default, systemd_cgroup=systemd, path="/etc/containerd/config.toml")
        assert text.startswith(INITIAL_HEADER)
        assert text[len(INITIAL_HEADER) :].replace(f"SystemdCgroup = {str(systemd).lower()}", "") == default.replace(
            "SystemdCgroup = false", ""
        ).replace("SystemdCgroup = true", ""), "nothing but SystemdCgroup changes"
        config = tmp_path / f"{version}.toml"
        config.write_text(text)
        dumped = subprocess.run(
            [str(binary), "--config", str(config), "config", "dump"], capture_output=True, text=True, check=False
        )
        assert dumped.returncode == 0, (version, dumped.stderr)
        assert runc_options(tomllib.loads(dumped.stdout), version)["SystemdCgroup"] is systemd, version


def test_a_default_without_a_schema_is_refused() -> None:
    with pytest.raises(ContainerdConfigError, match="schema 2 or later"):
        initial_config("oom_score = 0\n", systemd_cgroup=True, path="/etc/containerd/config.toml")
