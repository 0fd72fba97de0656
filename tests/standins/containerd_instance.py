"""A private containerd for the tests: Debian's containerd and runc, with a root, state and
socket of its own in a temporary directory, never the system's service.

It runs containers the way the kubelet's runtime would (runc v2 shim, overlayfs snapshots)
and is driven with `ctr`. The CRI plugin is left out: nothing here speaks CRI (the tests
translate pod specs themselves, see pod_translation.py), and without it containerd never
asks for a negative oom_score_adj, which this machine refuses. Were CRI wanted, it would
need `restrict_oom_score_adj = true` in its section.

    with ContainerdInstance(short_dir) as containerd:
        containerd.ctr("images", "import", "image.tar")
        task = containerd.run(image, "name", ["--net-host"], ["python", "-V"], log_path)
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType

NAMESPACE = "gpunode-test"

_CONFIG = """\
version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"
"""


class ContainerdInstance:
    def __init__(self, workdir: Path) -> None:
        # Unix socket paths are limited to 107 bytes: keep `workdir` short.
        self.workdir = workdir
        self.socket = workdir / "containerd.sock"
        self.config = workdir / "config.toml"
        self.log_path = workdir / "containerd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        for tool in ("containerd", "ctr", "runc", "containerd-shim-runc-v2"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"{tool} is missing: install containerd and runc (tests/run does)")
        (self.workdir / "root").mkdir(parents=True, exist_ok=True)
        (self.workdir / "state").mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            _CONFIG.format(root=self.workdir / "root", state=self.workdir / "state", socket=self.socket)
        )
        log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            ["containerd", "--config", str(self.config)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"containerd exited ({self.proc.returncode}):\n{self.log_path.read_text()[-3000:]}")
            if self.socket.exists() and self.ctr("version", check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"containerd did not answer within {timeout} s:\n{self.log_path.read_text()[-3000:]}")

    def ctr(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["ctr", "--address", str(self.socket), "--namespace", NAMESPACE, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def run(self, image: str, name: str, flags: list[str], argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
        """`ctr run` in the foreground: the returned process ends with the container's exit code."""
        log = log_path.open("w")
        try:
            return subprocess.Popen(
                ["ctr", "--address", str(self.socket), "--namespace", NAMESPACE, "run", "--rm", *flags, image, name]
                + argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()

    def kill(self, name: str, sig: str = "SIGTERM") -> None:
        self.ctr("task", "kill", "--signal", sig, name)

    def remove(self, name: str) -> None:
        """Whatever is left of container `name` (a test that failed half way)."""
        self.ctr("task", "kill", "--signal", "SIGKILL", name, check=False)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.ctr("task", "delete", name, check=False).returncode == 0 or "not found" in (
                self.ctr("task", "ls", check=False).stdout
            ):
                break
            if name not in self.ctr("task", "ls", check=False).stdout:
                break
            time.sleep(0.2)
        self.ctr("containers", "delete", name, check=False)

    def stop(self) -> None:
        if self.proc is None:
            return
        for line in self.ctr("task", "ls", check=False).stdout.splitlines()[1:]:
            if line.split():
                self.remove(line.split()[0])
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def __enter__(self) -> ContainerdInstance:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
