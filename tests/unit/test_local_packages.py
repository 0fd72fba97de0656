"""Reading .deb and .rpm files without dpkg or rpm, and planning a local toolkit install.

The packages are real: built here with dpkg-deb (gzip, xz, uncompressed, zstd) and
rpmbuild, then read back by gpunode's own ar / tar / RPM header reader.
"""

from __future__ import annotations

import hashlib
import shlex
import subprocess
from pathlib import Path

import pytest

from gpunode.bootstrap.core.packages.toolkit import (
    LOCAL_PACKAGE_DIR,
    TOOLKIT_PACKAGES,
    plan_local_toolkit,
    validate_local_toolkit,
)
from gpunode.bootstrap.errors import UserError
from gpunode.bootstrap.node.local_packages import read_deb, read_local_packages, read_rpm

TOOLKIT_DEPENDS = {
    "nvidia-container-toolkit": "nvidia-container-toolkit-base (= {v}), libnvidia-container-tools (>= {v}), libnvidia-container-tools (<< 2.0.0)",
    "nvidia-container-toolkit-base": "",
    "libnvidia-container-tools": "libnvidia-container1 (>= {v}), libc6 (>= 2.7)",
    "libnvidia-container1": "libc6 (>= 2.34), libseccomp2",
}


def build_deb(
    out_dir: Path, name: str, version: str, arch: str = "amd64", compression: str = "xz", depends: str = ""
) -> Path:
    root = out_dir / f"build-{name}-{version}-{arch}-{compression}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "usr/share/doc" / name).mkdir(parents=True)
    (root / "usr/share/doc" / name / "README").write_text(f"{name} {version}\n")
    control = [
        f"Package: {name}",
        f"Version: {version}",
        f"Architecture: {arch}",
        "Maintainer: gpunode tests <test@example.invalid>",
        "Description: test package",
        " built by gpunode's tests.",
    ]
    if depends:
        control.insert(3, f"Depends: {depends}")
    (root / "DEBIAN/control").write_text("\n".join(control) + "\n")
    path = out_dir / f"{name}_{version}_{arch}.deb"
    subprocess.run(
        ["dpkg-deb", f"-Z{compression}", "--root-owner-group", "--build", str(root), str(path)],
        check=True,
        capture_output=True,
    )
    return path


def ar_member_names(path: Path) -> list[str]:
    return subprocess.run(["ar", "t", str(path)], check=True, capture_output=True, text=True).stdout.split()


@pytest.mark.parametrize(
    ("compression", "member"), [("gzip", "control.tar.gz"), ("xz", "control.tar.xz"), ("none", "control.tar")]
)
def test_deb_control_in_every_compression(tmp_path: Path, compression: str, member: str) -> None:
    deps = TOOLKIT_DEPENDS["nvidia-container-toolkit"].format(v="1.17.8-1")
    path = build_deb(tmp_path, "nvidia-container-toolkit", "1.17.8-1", compression=compression, depends=deps)
    assert member in ar_member_names(path)  # the compression under test is really used
    package = read_deb(path)
    assert (package.name, package.version, package.architecture) == ("nvidia-container-toolkit", "1.17.8-1", "amd64")
    assert package.depends == (
        "nvidia-container-toolkit-base (= 1.17.8-1)",
        "libnvidia-container-tools (>= 1.17.8-1)",
        "libnvidia-container-tools (<< 2.0.0)",
    )
    assert package.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert package.file_name == path.name and package.format == "deb"
    # dpkg agrees with the reader.
    fields = subprocess.run(
        ["dpkg-deb", "-f", str(path), "Package", "Version", "Architecture"], check=True, capture_output=True, text=True
    ).stdout
    assert "Version: 1.17.8-1" in fields


def test_zstd_control_is_a_clear_error_with_the_fix(tmp_path: Path) -> None:
    path = build_deb(tmp_path, "libnvidia-container1", "1.17.8-1", compression="zstd")
    assert "control.tar.zst" in ar_member_names(path)
    with pytest.raises(UserError) as caught:
        read_deb(path)
    message = str(caught.value)
    assert "zstd" in message and "dpkg-deb -Zxz" in message and path.name in message


def test_broken_files_are_named(tmp_path: Path) -> None:
    junk = tmp_path / "junk.deb"
    junk.write_bytes(b"not an archive")
    with pytest.raises(UserError, match="junk.deb is not a readable package"):
        read_deb(junk)
    good = build_deb(tmp_path, "libnvidia-container1", "1.17.8-1")
    truncated = tmp_path / "cut.deb"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(UserError, match="cut.deb"):
        read_deb(truncated)
    fake_rpm = tmp_path / "fake.rpm"
    fake_rpm.write_bytes(b"\xed\xab\xee\xdb" + b"\0" * 92 + b"garbage")
    with pytest.raises(UserError, match="fake.rpm"):
        read_rpm(fake_rpm)


SPEC = """Name: {name}
Version: {version}
Release: {release}
{epoch}Summary: test package
License: Apache-2.0
{requires}
%description
built by gpunode's tests.
%install
mkdir -p %{{buildroot}}/usr/share/doc/{name}
echo {name} > %{{buildroot}}/usr/share/doc/{name}/README
%files
/usr/share/doc/{name}/README
"""


def build_rpm(
    out_dir: Path,
    name: str,
    version: str,
    release: str = "1",
    arch: str = "x86_64",
    epoch: int | None = None,
    requires: str = "",
) -> Path:
    top = out_dir / "rpmbuild"
    spec = out_dir / f"{name}-{arch}.spec"
    spec.write_text(
        SPEC.format(
            name=name,
            version=version,
            release=release,
            epoch=f"Epoch: {epoch}\n" if epoch is not None else "",
            requires=f"Requires: {requires}" if requires else "",
        )
    )
    subprocess.run(
        [
            "rpmbuild",
            "-bb",
            "--target",
            arch,
            "--define",
            f"_topdir {top}",
            "--define",
            "__os_install_post %{nil}",
            "--define",
            "_build_id_links none",
            str(spec),
        ],
        check=True,
        capture_output=True,
    )
    (built,) = (top / "RPMS" / arch).glob(f"{name}-{version}-{release}*.rpm")
    return built


def test_rpm_header_is_read(tmp_path: Path) -> None:
    path = build_rpm(tmp_path, "libnvidia-container-tools", "1.17.8", requires="libnvidia-container1 >= 1.17.8")
    package = read_rpm(path)
    assert (package.name, package.version, package.architecture, package.format) == (
        "libnvidia-container-tools",
        "1.17.8-1",
        "x86_64",
        "rpm",
    )
    assert "libnvidia-container1 >= 1.17.8" in package.depends
    assert not any(dep.startswith("rpmlib(") for dep in package.depends)
    with_epoch = read_rpm(build_rpm(tmp_path, "nvidia-driver", "535.261.03", release="1.el9", epoch=3))
    assert with_epoch.version == "3:535.261.03-1.el9"
    # rpm itself agrees with the reader.
    query = subprocess.run(
        ["rpm", "-qp", "--qf", "%{NAME} %{VERSION}-%{RELEASE} %{ARCH}", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert query == "libnvidia-container-tools 1.17.8-1 x86_64"


@pytest.fixture()
def deb_toolkit_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "pkgs"
    directory.mkdir()
    for name in TOOLKIT_PACKAGES:
        build_deb(directory, name, "1.17.8-1", depends=TOOLKIT_DEPENDS[name].format(v="1.17.8-1"))
    for build in directory.glob("build-*"):
        subprocess.run(["rm", "-rf", str(build)], check=True)
    (directory / "README.txt").write_text("not a package\n")
    return directory


def test_local_toolkit_plan_uploads_and_installs_from_the_host_directory(deb_toolkit_dir: Path) -> None:
    packages = read_local_packages(deb_toolkit_dir)
    assert sorted(p.name for p in packages) == sorted(TOOLKIT_PACKAGES)
    plan = plan_local_toolkit(packages, {}, "x86_64")
    assert [u.remote_path for u in plan.uploads] == [
        f"{LOCAL_PACKAGE_DIR}/{name}_1.17.8-1_amd64.deb" for name in TOOLKIT_PACKAGES
    ]
    assert all(u.sha256 == hashlib.sha256(Path(u.local_path).read_bytes()).hexdigest() for u in plan.uploads)
    words = shlex.split(plan.install_command or "")
    assert words[:3] == ["DEBIAN_FRONTEND=noninteractive", "apt-get", "install"]
    assert "--allow-downgrades" in words
    assert words[-4:] == [u.remote_path for u in plan.uploads]
    assert plan.pin is not None and "Pin: version 1.17.8-1" in plan.pin.content
    # Already installed at that version: nothing to upload, nothing to run.
    done = plan_local_toolkit(packages, dict.fromkeys(TOOLKIT_PACKAGES, "1.17.8-1"), "x86_64")
    assert done.install_command is None and done.uploads == () and done.to_install == ()
    # One package at another version: the set is installed again (downgrade allowed).
    drift = plan_local_toolkit(
        packages, {**dict.fromkeys(TOOLKIT_PACKAGES, "1.17.8-1"), "libnvidia-container1": "1.18.0-1"}, "x86_64"
    )
    assert [s.name for s in drift.to_install] == ["libnvidia-container1"] and len(drift.uploads) == 4


def test_real_apt_installs_the_planned_files(deb_toolkit_dir: Path, tmp_path: Path) -> None:
    """The planned command, pointed at the local files, is one apt resolves (simulation)."""
    packages = read_local_packages(deb_toolkit_dir)
    plan = plan_local_toolkit(packages, {}, "x86_64", remote_dir=str(deb_toolkit_dir))
    words = shlex.split(plan.install_command or "")
    # libc6 and libseccomp2 are on this Debian machine; apt must accept the four files.
    result = subprocess.run(
        ["apt-get", "-s", *words[2:]],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for name in TOOLKIT_PACKAGES:
        assert f"Inst {name} (1.17.8-1 " in result.stdout


def test_validation_names_everything_that_is_wrong(tmp_path: Path) -> None:
    directory = tmp_path / "bad"
    directory.mkdir()
    build_deb(directory, "nvidia-container-toolkit", "1.17.8-1")
    build_deb(directory, "nvidia-container-toolkit-base", "1.17.7-1")
    build_deb(directory, "libnvidia-container1", "1.17.8-1", arch="arm64")
    packages = read_local_packages(directory)
    with pytest.raises(UserError) as caught:
        validate_local_toolkit(packages, "x86_64")
    message = str(caught.value)
    assert "libnvidia-container-tools is missing" in message
    assert "libnvidia-container1_1.17.8-1_arm64.deb is built for arm64, the host is amd64" in message
    assert "different versions" in message and "nvidia-container-toolkit-base 1.17.7-1" in message
    # The same files are right for an arm64 host except the ones built for amd64.
    with pytest.raises(UserError, match="nvidia-container-toolkit_1.17.8-1_amd64.deb is built for amd64"):
        validate_local_toolkit(packages, "aarch64")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no .deb or .rpm"):
        read_local_packages(empty)
    with pytest.raises(UserError, match="does not exist"):
        read_local_packages(tmp_path / "nope")


def test_rpm_toolkit_directory_for_a_rhel_host(tmp_path: Path) -> None:
    directory = tmp_path / "rpms"
    directory.mkdir()
    for name in TOOLKIT_PACKAGES:
        built = build_rpm(tmp_path, name, "1.17.8")
        built.rename(directory / built.name)
    build_deb(directory, "libnvidia-container1", "1.17.8-1")  # a stray .deb is not used on RHEL
    packages = read_local_packages(directory)
    plan = plan_local_toolkit(packages, {}, "x86_64", family="rhel")
    words = shlex.split(plan.install_command or "")
    assert words[:3] == ["dnf", "install", "-y"]
    assert [Path(w).name for w in words[3:]] == [f"{name}-1.17.8-1.x86_64.rpm" for name in TOOLKIT_PACKAGES]
    assert plan.pin is None
    assert plan.notes and "libnvidia-container1_1.17.8-1_amd64.deb" in plan.notes[0]
    installed = dict.fromkeys(TOOLKIT_PACKAGES, "1.17.8-1")
    assert plan_local_toolkit(packages, installed, "x86_64", family="rhel").install_command is None
    with pytest.raises(UserError, match="libnvidia-container1 is missing"):
        validate_local_toolkit([p for p in packages if p.name != "libnvidia-container1"], "x86_64", family="rhel")
    with pytest.raises(UserError, match="built for x86_64, the host is aarch64"):
        plan_local_toolkit(packages, {}, "aarch64", family="rhel")
