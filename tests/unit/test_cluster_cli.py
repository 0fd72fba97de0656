"""Bad input to the cluster options of `gpunode verify` and `gpunode bootstrap`: exit 2 with
the fix, before any cluster or host is contacted."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gpunode.bootstrap.cli.kube_options import kube_access, parse_kube_host
from gpunode.bootstrap.cluster.kubectl import Kubectl
from gpunode.bootstrap.errors import UserError


def gpunode(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpunode.bootstrap.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    "args,words",
    [
        (["verify"], "Missing argument"),
        (["verify", "gpu 01"], "is not a node name"),
        (["verify", "gpu01", "--kube-host", "-oProxyCommand=touch /tmp/x"], "is not a host"),
        (["verify", "gpu01", "--kube-host", "cp1:99999"], "is not a port"),
        (["verify", "gpu01", "--kubeconfig", "/nonexistent/kubeconfig"], "does not exist"),
        (["verify", "gpu01", "--toleration", "a=b:Sometimes"], "is not a taint effect"),
        (["verify", "gpu01", "--expect", "-1"], "-1"),
        (["bootstrap", "gpu01", "--yes", "--image", "Bad Image"], "is not a container image reference"),
        (["bootstrap", "gpu01", "--yes", "--namespace", "Kube_System"], "is not a valid namespace"),
        (["bootstrap", "gpu01", "--yes", "--toleration", "=x"], "is not a taint key"),
        (["bootstrap", "gpu01", "--yes", "--plugin", "other"], "Invalid value for '--plugin'"),
    ],
)
def test_bad_cluster_options_exit_2_with_the_fix(args: list[str], words: str) -> None:
    result = gpunode(*args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert words in result.stderr
    assert "connecting" not in result.stderr


def test_kube_host_parses_like_an_ssh_target() -> None:
    target = parse_kube_host("admin@cp1.example:2222", key=None, config_file=None, known_hosts=None)
    assert (target.user, target.host, target.port) == ("admin", "cp1.example", 2222)  # type: ignore[union-attr]
    assert parse_kube_host("@local", key=None, config_file=None, known_hosts=None) is None
    assert parse_kube_host("cp1", key=None, config_file=None, known_hosts=None, default_user="admin").user == "admin"  # type: ignore[union-attr]
    assert (
        parse_kube_host("root@cp1", key=None, config_file=None, known_hosts=None, default_user="admin").user == "root"
    )  # type: ignore[union-attr]


def test_kubectl_on_a_control_host_gets_every_value_quoted() -> None:
    access = kube_access(
        kubeconfig="/etc/k8s/my config",
        kube_context="ctx; reboot",
        kube_host="root@cp1",
        kubectl_path="/opt/kube ctl/kubectl",
    )
    argv = Kubectl(access)._argv(["get", "node", "gpu01"], request_timeout=True)
    assert argv[:3] == ["ssh", "-o", "BatchMode=yes"] and argv[-2] == "--"
    assert argv[-1].startswith("'/opt/kube ctl/kubectl' --kubeconfig '/etc/k8s/my config' --context 'ctx; reboot'")
    with pytest.raises(UserError, match="newline"):
        kube_access(kubeconfig=None, kube_context="a\nb", kube_host="cp1", kubectl_path="kubectl")
