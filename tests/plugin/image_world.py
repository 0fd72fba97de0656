"""The plugin image's world for tests and benchmarks: a node with a host-like NVML library
chain, fake GPUs, a kubelet stand-in, and the DaemonSet `gpunode render` prints for it, run
in a private containerd (standins/containerd_instance.py) through pod_translation.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from conftest import test_cache_dir
from standins.containerd_instance import ContainerdInstance
from standins.fake_nvml import FakeNvml, FakeNvmlConfig
from standins.kubelet import KubeletStandIn
from standins.pod_translation import translate

CONSOLE_SCRIPT = Path(sys.executable).parent / "gpunode"
DRIVER = "535.261.03"
IMAGE_EPOCH = "1765000000"  # SOURCE_DATE_EPOCH: two builds of one checkout give one image


def gpunode_version() -> str:
    from importlib.metadata import version

    return version("gpunode")


def run_image_build(*options: str) -> subprocess.CompletedProcess[str]:
    """`gpunode image build OPTIONS` as the image tests run it: the Debian base from the test
    cache (one `plugin-image` directory for the plugin and the agent image: the same base) and
    a fixed SOURCE_DATE_EPOCH."""
    return subprocess.run(
        [str(CONSOLE_SCRIPT), "image", "build", *options, "--cache-dir", str(test_cache_dir() / "plugin-image")],
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "SOURCE_DATE_EPOCH": IMAGE_EPOCH},
    )


@contextmanager
def containerd_with_image(archive: Path) -> Iterator[ContainerdInstance]:
    """A private containerd with the image archive imported; stopped and removed afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix="gpn-ctd-", dir="/tmp"))
    instance = ContainerdInstance(workdir)
    instance.start()
    try:
        instance.ctr("images", "import", str(archive))
        yield instance
    finally:
        instance.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def host_library_chain(root: Path, library_dir: Path) -> Path:
    """A Debian-like chain: libnvidia-ml.so.1 -> alternatives -> nvidia/current/... -> the versioned file."""
    multiarch = root / "usr/lib/x86_64-linux-gnu"
    current = multiarch / "nvidia/current"
    current.mkdir(parents=True)
    real = current / f"libnvidia-ml.so.{DRIVER}"
    shutil.copyfile(library_dir / "libnvidia-ml.so.1", real)
    (current / "libnvidia-ml.so.1").symlink_to(real.name)
    alternatives = root / "etc/alternatives"
    alternatives.mkdir(parents=True)
    (alternatives / "nvidia--libnvidia-ml.so.1-x86_64-linux-gnu").symlink_to(current / "libnvidia-ml.so.1")
    (multiarch / "libnvidia-ml.so.1").symlink_to(alternatives / "nvidia--libnvidia-ml.so.1-x86_64-linux-gnu")
    return multiarch / "libnvidia-ml.so.1"


def rendered_daemonset(lib_path: Path, kubelet_root: Path, *extra: str) -> dict[str, Any]:
    result = subprocess.run(
        [str(CONSOLE_SCRIPT), "render", "--lib-path", str(lib_path), "--kubelet-root", str(kubelet_root), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    (daemonset,) = [d for d in yaml.safe_load_all(result.stdout) if d and d["kind"] == "DaemonSet"]
    return daemonset


class ImageWorld:
    """One test's node: the library chain, the fake GPUs, a kubelet stand-in, the manifest."""

    def __init__(self, root: Path, library_dir: Path, containerd: ContainerdInstance) -> None:
        self.root = root
        self.containerd = containerd
        self.link = host_library_chain(root / "host", library_dir)
        self.nvml = FakeNvml(root / "gpu", library_dir, FakeNvmlConfig.uniform(2, driver_version=DRIVER))
        self.kubelet = KubeletStandIn(root / "kubelet" / "device-plugins")
        self.kubelet.start()
        self.names: list[str] = []

    def daemonset(self) -> dict[str, Any]:
        # What bootstrap does on a node: resolve the chain to the real file, render with it.
        return rendered_daemonset(self.link.resolve(), self.root / "kubelet")

    def gpu_flags(self) -> list[str]:
        return [
            "--env",
            f"FAKE_NVML_CONFIG={self.nvml.config_path}",
            "--env",
            f"FAKE_NVML_EVENTS={self.nvml.events_path}",
            "--mount",
            f"type=bind,src={self.nvml.workdir},dst={self.nvml.workdir},options=rbind:ro",
        ]

    def run(self, spec: dict[str, Any], name: str) -> tuple[subprocess.Popen[bytes], Path]:
        translated = translate(spec, self.root / "scratch")
        log = self.root / f"{name}.log"
        self.names.append(name)
        proc = self.containerd.run(translated.image, name, translated.flags + self.gpu_flags(), translated.argv, log)
        return proc, log

    def close(self) -> None:
        for name in self.names:
            self.containerd.remove(name)
        self.kubelet.stop()


def wait_exit(proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the container did not exit within {timeout} s:\n{log.read_text()}") from None
