"""The plugin image, built from this checkout with `gpunode image build` (no registry), run
for real in containerd + runc from Debian, as the DaemonSet that `gpunode render` prints
asks: its mounts, environment and security context are translated from the manifest
(standins/pod_translation.py), so these tests prove the manifest as much as the image.

The world around the container: the fake NVML as a host's versioned library file behind a
symlink chain (the DaemonSet mounts the resolved file), the kubelet stand-in's
device-plugins directory, /dev. The one thing added beside the manifest is the GPU itself:
the fake library reads its GPUs and XID events from two files (where the real one talks to
/dev/nvidia*), mounted read-only with their two variables.

The Debian base is cached in the test cache, keyed by its recipe; the rest is built every
session from the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from image_world import (
    CONSOLE_SCRIPT,
    DRIVER,
    ImageWorld,
    containerd_with_image,
    gpunode_version,
    run_image_build,
    wait_exit,
)
from plugin_harness import GPU, fake_nvml_lib  # noqa: F401 (fixture)
from standins.containerd_instance import ContainerdInstance
from standins.fake_nvml import FakeGpu
from standins.kubelet import HEALTHY, UNHEALTHY

pytestmark = pytest.mark.slow

PLUGIN_PACKAGES = {
    "gpunode",
    "click",
    "grpcio",
    "protobuf",
    "nvidia-ml-py",
    "prometheus_client",
    "PyYAML",  # its metadata name
    "typing_extensions",
}


def uuid(index: int) -> str:
    return FakeGpu(index=index).resolved_uuid()


@pytest.fixture(scope="session")
def image_build() -> Iterator[tuple[Path, str]]:
    if os.geteuid() != 0:
        pytest.fail("the image tests need root (mmdebstrap, containerd): run them as tests/run does")
    out = Path(tempfile.mkdtemp(prefix="gpn-image-"))
    archive = out / "gpunode-plugin.tar"
    result = run_image_build("--archive", str(archive))
    assert result.returncode == 0, result.stdout + result.stderr
    yield archive, result.stdout
    shutil.rmtree(out, ignore_errors=True)


@pytest.fixture(scope="module")
def containerd(image_build: tuple[Path, str]) -> Iterator[ContainerdInstance]:
    with containerd_with_image(image_build[0]) as instance:
        yield instance


@pytest.fixture
def world(containerd: ContainerdInstance, fake_nvml_lib: Path) -> Iterator[ImageWorld]:
    root = Path(tempfile.mkdtemp(prefix="gpn-", dir="/tmp"))
    node = ImageWorld(root, fake_nvml_lib, containerd)
    yield node
    node.close()
    shutil.rmtree(root, ignore_errors=True)


def test_build_prints_size_and_only_the_plugin_dependencies(image_build: tuple[Path, str]) -> None:
    archive, stdout = image_build
    assert f"built ghcr.io/gpunode/gpunode:{gpunode_version()} into {archive}" in stdout
    packages_line = next(line for line in stdout.splitlines() if "python packages:" in line)
    names = {item.strip().rsplit(" ", 1)[0] for item in packages_line.split(":", 1)[1].split(",")}
    assert names == PLUGIN_PACKAGES
    size_mb = float(next(line for line in stdout.splitlines() if "archive:" in line).split()[1])
    assert 10 < size_mb < 120
    assert abs(archive.stat().st_size / 1e6 - size_mb) < 0.1
    # The archive is an OCI layout with docker's manifest.json: what ctr, podman and docker load.
    import tarfile

    with tarfile.open(archive) as tar:
        names_in = set(tar.getnames())
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        docker = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert {"oci-layout", "index.json", "manifest.json"} <= names_in
    assert (
        index["manifests"][0]["annotations"]["io.containerd.image.name"]
        == f"ghcr.io/gpunode/gpunode:{gpunode_version()}"
    )
    assert docker[0]["RepoTags"] == [f"ghcr.io/gpunode/gpunode:{gpunode_version()}"]
    assert all(layer in names_in for layer in docker[0]["Layers"])


def test_a_second_build_is_the_same_image_and_json_keeps_the_contract(image_build: tuple[Path, str]) -> None:
    import jsonschema

    from gpunode.bootstrap.cli.contract import SCHEMA_PATH

    archive, text = image_build
    first = next(line for line in text.splitlines() if "manifest:" in line).split()[-1]
    again = archive.with_name("again.tar")
    result = run_image_build("--archive", str(again), "--output", "json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    jsonschema.validate(document, json.loads(SCHEMA_PATH.read_text()))
    assert document["command"] == "image build" and document["ok"] and document["base_cached"]
    assert document["archive"] == str(again) and again.stat().st_size == document["archive_bytes"]
    assert set(document["python_packages"]) == PLUGIN_PACKAGES
    assert "python3" in document["debian_packages"] and "perl" not in document["debian_packages"]
    # Reproducible: the same checkout, base and SOURCE_DATE_EPOCH give the same manifest.
    assert document["manifest_digest"] == first


def test_bad_archive_paths_are_refused_before_building(tmp_path: Path) -> None:
    for archive, words in ((tmp_path, "is a directory"), (tmp_path / "missing" / "x.tar", "does not exist")):
        result = subprocess.run(
            [str(CONSOLE_SCRIPT), "image", "build", "--archive", str(archive)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, result.stderr
        assert words in result.stderr and "Fix:" in result.stderr
        assert result.stdout == ""


def test_image_holds_the_plugin_and_nothing_of_the_operator_side(
    containerd: ContainerdInstance, tmp_path: Path
) -> None:
    probe = (
        "import importlib.metadata as m, importlib.util as u, json; "
        "print(json.dumps(sorted(d.metadata['Name'] for d in m.distributions()))); "
        "print(json.dumps([n for n in ('pyinfra', 'gevent', 'jinja2', 'pip') if u.find_spec(n)]))"
    )
    log = tmp_path / "probe.log"
    proc = containerd.run(f"ghcr.io/gpunode/gpunode:{gpunode_version()}", "probe", [], ["python", "-c", probe], log)
    assert wait_exit(proc, log) == 0, log.read_text()
    lines = log.read_text().splitlines()
    assert set(json.loads(lines[0])) == PLUGIN_PACKAGES
    assert lines[1] == "[]"
    # No command given: the image's own ENTRYPOINT and CMD, the Containerfile's
    # `python -m gpunode.plugin serve`. No NVML here: it fails on NVML and says so, exit 1.
    default_log = tmp_path / "default.log"
    proc = containerd.run(f"ghcr.io/gpunode/gpunode:{gpunode_version()}", "default", [], [], default_log)
    assert wait_exit(proc, default_log) == 1, default_log.read_text()
    assert "nvml_init_failed reason=library_not_found" in default_log.read_text()


def test_rendered_daemonset_runs_registers_allocates_and_survives(world: ImageWorld) -> None:
    daemonset = world.daemonset()
    spec = daemonset["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert container["image"] == f"ghcr.io/gpunode/gpunode:{gpunode_version()}"  # the image just imported
    library = next(v for v in spec["volumes"] if v["name"] == "nvml-library")
    assert library["hostPath"] == {"path": str(world.link.resolve()), "type": "File"}

    started = time.monotonic()
    proc, log = world.run(spec, "plugin")
    try:
        registration = world.kubelet.wait_registered(GPU, timeout=30)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\ncontainer log:\n{log.read_text()}") from exc
    print(f"container start to Register: {registration.at - started:.2f} s")
    assert registration.version == "v1beta1"
    assert {d.id: d.health for d in world.kubelet.devices(GPU)} == {uuid(0): HEALTHY, uuid(1): HEALTHY}
    assert f"driver={DRIVER}" in log.read_text()

    response = world.kubelet.allocate(GPU, [uuid(1)])
    assert response.container_responses[0].envs["NVIDIA_VISIBLE_DEVICES"] == uuid(1)

    world.nvml.inject_xid(0, 79)  # GPU 0 fell off the bus: fatal
    world.kubelet.wait_devices(GPU, lambda ds: {d.id: d.health for d in ds}.get(uuid(0)) == UNHEALTHY, timeout=10)

    world.kubelet.restart()  # sockets wiped, kubelet.sock re-created
    world.kubelet.wait_registered(GPU, timeout=15, after=1)
    devices = world.kubelet.wait_devices(GPU, lambda ds: len(ds) == 2, timeout=10)
    assert {d.id: d.health for d in devices} == {uuid(0): UNHEALTHY, uuid(1): HEALTHY}

    world.containerd.kill("plugin", "SIGTERM")
    assert wait_exit(proc, log) == 0, log.read_text()
    assert "plugin_stopped" in log.read_text()
    assert not list((world.root / "kubelet" / "device-plugins").glob("gpunode-*.sock"))


def test_without_the_library_mount_the_container_fails_on_nvml(world: ImageWorld) -> None:
    # The control: the library the plugin loads is the one the DaemonSet mounts, nothing of the image's.
    spec = world.daemonset()["spec"]["template"]["spec"]
    container = spec["containers"][0]
    container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] != "nvml-library"]
    proc, log = world.run(spec, "no-library")
    assert wait_exit(proc, log) == 1, log.read_text()
    assert "nvml_init_failed reason=library_not_found" in log.read_text()
    assert not world.kubelet.registered(GPU)
