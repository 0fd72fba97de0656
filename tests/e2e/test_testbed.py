"""The end-to-end test bed itself: what the bootstrap tests rely on, proven with real parts.

Real sshd and ssh client, real apt against deb.debian.org, real dpkg, pyinfra and
testinfra over SSH, containerd as a plain process in the host, and no trace of a host
(process, mount, directory) after it is stopped, even when its test process is killed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from standins.debian_host import DebianHost, start_debian_host
from standins.toolkit_packages import DEFAULT_VERSION as TOOLKIT_VERSION
from standins.toolkit_packages import PACKAGE_NAMES

VENV_BIN = Path(sys.executable).parent
APT_ENV = "DEBIAN_FRONTEND=noninteractive"


def _processes_in_namespace(kind: str, ns: str) -> list[int]:
    """Running processes in a namespace; zombies (nothing running, no mounts) left out."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                same = os.readlink(f"/proc/{entry}/ns/{kind}") == ns
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if same and state != "Z":
                found.append(int(entry))
    return found


def _mount_targets() -> str:
    return subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True, text=True, check=True).stdout


# --- reaching the host -----------------------------------------------------------------


def test_ssh_logs_in_as_root_with_the_hosts_key_to_its_own_hostname_and_pid_namespace(
    debian_host: DebianHost, tmp_path: Path
) -> None:
    out = debian_host.ssh("hostname; id -un; cat /proc/1/comm; echo $$; cat /etc/debian_version")
    hostname, user, pid1, shell_pid, debian_version = out.stdout.split()
    assert hostname == debian_host.name
    assert user == "root"
    assert pid1 == "sshd"  # sshd is the host's PID 1: no init system
    assert int(shell_pid) < 1000  # numbered in the host's own PID namespace
    assert debian_version.startswith("12.")
    assert os.readlink(f"/proc/{debian_host.init_pid}/ns/pid") != os.readlink("/proc/self/ns/pid")
    hosts = debian_host.ssh("getent hosts $(hostname)").stdout.split()
    assert hosts[:2] == ["127.0.1.1", debian_host.name]

    # Only the host's key opens it: another key is refused, and no password is asked for.
    other_key = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True)
    # ssh takes -F's IdentityFile before -i, so use a config without one.
    config_without_key = tmp_path / "ssh_config"
    config_without_key.write_text(
        "\n".join(line for line in debian_host.ssh_config_path.read_text().splitlines() if "IdentityFile" not in line)
        + "\n"
    )
    refused = subprocess.run(
        ["ssh", "-F", str(config_without_key), "-i", str(other_key), debian_host.ssh_alias, "true"],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 255
    assert "Permission denied (publickey)" in refused.stderr

    # The host key was known before the first connection: nothing was added anywhere.
    known = Path.home() / ".ssh" / "known_hosts"
    assert not known.exists() or f":{debian_host.ssh_port}]" not in known.read_text()


def test_the_host_has_a_private_dev_its_own_proc_and_the_machines_kernel(
    debian_host: DebianHost,
) -> None:
    mounts = debian_host.ssh("findmnt -rn -o TARGET,FSTYPE").stdout.splitlines()
    table = dict(line.split(" ", 1) for line in mounts)
    assert table["/"] == "overlay"
    assert table["/dev"] == "tmpfs"  # never the machine's devtmpfs
    assert table["/dev/pts"] == "devpts"
    assert table["/proc"] == "proc"
    assert table["/run"] == "tmpfs"
    devices = debian_host.ssh("ls /dev").stdout.split()
    assert not [d for d in devices if d.startswith(("nvidia", "vd", "sd", "kvm"))]
    assert debian_host.ssh("head -c 16 /dev/urandom | wc -c; echo x > /dev/null").stdout.strip() == "16"
    # A device node made in the host stays in the host.
    debian_host.ssh("mknod -m 666 /dev/nvidiactl c 195 255")
    assert not Path("/dev/nvidiactl").exists()
    # sysfs is the machine's (read-only): its kernel's modules, never an nvidia one.
    assert debian_host.ssh("ls /sys/module | wc -l").stdout.strip() != "0"
    assert debian_host.ssh("test -e /sys/module/nvidia", check=False).returncode == 1
    assert debian_host.ssh("touch /sys/module/x", check=False).returncode != 0
    assert debian_host.ssh("uname -r").stdout.strip() == os.uname().release


# --- apt: the driver userspace from non-free, the toolkit from a local directory -----------


def test_apt_installs_the_driver_userspace_from_non_free_and_its_alternatives_chain(
    debian_host: DebianHost,
) -> None:
    debian_host.ssh("apt-get update -q")
    debian_host.ssh(f"{APT_ENV} apt-get install -y -q --no-install-recommends libnvidia-ml1 nvidia-smi")
    version = debian_host.ssh("dpkg-query -W -f '${Version}' libnvidia-ml1").stdout
    assert version.startswith("535.")
    upstream = version.split("-")[0]

    # Debian's chain: ld.so's name -> alternatives -> the driver's directory -> real file.
    triplet = "/usr/lib/x86_64-linux-gnu"
    first = debian_host.ssh(f"readlink {triplet}/libnvidia-ml.so.1").stdout.strip()
    assert first == "/etc/alternatives/nvidia--libnvidia-ml.so.1-x86_64-linux-gnu"
    second = debian_host.ssh(f"readlink {first}").stdout.strip()
    assert second == f"{triplet}/nvidia/current/libnvidia-ml.so.1"
    real = debian_host.ssh(f"readlink -f {triplet}/libnvidia-ml.so.1").stdout.strip()
    assert real == f"{triplet}/nvidia/current/libnvidia-ml.so.{upstream}"
    assert debian_host.ssh(f"test -f {real} && ! test -L {real}", check=False).returncode == 0
    assert f"{triplet}/libnvidia-ml.so.1" in debian_host.ssh("ldconfig -p").stdout.replace(
        "/lib/x86_64-linux-gnu", triplet
    )
    # Without a kernel module the tools say so, and the host's private /dev took the node.
    smi = debian_host.ssh("nvidia-smi", check=False)
    assert smi.returncode != 0
    assert "couldn't communicate with the NVIDIA driver" in smi.stdout + smi.stderr


def test_toolkit_stand_ins_install_with_apt_from_a_local_directory(
    debian_host: DebianHost, toolkit_package_dir: Path
) -> None:
    shutil.copytree(toolkit_package_dir, debian_host.root / "opt" / "gpunode-toolkit")
    debian_host.ssh(
        "echo 'deb [trusted=yes] file:/opt/gpunode-toolkit ./' > /etc/apt/sources.list.d/gpunode-toolkit.list"
    )
    # Only the local source is read: no network needed for this install.
    debian_host.ssh(
        "apt-get update -q -o Dir::Etc::sourcelist=sources.list.d/gpunode-toolkit.list"
        " -o Dir::Etc::sourceparts=- -o APT::Get::List-Cleanup=0"
    )
    debian_host.ssh(f"{APT_ENV} apt-get install -y -q nvidia-container-toolkit={TOOLKIT_VERSION}")

    status = debian_host.ssh(
        "dpkg-query -W -f '${Package} ${Version} ${db:Status-Abbrev}\\n' " + " ".join(PACKAGE_NAMES)
    ).stdout.splitlines()
    assert sorted(status) == sorted(f"{name} {TOOLKIT_VERSION} ii " for name in PACKAGE_NAMES)
    assert "Status: install ok installed" in debian_host.ssh("dpkg -s nvidia-container-toolkit").stdout

    for path in (
        "nvidia-container-runtime",
        "nvidia-ctk",
        "nvidia-cdi-hook",
        "nvidia-container-runtime-hook",
        "nvidia-container-cli",
    ):
        assert debian_host.ssh(f"test -x /usr/bin/{path}", check=False).returncode == 0, path
    assert debian_host.ssh("nvidia-ctk --version").stdout.splitlines()[0] == (
        "NVIDIA Container Toolkit CLI version 1.17.8"
    )
    runtime = debian_host.ssh("nvidia-container-runtime --version").stdout
    assert runtime.startswith("NVIDIA Container Runtime version 1.17.8\n")
    assert "runc version" in runtime  # it handed --version on to runc, as the real one does
    assert "cli-version: 1.17.8" in debian_host.ssh("nvidia-container-cli --version").stdout
    lib = debian_host.ssh("readlink /usr/lib/x86_64-linux-gnu/libnvidia-container.so.1").stdout
    assert lib.strip() == "libnvidia-container.so.1.17.8"
    assert "libnvidia-container.so.1 " in debian_host.ssh("ldconfig -p").stdout
    # The base package's postinst generated the runtime's config (owned by no package).
    config = debian_host.ssh("cat /etc/nvidia-container-runtime/config.toml").stdout
    assert 'runtimes = ["docker-runc", "runc", "crun"]' in config
    # The runtime is a working OCI runtime front: runc's own answer comes back through it.
    assert debian_host.ssh("nvidia-container-runtime list").stdout.split()[:2] == ["ID", "PID"]


# --- pyinfra and testinfra over SSH ----------------------------------------------------------


def test_pyinfra_connects_over_ssh_and_runs_an_operation(debian_host: DebianHost, tmp_path: Path) -> None:
    # The API's inventory form, with the host data that needs no ssh config file.
    inventory = tmp_path / "inventory.py"
    inventory.write_text(f"hosts = [({debian_host.name!r}, {debian_host.pyinfra_host_data!r})]\n")
    run = subprocess.run(
        [
            str(VENV_BIN / "pyinfra"),
            "-y",
            str(inventory),
            "server.shell",
            "commands=echo pyinfra-was-here > /root/pyinfra-marker",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert (debian_host.root / "root" / "pyinfra-marker").read_text() == "pyinfra-was-here\n"

    # The CLI form: the host spec resolved through the host's ssh config file.
    fact = subprocess.run(
        [
            str(VENV_BIN / "pyinfra"),
            "-y",
            "--data",
            f"ssh_config_file={debian_host.ssh_config_path}",
            debian_host.pyinfra_host_spec,
            "fact",
            "server.Hostname",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert fact.returncode == 0, fact.stdout + fact.stderr
    assert f'"{debian_host.pyinfra_host_spec}": "{debian_host.name}"' in fact.stdout + fact.stderr


def test_testinfra_connects_with_the_ssh_config(debian_host: DebianHost, tmp_path: Path) -> None:
    suite = tmp_path / "test_remote.py"
    suite.write_text(
        textwrap.dedent(
            """\
            import os

            def test_remote(host):
                assert host.check_output("hostname") == os.environ["EXPECTED_HOSTNAME"]
                assert host.system_info.distribution == "debian"
                assert host.system_info.codename == "bookworm"
                assert host.package("openssh-server").is_installed
                assert host.file("/usr/bin/containerd").exists
            """
        )
    )
    env = {**os.environ, "EXPECTED_HOSTNAME": debian_host.name}
    # Both forms in one run: the alias with --ssh-config, and the self-contained URL.
    hosts = f"ssh://{debian_host.ssh_alias},{debian_host.testinfra_host_spec}"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-c",
            os.devnull,
            "--rootdir",
            str(tmp_path),
            f"--hosts={hosts}",
            f"--ssh-config={debian_host.ssh_config_path}",
            str(suite),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 passed" in run.stdout


# --- containerd as a plain process -----------------------------------------------------------


def test_containerd_runs_in_the_host_as_a_plain_process(debian_host: DebianHost) -> None:
    assert debian_host.containerd_pid() is None
    pid = debian_host.start_containerd()
    assert debian_host.containerd_pid() == pid
    dump = debian_host.ssh("containerd config dump").stdout
    assert "version = 2" in dump
    assert 'plugins."io.containerd.grpc.v1.cri"' in dump
    assert "Server:" in debian_host.ssh("ctr version").stdout
    plugins = debian_host.ssh("ctr plugins ls").stdout
    cri = [line for line in plugins.splitlines() if "io.containerd.grpc.v1" in line and " cri " in line]
    assert cri and cri[0].split()[-1] == "ok", plugins  # CRI loads: its snapshotter works here
    # A broken config is caught by `config dump`, as the bootstrap's validation expects.
    debian_host.ssh("cp /etc/containerd/config.toml /root/config.toml.good")
    debian_host.ssh("echo 'this is = = not toml' >> /etc/containerd/config.toml")
    assert debian_host.ssh("containerd config dump", check=False).returncode != 0
    debian_host.ssh("cp /root/config.toml.good /etc/containerd/config.toml")

    debian_host.stop_containerd()
    assert debian_host.containerd_pid() is None
    assert debian_host.ssh("ctr --connect-timeout 1s version", check=False).returncode != 0
    again = debian_host.start_containerd()
    assert again != pid


# --- isolation and clean-up ------------------------------------------------------------------


def test_two_hosts_at_once_do_not_interfere(
    start_hosts: Callable[..., list[DebianHost]],
) -> None:
    first, second = start_hosts(2, name_prefix="pair")
    assert (first.name, second.name) == ("pair-1", "pair-2")
    assert first.ssh_port != second.ssh_port
    assert first.ssh("hostname").stdout.strip() == "pair-1"
    assert second.ssh("hostname").stdout.strip() == "pair-2"
    assert first.pid_namespace != second.pid_namespace
    assert first.ssh("cat /etc/machine-id").stdout != second.ssh("cat /etc/machine-id").stdout
    assert (
        first.ssh("cat /etc/ssh/ssh_host_ed25519_key.pub").stdout
        != second.ssh("cat /etc/ssh/ssh_host_ed25519_key.pub").stdout
    )

    first.ssh("echo only-here > /etc/gpunode-marker")
    assert second.ssh("test -e /etc/gpunode-marker", check=False).returncode == 1
    # One host's dpkg lock does not hold the other's package manager.
    first.exec("flock /var/lib/dpkg/lock-frontend sleep 30 >/dev/null 2>&1 &")
    time.sleep(0.2)
    assert first.ssh("flock -n /var/lib/dpkg/lock-frontend true", check=False).returncode == 1
    assert second.ssh("flock -n /var/lib/dpkg/lock-frontend true").returncode == 0
    # A key of one host does not open the other.
    foreign = second.workdir / "ssh_config.foreign"
    foreign.write_text(second.ssh_config_path.read_text().replace(str(second.ssh_key), str(first.ssh_key)))
    assert subprocess.run(["ssh", "-F", str(foreign), second.ssh_alias, "true"], capture_output=True).returncode == 255


def test_stop_leaves_no_process_mount_or_directory_behind(cache_dir: Path) -> None:
    host = start_debian_host(cache_dir, name="leak-check")
    host.start_containerd()
    host.ssh("nohup sleep 1000 >/dev/null 2>&1 &")
    host.exec("mount -t tmpfs extra /mnt")
    pid_ns = host.pid_namespace
    mnt_ns = os.readlink(f"/proc/{host.init_pid}/ns/mnt")
    workdir = host.workdir
    assert len(_processes_in_namespace("pid", pid_ns)) >= 3  # sshd, containerd, sleep
    assert str(workdir) not in _mount_targets()  # the host's mounts were never ours

    host.stop()
    host.stop()  # twice is fine
    assert not host.running
    assert _processes_in_namespace("pid", pid_ns) == []
    assert _processes_in_namespace("mnt", mnt_ns) == []
    assert str(workdir) not in _mount_targets()
    assert subprocess.run(["pgrep", "-f", str(workdir)], capture_output=True).returncode == 1
    assert not workdir.exists()


def test_a_failing_test_still_stops_its_host(cache_dir: Path) -> None:
    with pytest.raises(RuntimeError, match="the test failed"):
        with start_debian_host(cache_dir, name="fails") as host:
            pid_ns, workdir = host.pid_namespace, host.workdir
            raise RuntimeError("the test failed")
    assert _processes_in_namespace("pid", pid_ns) == []
    assert not workdir.exists()


def test_a_killed_test_process_takes_its_host_with_it(cache_dir: Path, tmp_path: Path) -> None:
    script = tmp_path / "owner.py"
    script.write_text(
        textwrap.dedent(
            f"""\
            import sys, time
            from pathlib import Path
            sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
            from standins.debian_host import start_debian_host
            host = start_debian_host(Path({str(cache_dir)!r}), name="orphan")
            print(host.pid_namespace, host.workdir, flush=True)
            time.sleep(600)
            """
        )
    )
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    pid_ns, workdir = owner.stdout.readline().split()
    assert _processes_in_namespace("pid", pid_ns)
    owner.send_signal(signal.SIGKILL)  # no finally, no atexit: only the kernel acts
    owner.wait()
    deadline = time.monotonic() + 10
    while _processes_in_namespace("pid", pid_ns) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_in_namespace("pid", pid_ns) == []
    # Its directory is swept by the next start.
    assert Path(workdir).exists()
    start_debian_host(cache_dir, name="sweeper").stop()
    assert not Path(workdir).exists()


def test_a_loaded_nvidia_module_can_be_shown_to_the_host_and_taken_away(
    debian_host: DebianHost,
) -> None:
    debian_host.set_loaded_nvidia_module("535.309.01")
    assert debian_host.ssh("cat /sys/module/nvidia/version").stdout == "535.309.01\n"
    if Path("/proc/modules").exists():  # a kernel without module support has none
        assert debian_host.ssh("lsmod | awk '$1 == \"nvidia\"'").stdout.startswith("nvidia ")
    else:
        assert debian_host.ssh("test -e /proc/modules", check=False).returncode == 1
    driver = debian_host.ssh("cat /proc/driver/nvidia/version").stdout
    assert driver.startswith("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.309.01  ")
    assert debian_host.ssh("test -d /sys/module/kernel").returncode == 0  # the rest is real
    assert not Path("/sys/module/nvidia").exists()  # the machine's kernel is untouched

    debian_host.set_loaded_nvidia_module("550.163.01")  # after a "reboot" into a new driver
    assert debian_host.ssh("cat /sys/module/nvidia/version").stdout == "550.163.01\n"
    debian_host.set_loaded_nvidia_module(None)
    assert debian_host.ssh("test -e /sys/module/nvidia", check=False).returncode == 1
    assert "nvidia" not in debian_host.ssh("cat /proc/modules", check=False).stdout
    with pytest.raises(ValueError, match="not a driver version"):
        debian_host.set_loaded_nvidia_module("535; reboot")


def test_files_put_into_the_host_arrive_byte_for_byte(debian_host: DebianHost) -> None:
    payload = bytes(range(256)) + "é\n$(reboot);'\"".encode()
    debian_host.put_file("/etc/gpunode test/odd name.bin", payload, mode=0o600)
    listing = debian_host.ssh("stat -c '%a %U %s' '/etc/gpunode test/odd name.bin'").stdout.split()
    assert listing == ["600", "root", str(len(payload))]
    assert (debian_host.root / "etc/gpunode test/odd name.bin").read_bytes() == payload
