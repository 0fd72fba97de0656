"""Settings: defaults, inventory data, flags, and the errors a user gets for bad values."""

from __future__ import annotations

import pytest

from gpunode.bootstrap.core.settings import NodeSettings, resolve_settings
from gpunode.bootstrap.errors import UserError


def test_flags_override_inventory_data_which_override_defaults() -> None:
    data = {"gpunode_driver_branch": "535", "gpunode_kernel_module": "none", "ssh_user": "admin"}
    settings = resolve_settings("gpu01", data, {"kernel_module": "dkms", "toolkit_version": None})
    assert settings.driver_branch == "535"
    assert settings.kernel_module == "dkms"
    assert settings.toolkit_version is None
    assert resolve_settings("gpu01", {}, {}) == NodeSettings()


@pytest.mark.parametrize(
    ("data", "overrides", "words"),
    [
        ({"gpunode_kernel_modul": "none"}, {}, ["gpunode_kernel_modul", "gpunode_kernel_module"]),
        ({"gpunode_kernel_module": "kmod"}, {}, ["kmod", "dkms, precompiled, none"]),
        ({}, {"driver_branch": "53"}, ["--driver-branch", "three-digit"]),
        ({}, {"driver_version": "535; rm -rf /"}, ["--driver-version", "not a package version"]),
        ({}, {"toolkit_version": "latest!"}, ["option --toolkit-version", "1.17.8-1"]),
        ({"gpunode_allow_no_gpu": "perhaps"}, {}, ["gpunode_allow_no_gpu", "true or false"]),
        ({"gpunode_containerd_config": "etc/containerd/config.toml"}, {}, ["absolute path"]),
        ({}, {"containerd_restart_command": "systemctl restart containerd\nrm -rf /"}, ["newline"]),
        ({"gpunode_driver_branch": "550"}, {"driver_version": "535.261.03"}, ["not on branch 550"]),
    ],
)
def test_bad_values_name_the_host_the_setting_and_the_fix(
    data: dict[str, object], overrides: dict[str, object], words: list[str]
) -> None:
    with pytest.raises(UserError) as error:
        resolve_settings("gpu01.example", data, overrides)
    message = str(error.value)
    assert message.startswith("gpu01.example: ")
    assert "Fix: " in message
    for word in words:
        assert word in message


def test_booleans_from_inventory_data_accept_the_usual_spellings() -> None:
    assert resolve_settings("h", {"gpunode_allow_no_gpu": "yes"}, {}).allow_no_gpu is True
    assert resolve_settings("h", {"gpunode_reboot": False}, {}).reboot is False
