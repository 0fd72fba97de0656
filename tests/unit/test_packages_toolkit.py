"""The toolkit repository (key fetched, verified, installed for real with gpg over a local
HTTP server), its apt/yum files, and the four packages held at one version."""

from __future__ import annotations

import functools
import http.server
import os
import shlex
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from private_apt import PrivateApt

from gpunode.bootstrap.core.host.os_release import OsRelease
from gpunode.bootstrap.core.packages.toolkit import (
    TOOLKIT_APT_KEYRING,
    TOOLKIT_KEY_FINGERPRINT,
    TOOLKIT_PACKAGES,
    key_check_script,
    key_install_script,
    plan_toolkit_packages,
    plan_toolkit_repo,
)
from gpunode.bootstrap.errors import UserError

BOOKWORM = OsRelease(id="debian", version_id="12", codename="bookworm")
ROCKY9 = OsRelease(id="rocky", version_id="9.4", id_like=("rhel", "centos", "fedora"))


@pytest.fixture(scope="module")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """An armored OpenPGP public key made for the test, and its fingerprint."""
    home = tmp_path_factory.mktemp("gnupg")
    home.chmod(0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    subprocess.run(
        [
            "gpg",
            "--batch",
            "--passphrase",
            "",
            "--quick-gen-key",
            "gpunode test <test@example.invalid>",
            "ed25519",
            "sign",
            "never",
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    listing = subprocess.run(
        ["gpg", "--batch", "--with-colons", "--list-keys"], env=env, check=True, capture_output=True, text=True
    ).stdout
    fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
    served = tmp_path_factory.mktemp("www")
    armored = subprocess.run(
        ["gpg", "--batch", "--armor", "--export", fingerprint], env=env, check=True, capture_output=True
    ).stdout
    (served / "gpgkey").write_bytes(armored)
    return served, fingerprint


@pytest.fixture(scope="module")
def key_server(signing_key: tuple[Path, str]) -> Iterator[str]:
    served, _ = signing_key
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined,assignment,method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/gpgkey"
    server.shutdown()


def path_with(tmp_path: Path, tools: list[str]) -> str:
    """A PATH that has only these tools (to prove the curl / wget choice)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in tools:
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


BASE_TOOLS = ["sh", "mktemp", "rm", "mkdir", "gpg", "awk", "grep", "cp", "chmod", "mv", "dirname", "test", "cat"]


@pytest.mark.parametrize("downloader", ["curl", "wget"])
def test_key_install_verifies_and_writes_the_keyring(
    downloader: str, tmp_path: Path, signing_key: tuple[Path, str], key_server: str
) -> None:
    _, fingerprint = signing_key
    keyring = tmp_path / "keyrings" / "toolkit.gpg"
    env = {"PATH": path_with(tmp_path, BASE_TOOLS + [downloader]), "HOME": str(tmp_path)}
    install = key_install_script(key_server, fingerprint, str(keyring), dearmor=True)
    result = subprocess.run(["sh", "-c", install], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    data = keyring.read_bytes()
    assert not data.startswith(b"-----BEGIN")  # dearmored, as apt's signed-by wants it
    assert oct(keyring.stat().st_mode & 0o777) == "0o644"
    assert not list(keyring.parent.glob("*.gpunode-tmp"))
    check = subprocess.run(["sh", "-c", key_check_script(str(keyring), fingerprint)], env=env)
    assert check.returncode == 0
    other = subprocess.run(["sh", "-c", key_check_script(str(keyring), TOOLKIT_KEY_FINGERPRINT)], env=env)
    assert other.returncode != 0


def test_a_key_with_another_fingerprint_is_refused_and_nothing_written(tmp_path: Path, key_server: str) -> None:
    keyring = tmp_path / "toolkit.gpg"
    keyring.write_bytes(b"the admin's old keyring")
    env = {"PATH": path_with(tmp_path, BASE_TOOLS + ["curl"]), "HOME": str(tmp_path)}
    script = key_install_script(key_server, TOOLKIT_KEY_FINGERPRINT, str(keyring), dearmor=True)
    result = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert "refusing the key" in result.stderr and TOOLKIT_KEY_FINGERPRINT in result.stderr
    assert keyring.read_bytes() == b"the admin's old keyring"


def test_no_downloader_and_unreachable_url_fail_loudly(tmp_path: Path, signing_key: tuple[Path, str]) -> None:
    _, fingerprint = signing_key
    keyring = tmp_path / "toolkit.gpg"
    env = {"PATH": path_with(tmp_path, BASE_TOOLS), "HOME": str(tmp_path)}
    script = key_install_script("http://127.0.0.1:9/gpgkey", fingerprint, str(keyring), dearmor=True)
    result = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True)
    assert result.returncode != 0 and "neither curl nor wget" in result.stderr
    env["PATH"] = path_with(tmp_path, ["curl"])
    result = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True)
    assert result.returncode != 0 and not keyring.exists()


def test_hostile_values_in_the_key_script_stay_data(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    script = key_install_script(
        f"http://127.0.0.1:9/$(touch {marker})", TOOLKIT_KEY_FINGERPRINT, str(tmp_path / "a'b; touch x"), dearmor=True
    )
    subprocess.run(["sh", "-c", script], capture_output=True, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert not marker.exists() and not (Path.cwd() / "x").exists()
    with pytest.raises(ValueError):
        key_install_script("http://x", "not-a-fingerprint", "/k", dearmor=True)


def test_debian_repo_files_and_real_apt_reads_them(tmp_path: Path) -> None:
    repo = plan_toolkit_repo(BOOKWORM, "x86_64")
    assert repo.key_fingerprint == "C95B321B61E88C1809C4F759DDCAE044F796ECB0"
    assert repo.key_url == "https://nvidia.github.io/libnvidia-container/gpgkey"
    (listing,) = repo.files
    assert listing.path == "/etc/apt/sources.list.d/nvidia-container-toolkit.list"
    assert (
        f"deb [arch=amd64 signed-by={TOOLKIT_APT_KEYRING}] "
        "https://nvidia.github.io/libnvidia-container/stable/deb/amd64 /"
    ) in listing.content
    assert repo.setup_command and repo.setup_command.startswith("sh -c ")
    assert "TOOLKIT" not in repo.setup_command and TOOLKIT_KEY_FINGERPRINT in repo.setup_command
    apt = PrivateApt(tmp_path, {"nvidia-container-toolkit.list": listing.content})
    out = apt.run("apt-get", "update", "--print-uris", check=False)
    assert out.returncode == 0 and "E:" not in out.stderr, out.stderr
    assert "https://nvidia.github.io/libnvidia-container/stable/deb/amd64/InRelease" in out.stdout
    arm = plan_toolkit_repo(BOOKWORM, "aarch64").files[0].content
    assert "[arch=arm64 " in arm and "/stable/deb/arm64 /" in arm


def test_rpm_repo_file() -> None:
    repo = plan_toolkit_repo(ROCKY9, "x86_64")
    (repo_file,) = repo.files
    assert repo_file.path == "/etc/yum.repos.d/nvidia-container-toolkit.repo"
    assert "baseurl=https://nvidia.github.io/libnvidia-container/stable/rpm/$basearch" in repo_file.content
    assert "repo_gpgcheck=1" in repo_file.content
    assert "gpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-nvidia-container-toolkit" in repo_file.content
    assert repo.prerequisites[0].name == "gnupg2"
    with pytest.raises(UserError, match="arch"):
        plan_toolkit_repo(OsRelease(id="arch"), "x86_64")


def test_four_packages_pinned_to_one_version() -> None:
    plan = plan_toolkit_packages("1.17.8", {})
    assert [s.name for s in plan.packages] == list(TOOLKIT_PACKAGES)
    assert {s.version for s in plan.packages} == {"1.17.8-*"}
    assert plan.pin is not None
    assert (
        "Package: nvidia-container-toolkit nvidia-container-toolkit-base libnvidia-container-tools "
        "libnvidia-container1\nPin: version 1.17.8-*\nPin-Priority: 1001"
    ) in plan.pin.content
    words = shlex.split(plan.install_command or "")
    assert words[-4:] == [f"{name}=1.17.8-*" for name in TOOLKIT_PACKAGES]
    same = dict.fromkeys(TOOLKIT_PACKAGES, "1.17.8-1")
    assert plan_toolkit_packages("1.17.8", same).install_command is None
    assert plan_toolkit_packages(None, same).install_command is None
    # A half-upgraded toolkit is brought back together even without a version.
    mixed = {**same, "libnvidia-container1": "1.17.9-1"}
    assert len(plan_toolkit_packages(None, mixed).to_install) == 4
    assert plan_toolkit_packages(None, {}).pin is None


def test_dnf_toolkit_plan_and_bad_versions() -> None:
    plan = plan_toolkit_packages("1.17.8", {}, family="rhel")
    assert plan.pin is None
    assert plan.install_command is not None
    assert plan.install_command.startswith("dnf install -y nvidia-container-toolkit-1.17.8 ")
    assert "dnf versionlock add 'nvidia-container-toolkit-1.17.8*'" in plan.install_command
    for bad in ("1.17.8; reboot", "latest", "1.17.8\n"):
        with pytest.raises(UserError, match="toolkit version"):
            plan_toolkit_packages(bad, {})


def test_update_of_only_the_toolkit_source(tmp_path: Path) -> None:
    """apt_update_command(sources_list=...) refreshes that one file and nothing else."""
    from gpunode.bootstrap.core.packages.common import apt_update_command

    debian = (
        "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )
    apt = PrivateApt(tmp_path, {"debian.sources": debian})
    listing = plan_toolkit_repo(BOOKWORM, "x86_64").files[0]
    path = tmp_path / "etc/apt/sources.list.d/nvidia-container-toolkit.list"
    path.write_text(listing.content)
    words = shlex.split(apt_update_command(sources_list=str(path)))
    assert words[0] == "DEBIAN_FRONTEND=noninteractive"
    out = apt.run(*words[1:], "--print-uris", check=False)
    assert out.returncode == 0, out.stderr
    assert "nvidia.github.io/libnvidia-container/stable/deb/amd64/Packages" in out.stdout
    assert "deb.debian.org" not in out.stdout
