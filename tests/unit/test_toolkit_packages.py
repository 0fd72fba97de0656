"""The toolkit stand-in packages as files: names, versions, relations, paths, index."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
from standins.toolkit_packages import PACKAGE_NAMES, build_toolkit_packages, upstream_version


def _field(deb: Path, name: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "--field", str(deb), name], capture_output=True, text=True, check=True
    ).stdout.strip()


def _contents(deb: Path) -> str:
    return subprocess.run(["dpkg-deb", "--contents", str(deb)], capture_output=True, text=True, check=True).stdout


def test_the_four_packages_carry_the_real_names_relations_and_paths(tmp_path: Path) -> None:
    debs = {_field(d, "Package"): d for d in build_toolkit_packages(tmp_path, "1.17.9-1")}
    assert sorted(debs) == sorted(PACKAGE_NAMES)
    assert {_field(d, "Version") for d in debs.values()} == {"1.17.9-1"}
    assert {_field(d, "Architecture") for d in debs.values()} == {"amd64"}
    assert _field(debs["nvidia-container-toolkit"], "Depends") == (
        "nvidia-container-toolkit-base (= 1.17.9-1), libnvidia-container-tools (>= 1.17.9-1), "
        "libnvidia-container-tools (<< 2.0.0)"
    )
    assert _field(debs["libnvidia-container-tools"], "Depends").startswith("libnvidia-container1 (>= 1.17.9-1)")
    assert _field(debs["libnvidia-container1"], "Multi-Arch") == "same"

    base = _contents(debs["nvidia-container-toolkit-base"])
    for program in ("nvidia-container-runtime", "nvidia-ctk", "nvidia-cdi-hook"):
        assert f"./usr/bin/{program}\n" in base
    assert "./usr/bin/nvidia-container-runtime-hook\n" in _contents(debs["nvidia-container-toolkit"])
    assert "./usr/bin/nvidia-container-cli\n" in _contents(debs["libnvidia-container-tools"])
    lib = _contents(debs["libnvidia-container1"])
    assert "./usr/lib/x86_64-linux-gnu/libnvidia-container.so.1 -> libnvidia-container.so.1.17.9" in lib
    assert "./usr/lib/x86_64-linux-gnu/libnvidia-container.so.1.17.9\n" in lib


def test_the_library_is_a_real_shared_object_with_its_soname(tmp_path: Path) -> None:
    debs = build_toolkit_packages(tmp_path / "debs")
    lib_deb = next(d for d in debs if d.name.startswith("libnvidia-container1_"))
    subprocess.run(["dpkg-deb", "-x", str(lib_deb), str(tmp_path / "x")], check=True)
    lib = tmp_path / "x/usr/lib/x86_64-linux-gnu/libnvidia-container.so.1.17.8"
    dynamic = subprocess.run(["readelf", "-d", str(lib)], capture_output=True, text=True, check=True)
    assert "Library soname: [libnvidia-container.so.1]" in dynamic.stdout
    symbols = subprocess.run(["readelf", "--dyn-syms", str(lib)], capture_output=True, text=True, check=True)
    assert " nvc_version" in symbols.stdout


def test_the_index_lists_every_package_with_its_hash_and_builds_are_reproducible(
    tmp_path: Path,
) -> None:
    first = build_toolkit_packages(tmp_path / "a")
    second = build_toolkit_packages(tmp_path / "b")
    assert [hashlib.sha256(d.read_bytes()).hexdigest() for d in first] == [
        hashlib.sha256(d.read_bytes()).hexdigest() for d in second
    ]
    index = (tmp_path / "a" / "Packages").read_text()
    for deb in first:
        assert f"Filename: ./{deb.name}\n" in index
        assert f"SHA256: {hashlib.sha256(deb.read_bytes()).hexdigest()}\n" in index


def test_versions_and_architectures_it_cannot_build_are_refused(tmp_path: Path) -> None:
    assert upstream_version("1.17.8-1") == "1.17.8"
    assert upstream_version("1.18.0~rc.1-1") == "1.18.0-rc.1"
    with pytest.raises(ValueError, match="with a revision"):
        build_toolkit_packages(tmp_path, version="1.17.8")
    with pytest.raises(ValueError, match="not supported"):
        build_toolkit_packages(tmp_path, arch="s390x")
    assert not list(tmp_path.iterdir())
