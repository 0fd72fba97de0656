"""os-release parsing, version matching, installed-state parsing and the shell commands."""

from __future__ import annotations

import shlex
import subprocess

import pytest

from gpunode.bootstrap.core.host.os_release import parse_os_release
from gpunode.bootstrap.core.packages.common import (
    DPKG_QUERY_COMMAND,
    RPM_QUERY_COMMAND,
    PackageSpec,
    apt_install_command,
    apt_update_command,
    differing,
    distro_version_pattern,
    dnf_install_command,
    dpkg_arch,
    parse_dpkg_query,
    parse_rpm_query,
    rpm_arch,
    upstream_version,
    version_satisfies,
)
from gpunode.bootstrap.errors import UserError

DEBIAN_12 = """PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL="https://www.debian.org/"
"""
UBUNTU_2204 = """PRETTY_NAME="Ubuntu 22.04.4 LTS"
NAME="Ubuntu"
VERSION_ID="22.04"
VERSION="22.04.4 LTS (Jammy Jellyfish)"
VERSION_CODENAME=jammy
ID=ubuntu
ID_LIKE=debian
UBUNTU_CODENAME=jammy
"""
ROCKY_9 = """NAME="Rocky Linux"
VERSION="9.4 (Blue Onyx)"
ID="rocky"
ID_LIKE="rhel centos fedora"
VERSION_ID="9.4"
PLATFORM_ID="platform:el9"
"""


def test_os_release_of_real_distributions() -> None:
    debian = parse_os_release(DEBIAN_12)
    assert (debian.id, debian.version_id, debian.codename, debian.family) == ("debian", "12", "bookworm", "debian")
    ubuntu = parse_os_release(UBUNTU_2204)
    assert (ubuntu.id, ubuntu.major_version, ubuntu.codename, ubuntu.id_like) == ("ubuntu", "22", "jammy", ("debian",))
    assert ubuntu.family == "debian"
    rocky = parse_os_release(ROCKY_9)
    assert (rocky.id, rocky.major_version, rocky.family, rocky.codename) == ("rocky", "9", "rhel", "")
    assert rocky.id_like == ("rhel", "centos", "fedora")


def test_os_release_quoting_rules_and_junk() -> None:
    text = (
        "# a comment\n\n"
        "ID='linuxmint'\n"
        'ID_LIKE="ubuntu debian"\n'
        'VERSION_ID="21.3"\n'
        'PRETTY_NAME="A \\"quoted\\" \\$name"\n'
        "UBUNTU_CODENAME=jammy\n"
        "this line is not an assignment\n"
        'BROKEN="unterminated\n'
        "1BAD=x\n"
    )
    release = parse_os_release(text)
    assert release.id == "linuxmint"
    assert release.family == "debian"  # through ID_LIKE
    assert release.codename == "jammy"  # UBUNTU_CODENAME stands in for VERSION_CODENAME
    assert release.version_id == "21.3"
    assert parse_os_release("").id == "linux"
    assert parse_os_release("ID=arch\n").family == "unknown"


def test_upstream_versions_map_to_every_packaging() -> None:
    assert distro_version_pattern("535.261.03") == "535.261.03-*"
    assert distro_version_pattern("535.261.03-1~deb12u1") == "535.261.03-1~deb12u1"
    assert upstream_version("3:535.261.03-1.el9") == "535.261.03"
    assert upstream_version("535.261.03-0ubuntu0.22.04.1") == "535.261.03"
    for installed in ("535.261.03-1", "535.261.03-0+deb12u1", "535.261.03-0ubuntu0.22.04.1", "3:535.261.03-1.el9"):
        assert version_satisfies(installed, "535.261.03-*")
        assert version_satisfies(installed, "535.*")
    assert not version_satisfies("535.309.01-0+deb12u1", "535.261.03-*")
    assert not version_satisfies("5350.1-1", "535.*")
    assert version_satisfies("1.17.8-1", "1.17.8-1")
    assert version_satisfies("0:1.17.8-1", "1.17.8-1")
    assert not version_satisfies("1.17.8-1", "2:1.17.8-1")
    assert version_satisfies("anything", None)


def test_differing_names_missing_and_wrong_versions() -> None:
    specs = (PackageSpec("a", "1.0-*"), PackageSpec("b", "2.0-1"), PackageSpec("c"))
    assert differing(specs, {"a": "1.0-3", "b": "2.0-1", "c": "9"}) == ()
    assert differing(specs, {"a": "1.1-1", "b": "2.0-1"}) == (specs[0], specs[2])


def test_dpkg_query_parsing_counts_only_installed_native_packages() -> None:
    output = (
        "libnvidia-ml1\t535.261.03-1\tamd64\tii \n"
        "libnvidia-ml1\t535.261.03-1\ti386\tii \n"
        "nvidia-smi\t535.261.03-1\tamd64\thi \n"
        "nvidia-kernel-dkms\t535.261.03-1\tamd64\trc \n"
        "libcuda1\t\tamd64\tun \n"
        "nvidia-support\t20220217+3~deb12u1\tamd64\tiF \n"
        "nvidia-kernel-common\t20220217+3~deb12u1\tall\tii \n"
        "garbage line\n"
    )
    assert parse_dpkg_query(output, "x86_64") == {
        "libnvidia-ml1": "535.261.03-1",
        "nvidia-smi": "535.261.03-1",
        "nvidia-kernel-common": "20220217+3~deb12u1",
    }


def test_dpkg_query_command_runs_on_this_debian_machine() -> None:
    result = subprocess.run(["sh", "-c", DPKG_QUERY_COMMAND], capture_output=True, text=True, check=False)
    # Patterns that match nothing are normal (exit 1 from dpkg-query is accepted).
    assert result.returncode == 0, result.stderr
    installed = parse_dpkg_query(result.stdout, "x86_64")
    dpkg = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "dkms"], capture_output=True, text=True)
    if dpkg.returncode == 0 and dpkg.stdout:
        assert installed.get("dkms") == dpkg.stdout
    for name in installed:
        assert name.startswith(("nvidia-", "libnvidia-", "linux-", "firmware-nvidia")) or name in ("libcuda1", "dkms")
    # A failing dpkg-query (here: an unknown option) is not hidden.
    broken = DPKG_QUERY_COMMAND.replace("dpkg-query -W", "dpkg-query --no-such-option -W")
    assert subprocess.run(["sh", "-c", broken], capture_output=True).returncode != 0


def test_rpm_query_parsing_and_command() -> None:
    output = (
        "nvidia-driver\t3:535.261.03-1.el9\tx86_64\n"
        "nvidia-driver\t3:535.261.03-1.el9\ti686\n"
        "nvidia-container-toolkit\t0:1.17.8-1\tx86_64\n"
        "nvidia-kmod-common\t3:535.261.03-1.el9\tnoarch\n"
        "broken\n"
    )
    assert parse_rpm_query(output, "x86_64") == {
        "nvidia-driver": "3:535.261.03-1.el9",
        "nvidia-container-toolkit": "1.17.8-1",
        "nvidia-kmod-common": "3:535.261.03-1.el9",
    }
    assert RPM_QUERY_COMMAND.startswith("rpm -qa --qf ")
    # rpm is installed here (it builds test packages): the query runs and prints nothing
    # for an empty rpm database rather than failing.
    result = subprocess.run(["sh", "-c", RPM_QUERY_COMMAND], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert parse_rpm_query(result.stdout) == {}


def test_architectures() -> None:
    assert dpkg_arch("x86_64") == "amd64" and dpkg_arch("aarch64") == "arm64" and dpkg_arch("arm64") == "arm64"
    assert rpm_arch("amd64") == "x86_64" and rpm_arch("aarch64") == "aarch64"
    with pytest.raises(UserError, match="ppc64le"):
        dpkg_arch("ppc64le")
    with pytest.raises(UserError):
        rpm_arch("riscv64")


HOSTILE = ["x; rm -rf /", "$(touch /tmp/pwned)", "a'b", 'a"b', "new\nline", "`id`"]


@pytest.mark.parametrize("value", HOSTILE)
def test_every_command_quotes_its_values(value: str) -> None:
    spec = PackageSpec("pkg", value)
    for command in (
        apt_install_command([spec, value], allow_downgrades=True),
        dnf_install_command([spec, value]),
        apt_update_command(sources_list=value),
    ):
        words = shlex.split(command)
        assert any(value in word for word in words), command
        # Run it through a real shell with echo in place of the package manager: the value
        # arrives as one argument, nothing is executed.
        echoed = subprocess.run(
            ["sh", "-c", command.replace("apt-get", "printf '%s\\n'", 1).replace("dnf", "printf '%s\\n'", 1)],
            capture_output=True,
            text=True,
            check=True,
        )
        assert value in echoed.stdout


def test_apt_install_command_shape() -> None:
    command = apt_install_command(
        [PackageSpec("libnvidia-ml1", "535.261.03-*"), PackageSpec("nvidia-smi")], allow_downgrades=True
    )
    assert command.startswith("DEBIAN_FRONTEND=noninteractive apt-get install -y")
    words = shlex.split(command)
    assert "Dpkg::Options::=--force-confdef" in words and "Dpkg::Options::=--force-confold" in words
    assert "--no-install-recommends" in words and "--allow-downgrades" in words
    assert words[-2:] == ["libnvidia-ml1=535.261.03-*", "nvidia-smi"]
    assert "--allow-downgrades" not in apt_install_command(["a"], allow_downgrades=False)
    assert shlex.split(dnf_install_command([PackageSpec("nvidia-open", "580.65.06")])) == [
        "dnf",
        "install",
        "-y",
        "nvidia-open-580.65.06",
    ]
    with pytest.raises(ValueError):
        apt_install_command([], allow_downgrades=False)
