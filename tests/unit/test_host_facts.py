"""Reading a host snapshot: the parser against the script's real output and crafted sections."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest

from gpunode.bootstrap.core.host.facts import SnapshotError, parse_snapshot
from gpunode.bootstrap.node.snapshot import snapshot_command


def b64(path: str, text: str) -> str:
    return f"{path} {base64.b64encode(text.encode()).decode()}"


def test_this_machine_reads_as_a_debian_host_without_gpus() -> None:
    command = snapshot_command("/etc/containerd/config.toml", ("/etc/hostname", "/no/such/file"))
    result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True)
    facts = parse_snapshot(result.stdout)
    assert facts.os.id == "debian"
    assert facts.arch == subprocess.run(["uname", "-m"], capture_output=True, text=True).stdout.strip()
    assert facts.gpus == ()
    assert facts.package_manager == "dpkg"
    assert "/no/such/file" not in facts.managed_files
    assert facts.managed_file("/etc/hostname") == open("/etc/hostname").read()
    assert facts.nvml.arch == facts.arch


def test_a_base64_without_the_wrap_option_reads_the_same(tmp_path: Path) -> None:
    """busybox's base64 has no -w: the snapshot falls back to `base64 | tr` and reads the same."""
    shim = tmp_path / "base64"
    real = subprocess.run(["sh", "-c", "command -v base64"], capture_output=True, text=True).stdout.strip()
    shim.write_text(
        f'#!/bin/sh\nfor a; do case $a in -w*) echo "base64: unrecognized option: w" >&2; exit 1;; esac; done\n'
        f'exec {real} "$@"\n'
    )
    shim.chmod(0o755)
    command = snapshot_command("/etc/containerd/config.toml", ("/etc/hostname", "/etc/os-release"))
    plain = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True).stdout
    env = {"PATH": f"{tmp_path}:/usr/sbin:/usr/bin:/sbin:/bin"}
    shimmed = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True, env=env).stdout
    assert parse_snapshot(shimmed).managed_files == parse_snapshot(plain).managed_files
    assert parse_snapshot(shimmed).managed_file("/etc/os-release") == open("/etc/os-release").read()


CRAFTED = "\n".join(
    [
        "@@hostname",
        "GPU01",
        "@@uname",
        "6.1.0-28-amd64",
        "x86_64",
        "@@os_release",
        b64("/etc/os-release", 'ID=debian\nVERSION_ID="12"\nVERSION_CODENAME=bookworm\n'),
        "@@init",
        "systemd",
        "@@pci",
        "0000:3b:00.0 0x20b5 0x030200",
        "0000:3b:00.1 0x1aef 0x040300",  # the GPU's audio function: not a GPU
        "0000:86:00.0 0x20b5 0x030200",
        "0000:a0:00.0 0x1af1 0x068000",  # an NVSwitch bridge: not a GPU
        "@@lspci",
        '0000:3b:00.0 "3D controller" "NVIDIA Corporation" "GA100 [A100 PCIe 80GB]" -ra1 "NVIDIA Corporation" "Device 1533"',
        "@@modules",
        "nvidia",
        "nouveau",
        "@@secure_boot",
        "efivar 6 0 0 0 1",
        "@@modprobe_nouveau",
        "/etc/modprobe.d/blacklist-nvidia-nouveau.conf",
        "@@initramfs",
        "update-initramfs",
        "@@nvml",
        "gpunode-nvml-probe 1",
        "arch\tx86_64",
        "module\t535.261.03",
        "ldconfig-status\t0",
        "end",
        "@@packages",
        "dpkg",
        "libnvidia-ml1\t535.261.03-1\tamd64\tii ",
        "libnvidia-ml1\t535.261.03-1\ti386\tii ",
        "nvidia-smi\t535.261.03-1\tamd64\trc ",
        "@@toolkit_runtime",
        "/usr/bin/nvidia-container-runtime",
        "@@containerd",
        "/usr/bin/containerd",
        "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1",
        "@@containerd_config_path",
        "/etc/containerd/config.toml",
        "@@containerd_config",
        b64("/etc/containerd/config.toml", "version = 2\n"),
        "@@containerd_dump",
        "0 " + base64.b64encode(b"version = 2\n[plugins]\n").decode(),
        "@@k3s",
        "@@kubelet",
        "process kubelet",
        "arg /usr/bin/kubelet",
        "arg --hostname-override",
        "arg GPU01.Example",
        "arg --root-dir=/data/kubelet",
        "root /data/kubelet",
        "@@device_plugins",
        "socket /data/kubelet/device-plugins/kubelet.sock",
        "file /data/kubelet/device-plugins/kubelet_internal_checkpoint",
        "@@apt_sources",
        b64("/etc/apt/sources.list", "deb http://deb.debian.org/debian bookworm main\n"),
        "@@managed_files",
        b64("/var/lib/gpunode/state.json", "{}\n"),
        "@@uploads",
        "abc123  /var/lib/gpunode/packages/toolkit/a.deb",
        "@@plugin_venv",
        "dist gpunode-0.1.0.dist-info",
        "python3 /usr/bin/python3",
        "venv-package installed",
        "unit-active active",
        "@@end",
    ]
)


def test_crafted_snapshot_parses_every_section() -> None:
    facts = parse_snapshot(CRAFTED)
    assert [gpu.bus_id for gpu in facts.gpus] == ["0000:3b:00.0", "0000:86:00.0"]
    assert facts.gpus[0].name == "GA100 [A100 PCIe 80GB]"
    assert facts.gpus[1].name == "NVIDIA device 0x20b5"
    assert facts.secure_boot is True
    assert facts.loaded_modules == {"nvidia", "nouveau"}
    assert facts.module_version == "535.261.03"
    assert facts.packages == {"libnvidia-ml1": "535.261.03-1"}, "i386 copies and removed packages do not count"
    assert facts.containerd.config_text == "version = 2\n"
    assert facts.containerd.dump_text == "version = 2\n[plugins]\n"
    assert facts.kubelet.root_dir == "/data/kubelet"
    assert facts.node_name == "gpu01.example"
    assert facts.kubelet.device_plugin_sockets == ("/data/kubelet/device-plugins/kubelet.sock",)
    assert facts.has_systemd
    assert facts.uploads == {"/var/lib/gpunode/packages/toolkit/a.deb": "abc123"}
    assert facts.plugin_venv.installed_version == "0.1.0"
    assert facts.plugin_venv.unit_active == "active"


def test_a_failed_config_dump_is_kept_as_the_error() -> None:
    text = CRAFTED.replace(
        "0 " + base64.b64encode(b"version = 2\n[plugins]\n").decode(),
        "1 " + base64.b64encode(b"containerd: failed to load TOML: (3, 1): unexpected token").decode(),
    )
    facts = parse_snapshot(text)
    assert facts.containerd.dump_text is None
    assert facts.containerd.dump_error is not None and "unexpected token" in facts.containerd.dump_error


def test_a_cut_off_snapshot_is_an_error_not_an_empty_host() -> None:
    with pytest.raises(SnapshotError):
        parse_snapshot(CRAFTED.split("@@end")[0])
