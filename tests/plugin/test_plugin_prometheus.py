"""A real Prometheus server (Debian's binary, on loopback, with a temporary config and data
directory) scrapes the running plugin: the target is up, the series carry dcgm-exporter's
names and labels, and with faults injected into the fake NVML (XID 79, a GPU too hot) the
rules of `gpunode render alerts` fire in its /api/v1/alerts; with the plugin gone,
GpuDevicePluginDown fires.

Only the `for:` durations are shortened (rendered with the same function and options type
the CLI uses); the test checks that everything else equals what `render alerts` prints.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from plugin_harness import PluginHarness, fake_nvml_lib, harness, short_dir  # noqa: F401 (fixtures)
from polling import eventually
from standins.fake_nvml import FakeGpu, FakeNvmlConfig
from test_plugin_telemetry import free_port

from gpunode.bootstrap.core.kube.alerts import AlertOptions, render_rule_file
from gpunode.bootstrap.core.kube.gpu_alerts import GpuAlertOptions
from gpunode.bootstrap.core.kube.telemetry import grafana_dashboard

JOB = "gpunode-device-plugin"
FAST = AlertOptions(gpu=GpuAlertOptions(temperature_for="1s", lost_for="1s", plugin_down_for="2s"))


class Prometheus:
    def __init__(self, workdir: Path, rules: str, target: str) -> None:
        binary = shutil.which("prometheus")
        assert binary, "Debian's prometheus package is missing (tests/run installs it)"
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "rules.yml").write_text(rules)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
            "rule_files": [str(workdir / "rules.yml")],
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [target]}]}],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.log = (workdir / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        eventually(self._ready, timeout=60, what="Prometheus ready")

    def _ready(self) -> bool:
        assert self.proc.poll() is None, "prometheus exited; see its log"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v1/{path}{query}", timeout=5) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def firing(self, name: str) -> list[dict[str, str]]:
        return [
            a["labels"]
            for a in self.api("alerts")["alerts"]
            if a["labels"]["alertname"] == name and a["state"] == "firing"
        ]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def prometheus_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "prometheus"


def cli_rules() -> dict[str, dict[str, Any]]:
    printed = subprocess.run(
        [sys.executable, "-m", "gpunode.bootstrap.cli.main", "render", "alerts", "--plain"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {r["alert"]: r for r in yaml.safe_load(printed)["groups"][0]["rules"]}


def test_the_rules_under_test_are_the_ones_render_alerts_prints() -> None:
    fast = {r["alert"]: r for r in yaml.safe_load(render_rule_file(FAST))["groups"][0]["rules"]}
    printed = cli_rules()
    assert fast.keys() == printed.keys()
    for name, rule in fast.items():
        assert (rule["expr"], rule["labels"]) == (printed[name]["expr"], printed[name]["labels"]), name


@pytest.mark.slow
def test_prometheus_scrapes_the_plugin_and_the_gpu_alerts_fire(harness: PluginHarness, prometheus_dir: Path) -> None:
    port = free_port()
    harness.configure(FakeNvmlConfig(gpus=(FakeGpu(0, name="NVIDIA H100 80GB HBM3"), FakeGpu(1))))
    plugin = harness.serve("--metrics-addr", f"127.0.0.1:{port}", env={"GPUNODE_NODE_NAME": "gpu-node-1"})
    prometheus = Prometheus(prometheus_dir, render_rule_file(FAST), f"127.0.0.1:{port}")
    try:
        target = eventually(
            lambda: [t for t in prometheus.api("targets")["activeTargets"] if t["health"] == "up"],
            timeout=30,
            what="the plugin's target up",
        )
        assert target[0]["labels"]["job"] == JOB
        temps = eventually(
            lambda: prometheus.api("query", query="DCGM_FI_DEV_GPU_TEMP")["result"], timeout=30, what="GPU temperatures"
        )
        by_gpu = {s["metric"]["gpu"]: s["metric"] for s in temps}
        assert set(by_gpu) == {"0", "1"}
        assert by_gpu["0"]["modelName"] == "NVIDIA H100 80GB HBM3" and by_gpu["0"]["Hostname"] == "gpu-node-1"
        assert by_gpu["0"]["UUID"] == FakeGpu(0).resolved_uuid() and by_gpu["1"]["device"] == "nvidia1"
        assert by_gpu["0"]["DCGM_FI_DRIVER_VERSION"] == "535.261.03"
        # Healthy GPUs: a few evaluations, and none of the GPU alerts fires.
        eventually(lambda: prometheus.api("rules")["groups"][0]["rules"][0].get("lastEvaluation"), what="a rule run")
        for name in ("GpuXidError", "GpuTemperatureHigh", "GpuLost", "GpuDevicePluginDown"):
            assert prometheus.firing(name) == [], name

        harness.nvml.inject_xid(1, 79)
        harness.nvml.set_telemetry(0, temp=97)
        xid = eventually(lambda: prometheus.firing("GpuXidError"), timeout=30, what="GpuXidError firing")
        assert [(a["gpu"], a["xid"], a["Hostname"]) for a in xid] == [("1", "79", "gpu-node-1")]
        hot = eventually(lambda: prometheus.firing("GpuTemperatureHigh"), timeout=30, what="GpuTemperatureHigh firing")
        assert [(a["gpu"], a["UUID"]) for a in hot] == [("0", FakeGpu(0).resolved_uuid())]
        unhealthy = prometheus.api("query", query='gpunode_plugin_devices{health="Unhealthy"}')["result"]
        assert [s["value"][1] for s in unhealthy] == ["1"]
        # Every panel of `render dashboard` shows data from the running plugin.
        for panel in grafana_dashboard()["panels"]:
            query = re.sub(r"\$\w+", ".*", panel["targets"][0]["expr"])
            assert prometheus.api("query", query=query)["result"], panel["title"]

        plugin.terminate()
        down = eventually(lambda: prometheus.firing("GpuDevicePluginDown"), timeout=30, what="GpuDevicePluginDown")
        assert down[0]["instance"] == f"127.0.0.1:{port}"
    finally:
        prometheus.stop()
