"""The Debian driver plans against Debian's real archive, offline.

tests/data/debian/ holds what real apt answered (tests/tools/capture_debian_driver_fixture.py):
for every plan case, the exact package set `apt-get -s install --no-install-recommends`
chose with the plan's own pin file in place, and the real `apt-cache show` records of
those packages. Re-capture after changing the Debian planner.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from gpunode.bootstrap.core.host.os_release import OsRelease
from gpunode.bootstrap.core.packages.common import upstream_version, version_satisfies
from gpunode.bootstrap.core.packages.driver import DriverRequest, plan_driver

DATA = REPO_ROOT / "tests" / "data" / "debian"
RELEASES = {"bookworm": "12", "trixie": "13"}


def records(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    out: dict[tuple[str, str], dict[str, str]] = {}
    for block in path.read_text().split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line and not line[0].isspace() and ":" in line:
                key, value = line.split(":", 1)
                fields[key] = value.strip()
        if "Package" in fields:
            out[(fields["Package"], fields["Version"])] = fields
    return out


def component(record: dict[str, str]) -> str:
    section = record.get("Section", "")
    return section.split("/", 1)[0] if "/" in section else "main"


def cases() -> list[tuple[str, str]]:
    return [
        (codename, case)
        for codename in RELEASES
        for case in json.loads((DATA / f"{codename}-amd64-closures.json").read_text())["cases"]
    ]


@pytest.mark.parametrize(("codename", "case"), cases())
def test_plan_matches_what_real_apt_installs(codename: str, case: str) -> None:
    recorded = json.loads((DATA / f"{codename}-amd64-closures.json").read_text())
    entry = recorded["cases"][case]
    shown = records(DATA / f"{codename}-amd64-apt-cache-show.txt")
    os = OsRelease(id="debian", version_id=RELEASES[codename], codename=codename)
    plan = plan_driver(os, "x86_64", DriverRequest(**entry["request"]), recorded["kernel_release"], {})

    # The fixture was made from this very plan (re-capture when the planner changes).
    assert [spec.apt_arg() for spec in plan.packages] == entry["apt_args"]
    closure: dict[str, str] = entry["closure"]
    # Every package the plan names is real and apt installs it at a version the plan asks for.
    for spec in plan.packages:
        assert spec.name in closure, spec.name
        assert (spec.name, closure[spec.name]) in shown
        assert version_satisfies(closure[spec.name], spec.version)
    # The pinned driver packages all come from one release, of the plan's branch.
    driver = {
        name: version
        for name, version in closure.items()
        if shown[(name, version)].get("Source", name).split()[0]
        in ("nvidia-graphics-drivers", "nvidia-open-gpu-kernel-modules")
    }
    assert {"libnvidia-ml1", "nvidia-smi", "libcuda1"} <= set(driver)
    assert len({upstream_version(v) for v in driver.values()}) == 1
    assert all(upstream_version(v).startswith(plan.branch + ".") for v in driver.values())
    if entry["request"]["version"]:
        assert all(upstream_version(v) == entry["request"]["version"] for v in driver.values())
    # Every component the closure comes from is one the plan asks plan_apt_components for.
    used = {component(shown[(name, version)]) for name, version in closure.items()}
    assert used <= {"main", *plan.components}, used
    assert {"contrib", "non-free"} <= used  # nvidia-alternative -> glx-alternative-nvidia (contrib)
    if entry["request"]["kernel_module"] == "none":
        assert not {"dkms", "nvidia-kernel-dkms", "nvidia-open-kernel-dkms", "firmware-nvidia-gsp"} & set(closure)
        assert not any(name.startswith("linux-headers-") for name in closure)
    else:
        assert "dkms" in closure and "firmware-nvidia-gsp" in closure


def test_bookworm_libnvidia_ml1_facts() -> None:
    """What libnvidia-ml1 pulls in on Debian 12, as the report states it."""
    shown = records(DATA / "bookworm-amd64-apt-cache-show.txt")
    versions = sorted(v for (name, v) in shown if name == "libnvidia-ml1")
    assert versions == ["535.261.03-1", "535.309.01-0+deb12u1"]
    latest = shown[("libnvidia-ml1", "535.309.01-0+deb12u1")]
    assert latest["Depends"] == "nvidia-alternative (= 535.309.01-0+deb12u1), libc6 (>= 2.34)"
    assert latest["Section"] == "non-free/libs" and latest["Size"] == "689424"
    assert shown[("glx-alternative-nvidia", "1.2.2")]["Section"] == "contrib/libs"
    assert shown[("nvidia-persistenced", "535.171.04-1~deb12u1")]["Section"] == "contrib/utils"
    assert "nvidia-kernel-dkms" in shown[("nvidia-smi", "535.309.01-0+deb12u1")]["Recommends"]
