"""First contact: a machine with nothing but Debian 12's base system and python3.

The host is built from PRISTINE_RECIPE (debian_rootfs.py): Debian's required and important
packages, python3 and sshd; no containerd, no runc, no compiler, no curl, and no ~/.ssh for
root (removed before each test). The README's first command is read from README.md (its
first indented line) and run verbatim in a checkout copied into the host, as a user who
just cloned the repository would run it there.

pip inside the host: this machine reaches PyPI only through a TLS-intercepting proxy whose
CA the host does not trust, so the host gets a wheelhouse instead (gpunode's dependencies
and its build backend, built on this machine by `pip wheel` and cached per pyproject.toml)
and a /etc/pip.conf saying `no-index` and `find-links`, as an air-gapped site would.
gpunode itself is built from the copied checkout by the README's `pip install .`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from standins.debian_host import DebianHost, start_debian_host
from standins.debian_rootfs import PRISTINE_RECIPE

from e2e.bootstrap_harness import DRIVER, bootstrap
from e2e.host_gpus import nvidia_gpus, set_pci_functions

REPO = Path(__file__).resolve().parents[2]
CHECKOUT = "/root/gpunode"  # where the checkout lies in the host
WHEELHOUSE = "/opt/wheelhouse"


def readme_first_command() -> str:
    """The first indented (code) line of README.md: the command a new user runs first."""
    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith("    ") and line.strip():
            return line.strip()
    raise AssertionError("README.md has no indented command line")


def wheelhouse(cache_dir: Path) -> Path:
    """gpunode's dependencies and build backend as wheels, built once per pyproject.toml."""
    key = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:16]
    base = cache_dir / "wheelhouse"
    base.mkdir(parents=True, exist_ok=True)
    target = base / key
    with open(base / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.is_dir():
            partial = base / f".{key}.{os.getpid()}"
            shutil.rmtree(partial, ignore_errors=True)
            subprocess.run(
                [sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(partial), str(REPO), "setuptools>=68"],
                check=True,
                capture_output=True,
            )
            for wheel in partial.glob("gpunode-*.whl"):  # the host builds gpunode from its checkout
                wheel.unlink()
            os.rename(partial, target)
    return target


def debian_kernel_release(host: DebianHost) -> str:
    """The release of the kernel Debian currently ships (6.1.0-NN-amd64), from the host's apt."""
    depends = host.exec("apt-cache depends linux-headers-amd64").stdout
    for word in depends.split():
        if word.startswith("linux-headers-") and word[len("linux-headers-") :][:1].isdigit():
            return word[len("linux-headers-") :]
    raise AssertionError(f"linux-headers-amd64 depends on no versioned headers package:\n{depends}")


def copy_checkout(host: DebianHost) -> None:
    """The repository's files (tracked and new, not ignored) as a clone would have them."""
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    names = [name.decode() for name in listed if name and (REPO / name.decode()).exists()]
    archive = subprocess.run(
        ["tar", "-C", str(REPO), "--null", "-T", "-", "-cf", "-"],
        input=b"\0".join(n.encode() for n in names),
        capture_output=True,
        check=True,
    ).stdout
    host.exec(f"mkdir -p {CHECKOUT}")
    subprocess.run(["tar", "-C", f"{host.root}{CHECKOUT}", "-xf", "-"], input=archive, check=True)


@pytest.fixture(scope="module")
def pristine_host(cache_dir: Path) -> Iterator[DebianHost]:
    host = start_debian_host(cache_dir, name="gpunode-pristine", recipe=PRISTINE_RECIPE)
    try:
        host.exec("rm -rf /root/.ssh")
        # The host shares this machine's kernel, which Debian ships no headers for: it is shown
        # the kernel Debian 12 would run (the one linux-headers-amd64 depends on).
        host.set_kernel_release(debian_kernel_release(host))
        shutil.copytree(wheelhouse(cache_dir), f"{host.root}{WHEELHOUSE}")
        host.put_file("/etc/pip.conf", f"[global]\nno-index = true\nfind-links = {WHEELHOUSE}\n")
        copy_checkout(host)
        yield host
    finally:
        host.stop()


def test_the_host_is_pristine(pristine_host: DebianHost) -> None:
    """What the other tests rely on: no container runtime, no ~/.ssh, no venv module yet."""
    missing = pristine_host.exec(
        "for c in containerd runc ctr gcc curl; do command -v $c; done; ls -d /root/.ssh; "
        "dpkg-query -W -f='${Status}' python3-venv 2>/dev/null | grep -q 'ok installed' && echo python3-venv",
        check=False,
    )
    assert missing.stdout.strip() == "", missing.stdout
    assert pristine_host.exec("python3 --version").stdout.startswith("Python 3.11")


def test_readme_first_command_exits_0_on_a_pristine_debian_12(pristine_host: DebianHost) -> None:
    command = readme_first_command()
    assert "gpunode bootstrap @local" in command, command
    result = pristine_host.exec(f"cd {CHECKOUT} && {command}", check=False, timeout=1200)
    assert result.returncode == 0, (
        f"{command}\nexit {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    )
    assert "@local: ok" in result.stdout, result.stdout[-4000:]
    assert pristine_host.exec("ls -d /root/.ssh", check=False).returncode != 0, "an @local run needs no ~/.ssh"


def test_pristine_control_machine_bootstraps_a_second_host_over_ssh(
    pristine_host: DebianHost, debian_host: DebianHost
) -> None:
    """The pristine host, gpunode installed by the README's command, has never used SSH."""
    gpunode = "/root/.gpunode/bin/gpunode"
    if pristine_host.exec(f"test -x {gpunode}", check=False).returncode != 0:
        install = readme_first_command().rsplit(" && ", 1)[0]  # all but the dry run
        pristine_host.exec(f"cd {CHECKOUT} && {install}", timeout=1200)
    pristine_host.exec("rm -rf /root/.ssh")
    pristine_host.put_file("/root/second-host-key", debian_host.ssh_key.read_bytes(), mode=0o600)
    result = pristine_host.exec(
        f"{gpunode} bootstrap root@{debian_host.address}:{debian_host.ssh_port} --ssh-key /root/second-host-key "
        "--dry-run --allow-no-gpu --skip-cluster --kernel-module none --output json",
        check=False,
        timeout=600,
    )
    (report,) = json.loads(result.stdout)["hosts"]
    assert report["error"] is None, result.stderr
    assert report["steps"] and report["steps"][0]["name"] == "preflight"
    modes = pristine_host.exec("stat -c '%a %n' /root/.ssh /root/.ssh/known_hosts").stdout.split("\n")
    assert modes[:2] == ["700 /root/.ssh", "600 /root/.ssh/known_hosts"], modes
    recorded = pristine_host.exec("cat /root/.ssh/known_hosts").stdout.split()
    assert recorded[0] == f"[{debian_host.address}]:{debian_host.ssh_port}"
    assert recorded[1:3] == debian_host.known_hosts_path.read_text().split()[1:3]


def test_test_packages_leave_no_service_running_or_enabled(cache_dir: Path) -> None:
    """tests/install-packages, as tests/run calls it, on a fresh machine: nothing starts or is enabled."""
    host = start_debian_host(cache_dir, name="gpunode-pristine-pkgs", recipe=PRISTINE_RECIPE)
    try:
        host.put_file("/root/install-packages", (REPO / "tests/install-packages").read_bytes(), mode=0o755)
        result = host.exec("/root/install-packages", check=False, timeout=1500)
        assert result.returncode == 0, result.stderr[-3000:]
        installed = host.exec("dpkg-query -W -f='${Package}\\n' containerd prometheus mmdebstrap").stdout.split()
        assert installed == ["containerd", "mmdebstrap", "prometheus"]
        # Nothing running: the host's processes are sshd (PID 1) and this command's own.
        processes = host.exec("ps -e -o comm=").stdout.split()
        assert not {"containerd", "prometheus", "prometheus-node-exporter"} & set(processes), processes
        # Nothing enabled: no unit linked into a target, no SysV start link.
        enabled = host.exec(
            "find /etc/systemd/system -path '*.wants/*' -o -path '*.requires/*' | "
            "grep -E 'containerd|prometheus' || true; ls /etc/rc2.d /etc/rc3.d /etc/rc5.d 2>/dev/null "
            "| grep -E '^S.*(containerd|prometheus)' || true"
        ).stdout.split()
        assert enabled == [], enabled
        assert host.exec("test -e /usr/sbin/policy-rc.d", check=False).returncode != 0, "the start policy is removed"
    finally:
        host.stop()


def test_a_bare_host_is_refused_before_any_change_then_install_containerd_gives_it_a_runtime(
    cache_dir: Path, toolkit_package_dir: Path
) -> None:
    """Over SSH, a real run (not a dry run): refused first, then --install-containerd, then a second run."""
    host = start_debian_host(cache_dir, name="gpunode-bare", recipe=PRISTINE_RECIPE)
    try:
        set_pci_functions(host, nvidia_gpus(1))
        host.set_loaded_nvidia_module(DRIVER)
        packages = "dpkg-query -W -f='${Package} ${Version}\\n' | sort"
        before = host.exec(packages).stdout
        etc = host.exec("find /etc -newer /etc/hostname | sort").stdout

        refused = bootstrap(host, toolkit_dir=toolkit_package_dir)
        assert refused.result.returncode == 1, refused.explain()
        assert refused.statuses()["preflight"] == "failed"
        assert "--install-containerd" in refused.step("preflight")["detail"]
        assert set(refused.statuses().values()) == {"failed", "skipped"}
        assert host.exec(packages).stdout == before and host.exec("find /etc -newer /etc/hostname | sort").stdout == etc

        run = bootstrap(host, "--install-containerd", toolkit_dir=toolkit_package_dir)
        assert run.result.returncode == 0, run.explain()
        assert run.statuses()["container-runtime"] == "changed"
        assert "no kubelet on this host" in run.said("preflight")
        config = host.exec("cat /etc/containerd/config.toml").stdout
        assert config.startswith("# Written by gpunode (--install-containerd)")
        assert "SystemdCgroup = false" in config, "no systemd in the host: cgroupfs, as kubeadm says"
        assert host.containerd_pid() is not None, "containerd runs"
        dump = host.exec("containerd config dump").stdout
        assert 'BinaryName = "/usr/bin/nvidia-container-runtime"' in dump, "the containerd step added the runtime"

        again = bootstrap(host, "--install-containerd", toolkit_dir=toolkit_package_dir)
        assert again.result.returncode == 0, again.explain()
        assert set(again.statuses().values()) <= {"unchanged", "skipped"}, again.statuses()
    finally:
        host.stop()
