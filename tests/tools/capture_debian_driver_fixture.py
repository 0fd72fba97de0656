#!/usr/bin/env python3
"""Record what Debian's real archive installs for each Debian driver plan.

For bookworm and trixie (amd64) this points a private apt root (tests/unit/private_apt.py)
at deb.debian.org with main, contrib, non-free and non-free-firmware, writes the plan's
own pin file into it, asks `apt-get -s install --no-install-recommends` for the plan's
packages, and stores the closure apt chose plus the real `apt-cache show` records of
every package in it (and of every version of the planned packages) under
tests/data/debian/. tests/unit/test_packages_debian_archive.py checks the plans against
these files offline.

Run from the repository root with the test venv: .venv/bin/python tests/tools/capture_debian_driver_fixture.py
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "unit"))

from private_apt import PrivateApt  # noqa: E402

from gpunode.bootstrap.core.host.os_release import OsRelease  # noqa: E402
from gpunode.bootstrap.core.packages.driver import DriverRequest, plan_driver  # noqa: E402

RELEASES = {"bookworm": ("12", "535.261.03"), "trixie": ("13", "550.163.01")}
OUT = REPO / "tests" / "data" / "debian"


def sources(codename: str) -> str:
    return (
        "Types: deb\nURIs: http://deb.debian.org/debian\n"
        f"Suites: {codename} {codename}-updates\n"
        "Components: main contrib non-free non-free-firmware\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb\nURIs: http://deb.debian.org/debian-security\n"
        f"Suites: {codename}-security\n"
        "Components: main contrib non-free non-free-firmware\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for codename, (version_id, open_version) in RELEASES.items():
        with tempfile.TemporaryDirectory() as tmp:
            apt = PrivateApt(Path(tmp), {"debian.sources": sources(codename)})
            apt.update()
            depends = apt.run("apt-cache", "depends", "linux-headers-amd64").stdout
            match = re.search(r"Depends: linux-headers-(\S+-amd64)", depends)
            assert match, depends
            kernel_release = match.group(1)
            os_release = OsRelease(id="debian", version_id=version_id, codename=codename)
            cases = {
                "none": DriverRequest(kernel_module="none"),
                "none-upstream-version": DriverRequest(kernel_module="none", version=open_version),
                "dkms": DriverRequest(kernel_module="dkms"),
                "dkms-open": DriverRequest(kernel_module="dkms", flavour="open", version=open_version),
            }
            record: dict[str, object] = {"kernel_release": kernel_release, "cases": {}}
            shown: set[str] = set()
            planned_names: set[str] = set()
            for case, request in cases.items():
                plan = plan_driver(os_release, "x86_64", request, kernel_release, {})
                assert plan.pin is not None
                apt.set_preferences("gpunode-nvidia-driver.pref", plan.pin.content)
                args = [spec.apt_arg() for spec in plan.packages]
                closure = apt.simulate_install(args)
                record["cases"][case] = {  # type: ignore[index]
                    "request": asdict(request),
                    "apt_args": args,
                    "closure": closure,
                }
                shown.update(f"{name}={version}" for name, version in closure.items())
                planned_names.update(spec.name for spec in plan.packages)
            apt.set_preferences("gpunode-nvidia-driver.pref", None)
            records = apt.show(sorted(shown)) + "\n" + apt.show(sorted(planned_names))
            (OUT / f"{codename}-amd64-apt-cache-show.txt").write_text(records)
            (OUT / f"{codename}-amd64-closures.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
            print(codename, kernel_release, {c: len(v["closure"]) for c, v in record["cases"].items()})  # type: ignore[union-attr]


if __name__ == "__main__":
    main()
