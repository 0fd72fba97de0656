"""Fixtures for the device plugin tests (imported by the test modules; a conftest.py here would
shadow tests/conftest.py for `from conftest import ...`): the fake NVML library, a kubelet
stand-in, and the plugin itself as a real subprocess (`python -m gpunode.plugin serve ...`)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from standins.fake_nvml import FakeNvml, FakeNvmlConfig, build_fake_nvml
from standins.kubelet import KubeletStandIn

GPU = "nvidia.com/gpu"


@pytest.fixture(scope="session")
def fake_nvml_lib(cache_dir: Path) -> Path:
    return build_fake_nvml(cache_dir)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # Unix socket paths are limited to 107 bytes: pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="gpn-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class PluginProcess:
    """The plugin as the DaemonSet runs it: its own process, configured by flags and env."""

    def __init__(
        self,
        workdir: Path,
        nvml: FakeNvml | None,
        args: list[str],
        env: dict[str, str] | None = None,
        command: tuple[str, ...] = ("-m", "gpunode.plugin", "serve"),
    ) -> None:
        self.log_path = workdir / f"plugin-{time.monotonic_ns()}.log"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUNODE_", "FAKE_NVML_"))}
        full_env.pop("LD_LIBRARY_PATH", None)
        if nvml is not None:
            full_env.update(nvml.env())
        full_env.update(env or {})
        self.started = time.monotonic()
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, *command, *args], env=full_env, stdout=subprocess.DEVNULL, stderr=self._log
        )

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_log(self, text: str, timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log()
            if text in log:
                return log
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"plugin log has no {text!r} (exit code {self.proc.poll()}):\n{self.log()}")

    def terminate(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


class PluginHarness:
    """One test's world: fake GPUs, a kubelet stand-in, plugin processes (all cleaned up)."""

    def __init__(self, root: Path, library: Path) -> None:
        self.root = root
        self.library = library
        self.kubelet_dir = root / "dp"
        self.nvml = FakeNvml(root / "nvml", library, FakeNvmlConfig.uniform(2))
        self.kubelet = KubeletStandIn(self.kubelet_dir)
        self.processes: list[PluginProcess] = []

    def configure(self, config: FakeNvmlConfig) -> None:
        self.nvml.configure(config)

    def start(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        nvml: bool = True,
        kubelet_dir: bool = True,
        command: tuple[str, ...] = ("-m", "gpunode.plugin", "serve"),
    ) -> PluginProcess:
        full = [*(["--kubelet-dir", str(self.kubelet_dir)] if kubelet_dir else []), *args]
        process = PluginProcess(self.root, self.nvml if nvml else None, full, env, command)
        self.processes.append(process)
        return process

    def serve(self, *args: str, resource: str = GPU, env: dict[str, str] | None = None) -> PluginProcess:
        """Start the plugin and wait until the kubelet stand-in has its device list."""
        process = self.start(*args, env=env)
        try:
            self.kubelet.wait_registered(resource, timeout=10)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\nplugin log:\n{process.log()}") from exc
        return process

    def close(self) -> None:
        for process in self.processes:
            process.kill()
        self.kubelet.stop()


@pytest.fixture
def harness(short_dir: Path, fake_nvml_lib: Path) -> Iterator[PluginHarness]:
    world = PluginHarness(short_dir, fake_nvml_lib)
    world.kubelet.start()
    yield world
    world.close()
