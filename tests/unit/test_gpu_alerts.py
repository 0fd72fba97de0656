"""The GPU rules of `gpunode render alerts` (XID, temperature, ECC, row remapping, lost GPU,
plugin down), evaluated by Prometheus's `promtool test rules` over series shaped as the
plugin's telemetry (dcgm-exporter's names and labels): each fires on its failure and stays
silent on healthy GPUs, application XIDs and one-off blips."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_alerts import promtool

from gpunode.bootstrap.core.kube.alerts import AlertOptions, alert_rules

PLUGIN = {"job": "gpunode-device-plugin", "instance": "10.0.0.7:9400"}
GPU0 = {
    "gpu": "0",
    "UUID": "GPU-fa4e0000-0000-4000-8000-000000000000",
    "pci_bus_id": "00000000:07:00.0",
    "device": "nvidia0",
    "modelName": "NVIDIA A100-SXM4-80GB",
    "Hostname": "gpu-1",
    "DCGM_FI_DRIVER_VERSION": "535.261.03",
}
GPU1 = {**GPU0, "gpu": "1", "UUID": "GPU-fa4e0001-0000-4000-8000-000000000001", "device": "nvidia1"}
POD = {"namespace": "ml", "pod": "trainer-0", "container": "main"}


def rule(name: str) -> dict[str, Any]:
    return next(r for r in alert_rules(AlertOptions()) if r["alert"] == name)


def render(text: str, labels: dict[str, str], value: str) -> str:
    """A rule template as Prometheus renders it, for the constructs these rules use."""
    text = re.sub(
        r"\{\{ if \$labels\.(\w+) \}\}(.*?)\{\{ end \}\}", lambda m: m.group(2) if labels.get(m.group(1)) else "", text
    )
    text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m.group(1), ""), text)
    return text.replace("{{ $value }}", value)


def alert(name: str, value: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "exp_labels": {"severity": rule(name)["labels"]["severity"], **labels},
        "exp_annotations": {k: render(v, labels, value) for k, v in rule(name)["annotations"].items()},
    }


def series(metric: str, values: str, labels: dict[str, str]) -> dict[str, str]:
    text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{metric}{{{text}}}", "values": values}


XID79 = {**GPU1, **POD, **PLUGIN, "xid": "79"}
TESTS: list[dict[str, Any]] = [
    {
        "name": "XID 79 fires at once; an application XID (13) never does",
        "interval": "1m",
        "input_series": [
            series("DCGM_EXP_XID_ERRORS_COUNT", "_ _ 1x5 stale", XID79),
            series("DCGM_EXP_XID_ERRORS_COUNT", "1x10", {**GPU0, **PLUGIN, "xid": "13"}),
        ],
        "alert_rule_test": [
            {"eval_time": "1m", "alertname": "GpuXidError", "exp_alerts": []},
            {"eval_time": "3m", "alertname": "GpuXidError", "exp_alerts": [alert("GpuXidError", "1", XID79)]},
            {"eval_time": "10m", "alertname": "GpuXidError", "exp_alerts": []},
        ],
    },
    {
        "name": "hot for 5m fires; a 2m spike does not",
        "interval": "1m",
        "input_series": [
            series("DCGM_FI_DEV_GPU_TEMP", "60 90x10", {**GPU0, **PLUGIN}),
            series("DCGM_FI_DEV_GPU_TEMP", "60 95 95 60x10", {**GPU1, **PLUGIN}),
        ],
        "alert_rule_test": [
            {"eval_time": "4m", "alertname": "GpuTemperatureHigh", "exp_alerts": []},
            {
                "eval_time": "7m",
                "alertname": "GpuTemperatureHigh",
                "exp_alerts": [alert("GpuTemperatureHigh", "90", {**GPU0, **PLUGIN})],
            },
        ],
    },
    {
        "name": "new double-bit ECC errors fire; an old count that does not grow does not",
        "interval": "1m",
        "input_series": [
            series("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "0 0 0 2x10", {**GPU0, **PLUGIN}),
            series("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "5x20", {**GPU1, **PLUGIN}),
        ],
        "alert_rule_test": [
            {"eval_time": "2m", "alertname": "GpuUncorrectableEccErrors", "exp_alerts": []},
            {
                "eval_time": "5m",
                "alertname": "GpuUncorrectableEccErrors",
                "exp_alerts": [alert("GpuUncorrectableEccErrors", "2", {**GPU0, **PLUGIN})],
            },
        ],
    },
    {
        "name": "row remap failure, a lost GPU, a plugin that cannot be scraped",
        "interval": "1m",
        "input_series": [
            series("DCGM_FI_DEV_ROW_REMAP_FAILURE", "0 1x5", {**GPU0, **PLUGIN}),
            series("DCGM_FI_DEV_ROW_REMAP_FAILURE", "0x5", {**GPU1, **PLUGIN}),
            series("gpunode_gpu_up", "1 0x5", {**GPU1, **PLUGIN}),
            series("gpunode_gpu_up", "1 1 0 1 1 1", {**GPU0, **PLUGIN}),
            series("up", "1 0x10", {"job": "gpunode-device-plugin", "instance": "10.0.0.8:9400"}),
            series("up", "0x10", {"job": "node-exporter", "instance": "10.0.0.8:9100"}),
        ],
        "alert_rule_test": [
            {
                "eval_time": "2m",
                "alertname": "GpuRowRemapFailure",
                "exp_alerts": [alert("GpuRowRemapFailure", "1", {**GPU0, **PLUGIN})],
            },
            {"eval_time": "3m", "alertname": "GpuLost", "exp_alerts": [alert("GpuLost", "0", {**GPU1, **PLUGIN})]},
            {"eval_time": "4m", "alertname": "GpuDevicePluginDown", "exp_alerts": []},
            {
                "eval_time": "7m",
                "alertname": "GpuDevicePluginDown",
                "exp_alerts": [
                    alert("GpuDevicePluginDown", "0", {"job": "gpunode-device-plugin", "instance": "10.0.0.8:9400"})
                ],
            },
        ],
    },
]


def gpunode(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpunode.bootstrap.cli.main", *args], capture_output=True, text=True, check=False
    )


def test_promtool_evaluates_the_gpu_rules_against_their_failures(tmp_path: Path) -> None:
    (tmp_path / "rules.yml").write_text(gpunode("render", "alerts", "--plain").stdout)
    (tmp_path / "tests.yml").write_text(
        yaml.safe_dump({"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": TESTS}, sort_keys=False)
    )
    result = subprocess.run(
        [promtool(), "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_temperature_threshold_and_job_options() -> None:
    result = gpunode("render", "alerts", "--plain", "--temperature-threshold", "80", "--plugin-job-regex", "gpu-.*")
    assert result.returncode == 0, result.stderr
    rules = {r["alert"]: r for r in yaml.safe_load(result.stdout)["groups"][0]["rules"]}
    assert rules["GpuTemperatureHigh"]["expr"] == "DCGM_FI_DEV_GPU_TEMP > 80"
    assert rules["GpuDevicePluginDown"]["expr"] == 'up{job=~"gpu-.*"} == 0'


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--temperature-threshold", "500"], "is not a GPU temperature"),
        (["--plugin-job-regex", "gpu-("], "is not an RE2 regular expression"),
    ],
)
def test_bad_gpu_alert_options_exit_2(args: list[str], words: str) -> None:
    result = gpunode("render", "alerts", *args)
    assert result.returncode == 2 and result.stdout == ""
    assert words in result.stderr
