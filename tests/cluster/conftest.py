"""Fixtures for tests that need a Kubernetes API: the stand-in, and the real kubectl.

`kube_api` starts a fresh KubeApiStandIn per test (about 50 ms) and points every kubectl
started by the test at it: KUBECONFIG (for code that runs plain `kubectl`) and
KUBECACHEDIR (kubectl's discovery cache, kept per stand-in so that no test sees another
server's resource types and nothing is written under ~/.kube).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from standins.kube_api import KubeApiStandIn, kubectl_binary

Kubectl = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture(scope="session")
def kubectl_path(cache_dir: Path) -> Path:
    return kubectl_binary(cache_dir)


@pytest.fixture
def kube_api(tmp_path: Path, kubectl_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[KubeApiStandIn]:
    api = KubeApiStandIn(workdir=tmp_path / "kube-api", kubectl=kubectl_path)
    with api:
        monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig_path))
        monkeypatch.setenv("KUBECACHEDIR", str(api.cache_dir))
        yield api
        api.wait_hooks_idle()
    assert not api.hook_errors, "a pod hook raised:\n" + "\n".join(api.hook_errors)


@pytest.fixture
def kubectl(kube_api: KubeApiStandIn) -> Kubectl:
    """kubectl(*args, stdin=None, rc=0): run the real kubectl against the stand-in and
    check its exit code (rc=None: any)."""

    def run(
        *args: str, stdin: str | None = None, rc: int | None = 0, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        result = kube_api.kubectl(*args, stdin=stdin, timeout=timeout)
        if rc is not None and result.returncode != rc:
            raise AssertionError(
                f"kubectl {' '.join(args)} exited {result.returncode}, expected {rc}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    return run
