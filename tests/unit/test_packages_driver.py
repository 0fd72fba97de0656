"""Driver plans for every distribution x kernel module mode x request worth having."""

from __future__ import annotations

import shlex

import pytest

from gpunode.bootstrap.core.host.os_release import OsRelease
from gpunode.bootstrap.core.packages.driver import DRIVER_PIN_PATH, DriverRequest, plan_driver
from gpunode.bootstrap.errors import UserError

BOOKWORM = OsRelease(id="debian", version_id="12", codename="bookworm")
TRIXIE = OsRelease(id="debian", version_id="13", codename="trixie")
JAMMY = OsRelease(id="ubuntu", version_id="22.04", codename="jammy", id_like=("debian",))
ROCKY9 = OsRelease(id="rocky", version_id="9.4", id_like=("rhel", "centos", "fedora"))
RHEL10 = OsRelease(id="rhel", version_id="10.0", id_like=("fedora",))
KR = "6.1.0-18-amd64"


def names(plan) -> list[str]:  # type: ignore[no-untyped-def]
    return [spec.name for spec in plan.packages]


def install_args(plan) -> list[str]:  # type: ignore[no-untyped-def]
    assert plan.install_command is not None
    words = shlex.split(plan.install_command)
    return [w for w in words[words.index("install") + 1 :] if not w.startswith("-") and "Dpkg::" not in w]


# ----------------------------------------------------------------------------- Debian


def test_debian_none_installs_only_the_userspace_a_node_needs() -> None:
    plan = plan_driver(BOOKWORM, "x86_64", DriverRequest(kernel_module="none"), KR, {})
    assert names(plan) == ["libnvidia-ml1", "nvidia-smi", "libcuda1"]
    assert plan.components == ("contrib", "non-free")
    assert plan.branch == "535" and plan.repo is None
    assert "--no-install-recommends" in plan.install_command  # nvidia-smi recommends the DKMS module
    assert install_args(plan) == ["libnvidia-ml1", "nvidia-smi", "libcuda1"]
    assert plan.pin is not None and plan.pin.path == DRIVER_PIN_PATH
    assert "Package: src:nvidia-graphics-drivers\nPin: version 535.*\nPin-Priority: 1001" in plan.pin.content


def test_debian_dkms_adds_module_headers_and_persistence_daemon() -> None:
    plan = plan_driver(BOOKWORM, "x86_64", DriverRequest(kernel_module="dkms"), KR, {})
    assert names(plan) == [
        "libnvidia-ml1",
        "nvidia-smi",
        "libcuda1",
        "nvidia-kernel-dkms",
        f"linux-headers-{KR}",
        "nvidia-persistenced",
    ]
    assert plan.components == ("contrib", "non-free", "non-free-firmware")


def test_debian_exact_and_upstream_versions() -> None:
    upstream = plan_driver(BOOKWORM, "x86_64", DriverRequest(version="535.261.03", kernel_module="none"), KR, {})
    assert install_args(upstream) == ["libnvidia-ml1=535.261.03-*", "nvidia-smi=535.261.03-*", "libcuda1=535.261.03-*"]
    assert "Pin: version 535.261.03-*" in upstream.pin.content  # type: ignore[union-attr]
    exact = plan_driver(BOOKWORM, "x86_64", DriverRequest(version="535.309.01-0+deb12u1", kernel_module="none"), KR, {})
    assert "Pin: version 535.309.01-0+deb12u1" in exact.pin.content  # type: ignore[union-attr]
    assert "--allow-downgrades" in exact.install_command  # type: ignore[operator]


def test_debian_installed_driver_is_unchanged_and_kept() -> None:
    installed = {"libnvidia-ml1": "535.261.03-1", "nvidia-smi": "535.261.03-1", "libcuda1": "535.261.03-1"}
    plan = plan_driver(BOOKWORM, "x86_64", DriverRequest(kernel_module="none"), KR, installed)
    assert plan.to_install == () and plan.install_command is None
    # A missing package is added at the installed release, never by upgrading the library.
    partial = plan_driver(
        BOOKWORM, "x86_64", DriverRequest(kernel_module="none"), KR, {"libnvidia-ml1": "535.261.03-1"}
    )
    assert [s.name for s in partial.to_install] == ["nvidia-smi", "libcuda1"]
    assert install_args(partial) == ["libnvidia-ml1=535.261.03-1", "nvidia-smi=535.261.03-1", "libcuda1=535.261.03-1"]
    # An explicit other version is a change (a downgrade here).
    moved = plan_driver(
        BOOKWORM,
        "x86_64",
        DriverRequest(version="535.261.03", kernel_module="none"),
        KR,
        dict.fromkeys(installed, "535.309.01-0+deb12u1"),
    )
    assert len(moved.to_install) == 3


def test_debian_open_flavour_needs_the_version_and_pins_both_sources() -> None:
    with pytest.raises(UserError, match="nvidia-open-kernel-dkms"):
        plan_driver(BOOKWORM, "x86_64", DriverRequest(kernel_module="dkms", flavour="open"), KR, {})
    plan = plan_driver(
        BOOKWORM, "x86_64", DriverRequest(kernel_module="dkms", flavour="open", version="535.261.03"), KR, {}
    )
    assert "nvidia-open-kernel-dkms" in names(plan) and "nvidia-kernel-dkms" not in names(plan)
    assert "src:nvidia-open-gpu-kernel-modules" in plan.pin.content  # type: ignore[union-attr]


def test_debian_trixie_is_branch_550() -> None:
    plan = plan_driver(TRIXIE, "aarch64", DriverRequest(kernel_module="none"), KR, {})
    assert plan.branch == "550" and "Pin: version 550.*" in plan.pin.content  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("os", "request_", "match"),
    [
        (BOOKWORM, DriverRequest(kernel_module="precompiled"), "no precompiled"),
        (BOOKWORM, DriverRequest(branch="550"), "ships NVIDIA driver branch 535 only"),
        (BOOKWORM, DriverRequest(branch="535", version="550.163.01"), "not of branch 535"),
        (BOOKWORM, DriverRequest(branch="5x5"), "Invalid driver branch"),
        (BOOKWORM, DriverRequest(version="535; rm -rf /"), "Invalid driver version"),
        (BOOKWORM, DriverRequest(version="535.261.03\n"), "Invalid driver version"),
        (OsRelease(id="debian", version_id="11", codename="bullseye"), DriverRequest(), "not of debian 11"),
        (OsRelease(id="arch"), DriverRequest(), "does not know how to install"),
        (OsRelease(id="fedora", version_id="41"), DriverRequest(), "does not know how to install"),
    ],
)
def test_combinations_that_do_not_exist(os: OsRelease, request_: DriverRequest, match: str) -> None:
    with pytest.raises(UserError, match=match):
        plan_driver(os, "x86_64", request_, KR, {})


def test_bad_kernel_release_and_architecture() -> None:
    with pytest.raises(UserError, match="kernel release"):
        plan_driver(BOOKWORM, "x86_64", DriverRequest(), "6.1; reboot", {})
    with pytest.raises(UserError, match="architecture"):
        plan_driver(BOOKWORM, "ppc64le", DriverRequest(), KR, {})


# ----------------------------------------------------------------------------- Ubuntu

UBUNTU_KR = "5.15.0-91-generic"


def test_ubuntu_modes() -> None:
    dkms = plan_driver(JAMMY, "x86_64", DriverRequest(branch="535", kernel_module="dkms"), UBUNTU_KR, {})
    assert names(dkms) == [
        "nvidia-headless-535-server",
        "nvidia-utils-535-server",
        "libnvidia-compute-535-server",
        f"linux-headers-{UBUNTU_KR}",
    ]
    pre = plan_driver(
        JAMMY, "x86_64", DriverRequest(branch="535", kernel_module="precompiled", flavour="open"), UBUNTU_KR, {}
    )
    assert names(pre) == [
        "nvidia-headless-no-dkms-535-server-open",
        "nvidia-utils-535-server",
        "libnvidia-compute-535-server",
        f"linux-modules-nvidia-535-server-open-{UBUNTU_KR}",
    ]
    none = plan_driver(JAMMY, "aarch64", DriverRequest(version="580.95.05", kernel_module="none"), UBUNTU_KR, {})
    assert install_args(none) == ["libnvidia-compute-580-server=580.95.05-*", "nvidia-utils-580-server=580.95.05-*"]
    assert "Package: src:nvidia-graphics-drivers-580-server\nPin: version 580.95.05-*" in none.pin.content  # type: ignore[union-attr]
    assert none.components == ("restricted",)
    installed = {
        "libnvidia-compute-580-server": "580.95.05-0ubuntu0.22.04.1",
        "nvidia-utils-580-server": "580.95.05-0ubuntu0.22.04.1",
    }
    assert (
        plan_driver(
            JAMMY, "x86_64", DriverRequest(branch="580", kernel_module="none"), UBUNTU_KR, installed
        ).install_command
        is None
    )


def test_ubuntu_branch_errors() -> None:
    with pytest.raises(UserError, match="which"):
        plan_driver(JAMMY, "x86_64", DriverRequest(), UBUNTU_KR, {})
    with pytest.raises(UserError, match="no -server"):
        plan_driver(JAMMY, "x86_64", DriverRequest(branch="390"), UBUNTU_KR, {})
    available = [
        "nvidia-driver-535-server",
        "nvidia-driver-535",
        "nvidia-driver-570-server",
        "nvidia-driver-560",
        "nvidia-driver-580-server-open",
    ]
    with pytest.raises(UserError, match=r"no nvidia-driver-560-server.*Available -server branches: 535, 570"):
        plan_driver(JAMMY, "x86_64", DriverRequest(branch="560"), UBUNTU_KR, {}, available=available)
    plan = plan_driver(JAMMY, "x86_64", DriverRequest(branch="570"), UBUNTU_KR, {}, available=available)
    assert plan.branch == "570"


# ----------------------------------------------------------------------------- RHEL family


def test_rhel9_streams_per_mode() -> None:
    dkms = plan_driver(ROCKY9, "x86_64", DriverRequest(branch="550"), "5.14.0-427.el9.x86_64", {})
    assert dkms.pre_install_commands == (
        "dnf -y module reset nvidia-driver",
        "dnf -y module enable nvidia-driver:550-dkms",
    )
    assert dkms.install_command.startswith("dnf -y module install nvidia-driver:550-dkms")  # type: ignore[union-attr]
    assert "kernel-devel-5.14.0-427.el9.x86_64" in names(dkms)
    assert dkms.repo is not None and "test -s /etc/yum.repos.d/cuda-rhel9.repo" == dkms.repo.check_command
    assert (
        "https://developer.download.nvidia.com/compute/cuda/repos/rhel9/x86_64/cuda-rhel9.repo"
        in dkms.repo.setup_command
    )  # type: ignore[operator]
    open_ = plan_driver(ROCKY9, "aarch64", DriverRequest(branch="580", flavour="open"), "5.14.0-427.el9.aarch64", {})
    assert "nvidia-driver:580-open" in open_.install_command  # type: ignore[operator]
    assert "/rhel9/sbsa/cuda-rhel9.repo" in open_.repo.setup_command  # type: ignore[union-attr,operator]
    latest = plan_driver(ROCKY9, "x86_64", DriverRequest(kernel_module="precompiled"), "5.14.0-427.el9.x86_64", {})
    assert "nvidia-driver:latest" in latest.pre_install_commands[1]
    installed = {
        "nvidia-driver": "3:550.127.05-1.el9",
        "kmod-nvidia-latest-dkms": "3:550.127.05-1.el9",
        "kernel-devel-5.14.0-427.el9.x86_64": "5.14.0-427.el9",
    }
    assert (
        plan_driver(ROCKY9, "x86_64", DriverRequest(branch="550"), "5.14.0-427.el9.x86_64", installed).install_command
        is None
    )


def test_rhel10_uses_packages_and_versionlock() -> None:
    plan = plan_driver(RHEL10, "x86_64", DriverRequest(branch="580", flavour="open"), "6.12.0-55.el10.x86_64", {})
    assert plan.install_command == "dnf install -y nvidia-open kernel-devel-6.12.0-55.el10.x86_64"
    assert plan.post_install_commands == (
        "dnf versionlock list | grep -qF -- :580. || dnf versionlock add '*nvidia*580*'",
    )
    exact = plan_driver(RHEL10, "x86_64", DriverRequest(version="580.65.06"), "6.12.0-55.el10.x86_64", {})
    assert exact.install_command.startswith("dnf install -y cuda-drivers-580.65.06")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("os", "request_", "match"),
    [
        (ROCKY9, DriverRequest(kernel_module="none"), "nvidia-kmod-common"),
        (ROCKY9, DriverRequest(version="550.127.05"), "module stream"),
        (ROCKY9, DriverRequest(kernel_module="precompiled", flavour="open"), "proprietary modules only"),
        (RHEL10, DriverRequest(kernel_module="precompiled"), "no precompiled"),
        (OsRelease(id="rhel", version_id="7.9", id_like=("fedora",)), DriverRequest(), "does not know"),
    ],
)
def test_rhel_combinations_that_do_not_exist(os: OsRelease, request_: DriverRequest, match: str) -> None:
    with pytest.raises(UserError, match=match):
        plan_driver(os, "x86_64", request_, "5.14.0-427.el9.x86_64", {})
