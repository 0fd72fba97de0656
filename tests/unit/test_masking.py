"""Secret values never reach what gpunode shows: diffs, step details, JSON, logs."""

from __future__ import annotations

import json
import logging

import pytest

from gpunode.bootstrap.core.report import HostReport, format_reports, reports_to_json
from gpunode.bootstrap.log import format_event, log_event
from gpunode.bootstrap.masking import mask_secrets

SECRET = "hunter2-s3cret"


@pytest.mark.parametrize(
    "line",
    [
        f'+  password = "{SECRET}"',
        f"-  auth = '{SECRET}'",
        f'   identitytoken = "{SECRET}"',
        f'  "registry_token" = "{SECRET}"',
        f'x = {{ username = "u", password = "{SECRET}" }}',
        f'{{"auths": {{"reg.example": {{"auth": "{SECRET}"}}}}}}',
        f"client_secret: {SECRET}",
        f'Password = "{SECRET}"',
        f'api_key="{SECRET}"',
    ],
)
def test_secret_values_are_masked_in_toml_json_and_yaml(line: str) -> None:
    masked = mask_secrets(line)
    assert SECRET not in masked and '"***"' in masked


def test_everything_else_is_left_as_it_is() -> None:
    text = (
        '[plugins."io.containerd.grpc.v1.cri".registry.configs."reg.example".auth]\n'
        '  username = "robot"\n'
        '  BinaryName = "/usr/bin/nvidia-container-runtime"\n'
        "  SystemdCgroup = true\n"
    )
    assert mask_secrets(text) == text


def test_reports_mask_details_and_errors_in_text_and_json() -> None:
    report = HostReport("gpu01")
    report.record("containerd", "failed", f'containerd config dump failed near password = "{SECRET}"')
    broken = HostReport("gpu02")
    broken.error = f"could not connect: token={SECRET}"
    for shown in (format_reports([report, broken]), reports_to_json([report, broken])):
        assert SECRET not in shown
    assert json.loads(reports_to_json([report]))["hosts"][0]["steps"][0]["detail"].endswith('password = "***"')


def test_log_lines_mask_secret_values(caplog: pytest.LogCaptureFixture) -> None:
    assert SECRET not in format_event("containerd.dump", output=f'auth = "{SECRET}"')
    with caplog.at_level(logging.INFO, logger="gpunode"):
        log_event("apply", host="gpu01", output=f"password: {SECRET}")
    assert caplog.messages and SECRET not in caplog.text
