"""Run a pod's container as a local process: the kubelet half that tests wire to the hooks.

    runner = PodProcessRunner(api, workdir)      # registers on_pod_created/on_pod_deleted
    ... kubectl apply a DaemonSet whose container command is a real program ...
    runner.stop_all()

For each bound pod (optionally only those `select(pod)` accepts) the first container's
command + args run with its env (plain values, and fieldRef spec.nodeName /
metadata.name / metadata.namespace), through `rewrite(pod, argv, env)` so a harness can
map hostPath volumes to paths of its own. Its output becomes `kubectl logs`; the pod is
Running and Ready once `ready(pod, process)` says so (default: started); a process that
exits reports CrashLoopBackOff (restartPolicy Always) or Succeeded/Failed; deleting the
pod stops the process (SIGTERM, then SIGKILL after the grace period).
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable

from .standin import KubeApiStandIn

JSON = dict[str, Any]
Rewrite = Callable[[JSON, list[str], dict[str, str]], tuple[list[str], dict[str, str]]]


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


class PodProcessRunner:
    def __init__(self, api: KubeApiStandIn, workdir: Path,
                 select: Callable[[JSON], bool] | None = None,
                 rewrite: Rewrite | None = None,
                 ready: Callable[[JSON, subprocess.Popen[bytes]], bool] | None = None,
                 grace_seconds: float = 2.0) -> None:
        self.api = api
        self.workdir = workdir
        self.select = select or (lambda pod: True)
        self.rewrite = rewrite
        self.ready = ready or (lambda pod, proc: proc.poll() is None)
        self.grace_seconds = grace_seconds
        self.processes: dict[tuple[str, str], subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        api.on_pod_created(self._start)
        api.on_pod_deleted(self._stop)

    def _start(self, pod: JSON) -> None:
        if not self.select(pod):
            return
        meta = pod["metadata"]
        key = (meta["namespace"], meta["name"])
        container = pod["spec"]["containers"][0]
        argv = [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **container_env(pod, container)}
        if self.rewrite is not None:
            argv, env = self.rewrite(pod, argv, env)
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            proc = subprocess.Popen(argv, env=env, cwd=self.workdir, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            self.api.set_pod_phase(key[0], key[1], "Pending",
                                   waiting_reason="RunContainerError", message=str(exc))
            return
        with self._lock:
            self.processes[key] = proc
        threading.Thread(target=self._follow, args=(pod, proc), daemon=True,
                         name=f"pod-{key[1]}").start()

    def _follow(self, pod: JSON, proc: subprocess.Popen[bytes]) -> None:
        meta = pod["metadata"]
        ns, name = meta["namespace"], meta["name"]
        container = pod["spec"]["containers"][0]["name"]
        self.api.set_pod_logs(ns, name, "", container)
        reported_ready = False
        pipe = proc.stdout
        assert pipe is not None
        reader = threading.Thread(target=self._pump, args=(ns, name, container, pipe),
                                  daemon=True)
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
            self.api.set_pod_phase(ns, name, "Running", waiting_reason="CrashLoopBackOff",
                                   restart_count=1, exit_code=code)
        else:
            self.api.set_pod_phase(ns, name, "Succeeded" if code == 0 else "Failed",
                                   exit_code=code)

    def _pump(self, ns: str, name: str, container: str, pipe: Any) -> None:
        for line in iter(pipe.readline, b""):
            try:
                self.api.append_pod_logs(ns, name, line.decode(errors="replace"), container)
            except Exception:  # noqa: BLE001 - the stand-in stopped under us
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
