"""The host snapshot's contract: one list of sections, placeholders filled in one pass."""

from __future__ import annotations

import re
import subprocess
from importlib.resources import files

import pytest

from gpunode.bootstrap.core.host.snapshot_contract import (
    ContractError,
    Placeholder,
    Section,
    check_script,
    fill,
)
from gpunode.bootstrap.node.snapshot import snapshot_command

SCRIPT = files("gpunode.bootstrap.node").joinpath("snapshot_script.sh").read_text()


def printed_sections(command: str) -> list[str]:
    output = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True).stdout
    return re.findall(r"^@@(\S+)$", output, re.MULTILINE)


def test_the_script_prints_the_contracts_sections_in_order_on_a_real_host() -> None:
    check_script(SCRIPT)
    plain = printed_sections(snapshot_command("/etc/containerd/config.toml", ("/etc/hostname",)))
    assert plain == [s.value for s in Section if not s.value.startswith("diag_")]
    with_diagnostics = printed_sections(snapshot_command("/etc/containerd/config.toml", (), diagnostics=True))
    assert with_diagnostics == [s.value for s in Section]


def test_a_placeholder_that_begins_another_is_filled_whatever_the_order() -> None:
    script = "@GPUNODE_NVML_PROBE_DRIVER_ROOT@\n@GPUNODE_NVML_PROBE@\n@GPUNODE_DPKG_QUERY@ @GPUNODE_RPM_QUERY@\n"
    values = {
        Placeholder.NVML_PROBE: "probe",
        Placeholder.NVML_PROBE_DRIVER_ROOT: "( probe --root /run/nvidia/driver )",
        Placeholder.DPKG_QUERY: "dpkg-query -W",
        Placeholder.RPM_QUERY: "rpm -qa",
    }
    wanted = "( probe --root /run/nvidia/driver )\nprobe\ndpkg-query -W rpm -qa\n"
    assert fill(script, values) == wanted
    assert fill(script, dict(reversed(list(values.items())))) == wanted
    # A value that looks like a placeholder is pasted as it is, not filled again.
    assert fill("@GPUNODE_NVML_PROBE@", {Placeholder.NVML_PROBE: "@GPUNODE_RPM_QUERY@"}) == "@GPUNODE_RPM_QUERY@"


def test_a_missing_or_unused_value_is_an_error() -> None:
    with pytest.raises(ContractError, match="without a value"):
        fill("@GPUNODE_NVML_PROBE@ @GPUNODE_DPKG_QUERY@", {Placeholder.NVML_PROBE: "probe"})
    with pytest.raises(ContractError, match="values for no placeholder"):
        fill("@GPUNODE_NVML_PROBE@", {Placeholder.NVML_PROBE: "probe", Placeholder.RPM_QUERY: "rpm -qa"})


def test_a_script_that_strays_from_the_contract_is_refused() -> None:
    with pytest.raises(ContractError, match="prints sections"):
        check_script(SCRIPT.replace("sec uname;", "sec kernel;"))
    with pytest.raises(ContractError, match="prints sections"):
        check_script(SCRIPT.replace("sec end\n", "sec end\nsec more\n"))
    with pytest.raises(ContractError, match="parameters"):
        check_script(SCRIPT + 'echo "$GPUNODE_SOMETHING_NEW"\n')
