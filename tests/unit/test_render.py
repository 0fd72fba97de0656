"""`gpunode render`: manifests on standard output, bad input on standard error with exit 2."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import click
import pytest
import yaml

from gpunode.bootstrap.cli.main import main
from gpunode.bootstrap.cli.render import render

DEBIAN_LIB = "/usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.535.261.03"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(["render", *args])
    out, err = capsys.readouterr()
    code = exited.value.code
    assert isinstance(code, int)
    return code, out, err


def test_render_prints_runtimeclass_and_daemonset(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--lib-path", DEBIAN_LIB)
    assert (code, err) == (0, "")
    runtimeclass, *rbac, daemonset = yaml.safe_load_all(out)
    assert runtimeclass["kind"] == "RuntimeClass" and runtimeclass["handler"] == "nvidia"
    assert [o["kind"] for o in rbac] == ["ServiceAccount", "ClusterRole", "ClusterRoleBinding"]
    assert daemonset["kind"] == "DaemonSet"
    # The driver version comes from the file name when not given.
    assert daemonset["metadata"]["name"] == "gpunode-device-plugin-535-261-03"
    assert daemonset["spec"]["template"]["spec"]["nodeSelector"]["gpunode.io/driver-version"] == "535.261.03"
    library = [v for v in daemonset["spec"]["template"]["spec"]["volumes"] if v["name"] == "nvml-library"]
    assert library[0]["hostPath"] == {"path": DEBIAN_LIB, "type": "File"}


def test_render_options_reach_the_manifests(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys,
        "--plugin",
        "nvidia",
        "--mode",
        "runtime",
        "--driver-version",
        "550.54.15",
        "--image",
        "registry.local:5000/nvidia/k8s-device-plugin:v0.20.0",
        "--namespace",
        "gpu-system",
        "--mig-strategy",
        "mixed",
        "--kubelet-root",
        "/data/kubelet",
        "--no-fail-on-init-error",
    )
    assert (code, err) == (0, "")
    daemonset = list(yaml.safe_load_all(out))[1]
    pod = daemonset["spec"]["template"]["spec"]
    (ctr,) = pod["containers"]
    env = {e["name"]: e["value"] for e in ctr["env"]}
    assert daemonset["metadata"]["name"] == "gpunode-nvidia-device-plugin-550-54-15"
    assert daemonset["metadata"]["namespace"] == "gpu-system"
    assert pod["runtimeClassName"] == "nvidia"
    assert ctr["image"] == "registry.local:5000/nvidia/k8s-device-plugin:v0.20.0"
    assert env["MIG_STRATEGY"] == "mixed" and env["NVIDIA_MIG_MONITOR_DEVICES"] == "all"
    assert env["FAIL_ON_INIT_ERROR"] == "false"
    assert pod["volumes"][0]["hostPath"]["path"] == "/data/kubelet/device-plugins"


@pytest.mark.parametrize(
    "args,words",
    [
        ([], "--lib-path"),
        (["--mode", "runtime"], "--driver-version"),
        (["--lib-path", "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"], "symlink"),
        (["--lib-path", "/usr/lib/x86_64-linux-gnu"], "F3"),
        (["--lib-path", "libnvidia-ml.so.535.261.03"], "absolute"),
        (["--lib-path", DEBIAN_LIB, "--driver-version", "550.54.15"], "535.261.03"),
        (["--lib-path", DEBIAN_LIB, "--image", "not an image"], "image"),
        (["--lib-path", DEBIAN_LIB, "--namespace", "Kube System"], "namespace"),
        (["--lib-path", DEBIAN_LIB, "--plugin", "amd"], "--plugin"),
        (["--lib-path", DEBIAN_LIB, "--mode", "cdi"], "--mode"),
        (["--lib-path", DEBIAN_LIB, "--mig-strategy", "all"], "--mig-strategy"),
        (["--lib-path", DEBIAN_LIB, "--kubelet-root", "relative/dir"], "absolute"),
        (["--lib-path", DEBIAN_LIB, "no-such-subcommand"], "no-such-subcommand"),
    ],
)
def test_bad_input_exits_2_with_the_reason_on_stderr_only(
    capsys: pytest.CaptureFixture[str], args: list[str], words: str
) -> None:
    code, out, err = run(capsys, *args)
    assert code == 2
    assert out == ""
    assert words in err
    assert "Traceback" not in err


@pytest.fixture
def extra_subcommand() -> Iterator[None]:
    @click.command("example")
    def example() -> None:
        click.echo("example ran")

    render.add_command(example)
    try:
        yield
    finally:
        render.commands.pop("example")


@pytest.mark.usefixtures("extra_subcommand")
def test_subcommands_run_alone_and_refuse_the_manifest_options(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "example")
    assert (code, out, err) == (0, "example ran\n", "")
    code, out, err = run(capsys, "--mode", "runtime", "example")
    assert code == 2 and out == ""
    assert "--mode" in err and "gpunode render example --help" in err


def test_help_explains_the_version_default_and_the_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert "read from the --lib-path file name" in " ".join(out.split())
    assert "subcommands" in out


def test_the_installed_command() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpunode.bootstrap.cli.main",
            "render",
            "--lib-path",
            "/usr/lib64/libnvidia-ml.so.550.54.15",
            "--plugin",
            "nvidia",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    kinds = [doc["kind"] for doc in yaml.safe_load_all(result.stdout)]
    assert kinds == ["RuntimeClass", "DaemonSet"]
    bad = subprocess.run(
        [sys.executable, "-m", "gpunode.bootstrap.cli.main", "render"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("gpunode: Mount mode needs")
