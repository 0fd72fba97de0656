"""`gpunode agent` and `gpunode render agent` keep the CLI contract: the JSON envelope
(validated against the schema), exit 2 and the fix on bad input, nothing contacted."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from gpunode.bootstrap.cli.contract import SCHEMA_PATH
from gpunode.bootstrap.cli.main import cli

SCHEMA = json.loads(SCHEMA_PATH.read_text())


def _json(args: list[str], **env: str) -> tuple[int, dict[str, object]]:
    outcome = CliRunner().invoke(cli, [*args, "--output", "json"], env=env, prog_name="gpunode")
    document = json.loads(outcome.stdout)
    jsonschema.validate(document, SCHEMA)
    return outcome.exit_code, document


def test_render_agent_prints_the_envelope_with_its_documents(tmp_path: Path) -> None:
    settings = tmp_path / "settings.yaml"
    settings.write_text("settings: {kernel_module: none}\n")
    code, document = _json(["render", "agent", "--mode", "apply", "--settings", str(settings)])
    assert code == 0 and document["command"] == "render agent"
    kinds = [d["kind"] for d in document["documents"]]  # type: ignore[attr-defined]
    assert kinds == [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "DaemonSet",
    ]
    configmap = document["documents"][5]  # type: ignore[index]
    assert configmap["data"]["settings.yaml"] == "settings: {kernel_module: none}\n"


@pytest.mark.parametrize(
    "args,words",
    [
        (["render", "agent", "--interval", "1"], "--interval"),
        (["render", "agent", "--node-selector", "gpu"], "key=value"),
        (["render", "agent", "--settings", "{bad}"], "not a mapping"),
        (["agent", "--once"], "node name"),
        (["agent", "--once", "--node-name", "n1", "--max-unavailable", "0"], "out of range"),
    ],
)
def test_bad_input_is_exit_2_with_the_fix(args: list[str], words: str, tmp_path: Path) -> None:
    args = [a.replace("{bad}", str(tmp_path / "bad.yaml")) for a in args]
    (tmp_path / "bad.yaml").write_text("settings: [1]\n")
    code, document = _json(args, NODE_NAME="")
    assert code == 2, document
    error = document["error"]
    assert isinstance(error, dict) and error["kind"] == "bad_input"
    assert words in error["problem"] + " " + str(error.get("fix")), error
