"""Run a pod's container as a local process: the kubelet half that tests wire to the hooks.

    runner = PodProcessRunner(api, workdir, host_paths={...})  # registers both pod hooks
    ... kubectl apply a DaemonSet whose container command is a real program ...
    runner.stop_all()

For each bound pod (those `select(pod)` accepts) the first container's command + args run
as a process with the container's env (plain values; fieldRef spec.nodeName,
metadata.name, metadata.namespace), `extra_env` on top, and PATH starting with this
Python's bin directory (where `gpunode` is installed), as an image's PATH would.

Volumes, as the kubelet mounts them: the pod gets a root directory where each hostPath
volumeMount is a symlink at its mountPath to the volume's host path, or to what
`host_paths` maps that host path to (so a test maps
/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.<v> to its fake library, and
/var/lib/kubelet/device-plugins to its kubelet stand-in's directory). Env values that are
absolute paths at, under or above a mountPath are translated into that root (so
LD_LIBRARY_PATH=/usr/local/lib finds the mounted libnvidia-ml.so.1). A hostPath whose
`type` (File, Directory, Socket...) does not match what is there fails like the kubelet:
the pod stays ContainerCreating with a FailedMount event (F2, docs/failure-modes.md).

Two hooks let a test play a node's container runtime in more detail (both optional):
`resolve_host_path(pod, host_path)` maps a hostPath per pod (None: `host_paths`, then the
path itself), e.g. to check a library path against the pod's own test host;
`pod_env(pod)` returns extra environment for one pod (what a device plugin's Allocate or
the NVIDIA runtime would add) or raises ContainerStartError(reason, message) for a
container the runtime cannot start (ErrImagePull, CreateContainerError ...): the pod then
stays Pending with that waiting reason and a Failed event, as with a real kubelet.

The pod is Running and Ready once `ready(pod, process)` says so (default: started); its
output becomes `kubectl logs`; a process that exits reports CrashLoopBackOff
(restartPolicy Always) or Succeeded/Failed; deleting the pod stops the process (SIGTERM,
then SIGKILL after the grace period).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .standin import KubeApiStandIn

JSON = dict[str, Any]

# hostPath types and what must be at the path (the "OrCreate" ones are made if missing).
_HOSTPATH_CHECKS: dict[str, tuple[str, Callable[[int], bool]]] = {
    "File": ("is not a file", stat.S_ISREG),
    "Directory": ("is not a directory", stat.S_ISDIR),
    "Socket": ("is not a socket file", stat.S_ISSOCK),
    "CharDevice": ("is not a character device", stat.S_ISCHR),
    "BlockDevice": ("is not a block device", stat.S_ISBLK),
}


def _field_ref(pod: JSON, path: str) -> str:
    cur: Any = pod
    for part in path.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return "" if cur is None else str(cur)


def container_env(pod: JSON, container: JSON) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:
            ref = ((item.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
            if ref:
                env[item["name"]] = _field_ref(pod, ref)
    return env


class ContainerStartError(Exception):
    """The container runtime could not start the pod's container (see `pod_env`)."""

    def __init__(self, reason: str, message: str, event: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.event = event  # a Failed event recorded before the waiting state, if given


class MountError(Exception):
    """A hostPath volume the kubelet would refuse to mount."""

    def __init__(self, volume: str, message: str) -> None:
        super().__init__(message)
        self.volume = volume


class PodProcessRunner:
    def __init__(
        self,
        api: KubeApiStandIn,
        workdir: Path,
        select: Callable[[JSON], bool] | None = None,
        host_paths: Mapping[str, Path] | None = None,
        extra_env: Mapping[str, str] | None = None,
        ready: Callable[[JSON, subprocess.Popen[bytes]], bool] | None = None,
        grace_seconds: float = 2.0,
        resolve_host_path: Callable[[JSON, str], Path | None] | None = None,
        pod_env: Callable[[JSON], Mapping[str, str]] | None = None,
    ) -> None:
        self.api = api
        self.workdir = workdir
        self.select = select or (lambda pod: True)
        self.host_paths = dict(host_paths or {})
        self.extra_env = dict(extra_env or {})
        self.ready = ready or (lambda pod, proc: proc.poll() is None)
        self.grace_seconds = grace_seconds
        self.resolve_host_path = resolve_host_path
        self.pod_env = pod_env
        self.processes: dict[tuple[str, str], subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._counter = 0
        api.on_pod_created(self._start)
        api.on_pod_deleted(self._stop)

    # Volumes ---------------------------------------------------------------------------

    def _mount(self, pod: JSON, container: JSON, root: Path) -> list[str]:
        """Make the pod's hostPath mounts under `root`; returns the mount paths."""
        volumes = {
            v["name"]: v["hostPath"] for v in pod["spec"].get("volumes") or [] if isinstance(v.get("hostPath"), dict)
        }
        mount_paths = []
        for mount in container.get("volumeMounts") or []:
            source = volumes.get(mount.get("name"))
            if source is None:
                continue
            host_path = str(source.get("path", ""))
            resolved = self.resolve_host_path(pod, host_path) if self.resolve_host_path else None
            target = resolved if resolved is not None else Path(self.host_paths.get(host_path, host_path))
            kind = source.get("type") or ""
            if kind in ("FileOrCreate", "DirectoryOrCreate") and not target.exists():
                if kind == "FileOrCreate":
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.touch()
                else:
                    target.mkdir(parents=True, exist_ok=True)
            if kind in _HOSTPATH_CHECKS:
                what, check = _HOSTPATH_CHECKS[kind]
                try:
                    ok = check(target.stat().st_mode)
                except OSError:
                    ok = False
                if not ok:
                    raise MountError(mount["name"], f"hostPath type check failed: {host_path} {what}")
            link = root / str(mount["mountPath"]).lstrip("/")
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(target)
            mount_paths.append(str(mount["mountPath"]).rstrip("/"))
        return mount_paths

    @staticmethod
    def _translate(value: str, root: Path, mount_paths: list[str]) -> str:
        def one(path: str) -> str:
            if not path.startswith("/"):
                return path
            clean = path.rstrip("/") or "/"
            for mount in mount_paths:
                if clean == mount or clean.startswith(mount + "/") or mount.startswith(clean + "/"):
                    return str(root) + clean
            return path

        return ":".join(one(part) for part in value.split(":"))

    # Lifecycle -------------------------------------------------------------------------

    def _start(self, pod: JSON) -> None:
        if not self.select(pod):
            return
        meta = pod["metadata"]
        key = (meta["namespace"], meta["name"])
        container = pod["spec"]["containers"][0]
        with self._lock:
            self._counter += 1
            root = self.workdir / f"pod{self._counter}"  # short: unix socket paths are too
        root.mkdir(parents=True, exist_ok=True)
        try:
            mount_paths = self._mount(pod, container, root)
        except MountError as exc:
            self.api.add_event(
                key[0], "Pod", key[1], "FailedMount", f'MountVolume.SetUp failed for volume "{exc.volume}" : {exc}'
            )
            return  # the pod stays ContainerCreating, as with a real kubelet
        argv = [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]
        env = {"PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/bin:/bin")])}
        for name, value in container_env(pod, container).items():
            env[name] = self._translate(value, root, mount_paths)
        env.update(self.extra_env)
        if self.pod_env is not None:
            try:
                env.update(self.pod_env(pod))
            except ContainerStartError as exc:
                if exc.event:
                    self.api.add_event(key[0], "Pod", key[1], "Failed", exc.event)
                self.api.set_pod_phase(key[0], key[1], "Pending", waiting_reason=exc.reason, message=exc.message)
                return
        try:
            proc = subprocess.Popen(
                argv, env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
            )
        except OSError as exc:
            self.api.set_pod_phase(key[0], key[1], "Pending", waiting_reason="RunContainerError", message=str(exc))
            return
        with self._lock:
            self.processes[key] = proc
        threading.Thread(target=self._follow, args=(pod, proc), daemon=True, name=f"pod-{key[1]}").start()

    def _follow(self, pod: JSON, proc: subprocess.Popen[bytes]) -> None:
        meta = pod["metadata"]
        ns, name = meta["namespace"], meta["name"]
        container = pod["spec"]["containers"][0]["name"]
        self.api.set_pod_logs(ns, name, "", container)
        reported_ready = False
        pipe = proc.stdout
        assert pipe is not None
        reader = threading.Thread(target=self._pump, args=(ns, name, container, pipe), daemon=True)
        reader.start()
        while proc.poll() is None:
            if not reported_ready and self.ready(pod, proc):
                self.api.set_pod_phase(ns, name, "Running", ready=True)
                reported_ready = True
            time.sleep(0.02)
        reader.join(timeout=2)
        with self._lock:
            if self.processes.get((ns, name)) is not proc:
                return  # stopped because the pod was deleted
            del self.processes[(ns, name)]
        code = proc.returncode
        if pod["spec"].get("restartPolicy", "Always") == "Always":
            self.api.set_pod_phase(
                ns, name, "Running", waiting_reason="CrashLoopBackOff", restart_count=1, exit_code=code
            )
        else:
            self.api.set_pod_phase(ns, name, "Succeeded" if code == 0 else "Failed", exit_code=code)

    def _pump(self, ns: str, name: str, container: str, pipe: Any) -> None:
        for line in iter(pipe.readline, b""):
            try:
                self.api.append_pod_logs(ns, name, line.decode(errors="replace"), container)
            except Exception:
                return

    def _stop(self, pod: JSON) -> None:
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        with self._lock:
            proc = self.processes.pop(key, None)
        if proc is not None:
            _terminate(proc, self.grace_seconds)

    def stop_all(self) -> None:
        with self._lock:
            procs = list(self.processes.values())
            self.processes.clear()
        for proc in procs:
            _terminate(proc, self.grace_seconds)


def _terminate(proc: subprocess.Popen[bytes], grace: float) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
