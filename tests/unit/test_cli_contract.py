"""The contract of every command (docs/cli-contract.md), fed the inputs careless users and
CI jobs give: typos, directories, empty and binary files, dangling and looping links,
huge values, control characters and hostile strings, from flags, inventory data and the
environment.

Each case asserts the contract's exit code, no traceback, a message in the one shape
("gpunode: what is wrong. Fix: what to do.") with control characters escaped, nothing
written anywhere (the case runs with HOME, XDG dirs, TMPDIR and the working directory in
a scratch tree that is compared before and after), no host contacted, and, with
--output json, one document on stdout valid against the schema.

Commands that load pyinfra (bootstrap, doctor with hosts) run as a subprocess each, since
gevent's monkey patching must not reach the test process; the others run in-process
through click's runner. Ctrl-C and SIGTERM against a real host: tests/e2e/test_cli_interrupt.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import click
import jsonschema
import pytest
from click.testing import CliRunner

from gpunode.bootstrap.cli.contract import SCHEMA_PATH
from gpunode.bootstrap.cli.main import cli

SCHEMA = json.loads(SCHEMA_PATH.read_text())
jsonschema.Draft202012Validator.check_schema(SCHEMA)

OSC_TITLE = "\x1b]0;owned\x07"  # retitles a terminal when echoed raw
LONG = "9" * 100_000


@dataclass
class Case:
    """One bad input. `args` may name files of the scratch tree as {dir}, {empty}, ..."""

    id: str
    args: list[str]
    code: int = 2
    words: tuple[str, ...] = ()  # must appear in stderr (as shown, escaped)
    env: dict[str, str] = field(default_factory=dict)
    subprocess: bool = False  # needs pyinfra (gevent): run in a process of its own
    json: bool = True  # the command has --output json
    inventory: str | None = None  # text of {inventory}
    # Also run without --output json (stdout must stay empty). In-process cases always do;
    # a process costs a second, so for those a few representatives are enough.
    text: bool = False


def _inventory_with(data: str) -> str:
    return f"hosts = [('gpu03.example', {{{data}}})]\n"


BOOTSTRAP = ["bootstrap", "--dry-run", "--skip-cluster"]
CASES: list[Case] = [
    # --- bootstrap: hosts and inventories ---------------------------------------------
    Case(
        "bootstrap-connector-typo", text=True, args=[*BOOTSTRAP, "@localx"], words=("'@localx'", "Did you mean @local")
    ),
    Case("bootstrap-host-too-long", [*BOOTSTRAP, "a" * 300], words=("300 characters",)),
    Case("bootstrap-host-label-too-long", [*BOOTSTRAP, "b" * 64 + ".example"], words=("longer than",)),
    Case("bootstrap-host-control-chars", [*BOOTSTRAP, "gpu" + OSC_TITLE], words=("\\x1b]0;owned\\x07",)),
    Case("bootstrap-host-option-like", [*BOOTSTRAP, "--", "-oProxyCommand=x"], words=("starts with '-'",)),
    Case("bootstrap-no-hosts", BOOTSTRAP, words=("No hosts given",)),
    Case("bootstrap-inventory-dir", [*BOOTSTRAP, "-i", "{dir}"], words=("is a directory",)),
    Case("bootstrap-inventory-missing", [*BOOTSTRAP, "-i", "{missing}"], words=("does not exist",)),
    Case("bootstrap-inventory-empty", [*BOOTSTRAP, "-i", "{empty}"], words=("lists no hosts",)),
    Case("bootstrap-inventory-binary", [*BOOTSTRAP, "-i", "{binary}"], words=("not UTF-8",)),
    Case("bootstrap-inventory-dangling", [*BOOTSTRAP, "-i", "{dangling}"], words=("leads nowhere",)),
    Case("bootstrap-inventory-loop", [*BOOTSTRAP, "-i", "{loop}"], words=("leads nowhere",)),
    Case("bootstrap-inventory-ini", [*BOOTSTRAP, "-i", "{inventory}"], inventory="[gpus]\ngpu01\n", words=("INI",)),
    Case(
        "bootstrap-inventory-python-error",
        [*BOOTSTRAP, "-i", "{inventory}"],
        inventory="hosts = ['a']\n1 / 0\n",
        words=("line 2", "ZeroDivisionError"),
    ),
    Case(
        "bootstrap-inventory-syntax-error",
        [*BOOTSTRAP, "-i", "{inventory}"],
        inventory="hosts = [\n",
        words=("is not Python",),
    ),
    Case(
        "bootstrap-inventory-hostile-driver-version",
        [*BOOTSTRAP, "-i", "{inventory}"],
        text=True,
        inventory=_inventory_with("'gpunode_driver_version': '535; touch /tmp/x'"),
        words=("inventory.py: host gpu03.example", "gpunode_driver_version", "not a package version"),
    ),
    Case(
        "bootstrap-inventory-setting-typo",
        [*BOOTSTRAP, "-i", "{inventory}"],
        inventory=_inventory_with("'gpunode_drivr_version': '535'"),
        words=("unknown inventory setting", "gpunode_drivr_version"),
    ),
    Case(
        "bootstrap-inventory-control-chars",
        [*BOOTSTRAP, "-i", "{inventory}"],
        inventory=_inventory_with(f"'gpunode_runtime_path': {('/usr/bin/x' + OSC_TITLE)!r}"),
        words=("gpunode_runtime_path",),
    ),
    Case(
        "bootstrap-inventory-huge-value",
        [*BOOTSTRAP, "-i", "{inventory}"],
        inventory=_inventory_with(f"'gpunode_driver_branch': '{LONG}'"),
        words=("not a driver branch",),
    ),
    Case(
        "bootstrap-inventory-not-a-boolean",
        [*BOOTSTRAP, "-i", "{inventory}"],
        inventory=_inventory_with("'gpunode_allow_no_gpu': 'maybe'"),
        words=("not a boolean",),
    ),
    Case(
        "bootstrap-inventory-relative-path",
        [*BOOTSTRAP, "-i", "{inventory}"],
        inventory=_inventory_with("'gpunode_containerd_config': 'etc/containerd/config.toml'"),
        words=("not an absolute path",),
    ),
    Case(
        "bootstrap-inventory-bad-port",
        [*BOOTSTRAP, "-i", "{inventory}"],
        inventory=_inventory_with("'ssh_port': '22; id'"),
        words=("ssh_port", "not a port"),
    ),
    Case(
        "bootstrap-inventory-key-is-a-directory",
        [*BOOTSTRAP, "-i", "{inventory}"],
        inventory=_inventory_with("'ssh_key': '/'"),
        words=("ssh_key", "is a directory"),
    ),
    Case(
        "bootstrap-inventory-missing-toolkit-dir",
        [*BOOTSTRAP, "-i", "{inventory}"],
        inventory=_inventory_with("'gpunode_toolkit_packages': '/nonexistent/toolkit'"),
        words=("gpunode_toolkit_packages", "does not exist"),
    ),
    Case(
        "bootstrap-inventory-connector-typo",
        [*BOOTSTRAP, "-i", "{inventory}"],
        inventory="hosts = ['@localx']\n",
        words=("'@localx'",),
    ),
    # --- bootstrap: flags -----------------------------------------------------------------
    Case(
        "bootstrap-key-is-a-directory",
        text=True,
        args=[*BOOTSTRAP, "h.example", "--ssh-key", "{dir}"],
        words=("is a directory",),
    ),
    Case("bootstrap-key-dangling", [*BOOTSTRAP, "h.example", "--ssh-key", "{dangling}"], words=("leads nowhere",)),
    Case("bootstrap-ssh-config-binary-dir", [*BOOTSTRAP, "h.example", "--ssh-config", "{dir}"], words=("directory",)),
    Case("bootstrap-known-hosts-dir", [*BOOTSTRAP, "h.example", "--known-hosts", "{dir}"], words=("directory",)),
    Case(
        "bootstrap-hostile-driver-version",
        [*BOOTSTRAP, "h.example", "--driver-version", "535; touch /tmp/x"],
        words=("--driver-version", "not a package version"),
    ),
    Case("bootstrap-huge-branch", [*BOOTSTRAP, "h.example", "--driver-branch", LONG], words=("not a driver branch",)),
    Case("bootstrap-port-zero", text=True, args=[*BOOTSTRAP, "h.example", "--ssh-port", "0"], words=("--ssh-port",)),
    Case("bootstrap-port-huge", [*BOOTSTRAP, "h.example", "--ssh-port", LONG], words=("--ssh-port",)),
    Case("bootstrap-parallel-negative", [*BOOTSTRAP, "h.example", "--parallel", "-1"], words=("--parallel",)),
    Case("bootstrap-unknown-option", [*BOOTSTRAP, "h.example", "--dryrun"], words=("No such option",)),
    Case("bootstrap-bad-choice", [*BOOTSTRAP, "h.example", "--kernel-module", "dkmss"], words=("dkmss",)),
    Case(
        "bootstrap-ssh-user-control",
        [*BOOTSTRAP, "h.example", "--ssh-user", "root" + OSC_TITLE],
        words=("not a user name",),
    ),
    Case(
        "bootstrap-restart-command-newline",
        [*BOOTSTRAP, "h.example", "--containerd-restart-command", "systemctl restart containerd\nreboot"],
        words=("newline",),
    ),
    Case(
        "bootstrap-toolkit-dir-is-file",
        [*BOOTSTRAP, "h.example", "--toolkit-packages", "{empty}"],
        words=("not a directory",),
    ),
    Case("bootstrap-both-hosts-and-inventory", [*BOOTSTRAP, "h.example", "-i", "{empty}"], words=("not both",)),
    Case("bootstrap-not-a-terminal", ["bootstrap", "h.example", "--skip-cluster"], words=("--yes",)),
    Case(
        "bootstrap-kubeconfig-dir",
        ["bootstrap", "--dry-run", "h.example", "--kubeconfig", "{dir}"],
        words=("--kubeconfig", "is a directory"),
    ),
    Case("bootstrap-kube-host-option", ["bootstrap", "--dry-run", "h.example", "--kube-host", "-oProxyCommand=x"]),
    Case(
        "bootstrap-toleration-hostile",
        ["bootstrap", "--dry-run", "h.example", "--toleration", "a b; c:NoSchedule"],
        words=("--toleration",),
    ),
    Case("bootstrap-namespace-bad", ["bootstrap", "--dry-run", "h.example", "--namespace", "Bad_NS"]),
    Case("bootstrap-image-hostile", ["bootstrap", "--dry-run", "h.example", "--image", "x --privileged"]),
    Case("bootstrap-timeout-inf", ["bootstrap", "--dry-run", "h.example", "--rollout-timeout", "inf"]),
    # --- doctor ----------------------------------------------------------------------------
    Case(
        "doctor-connector-typo", text=True, args=["doctor", "@localx", "--no-cluster"], words=("Did you mean @local",)
    ),
    Case("doctor-no-cluster-nothing", ["doctor", "--no-cluster"], words=("nothing to check",)),
    Case("doctor-pod-bad", ["doctor", "--pod", "a/b/c"], words=("--pod",)),
    Case("doctor-key-dir", ["doctor", "h.example", "--no-cluster", "--ssh-key", "{dir}"], words=("is a directory",)),
    Case("doctor-kubeconfig-dangling", ["doctor", "--kubeconfig", "{dangling}"], words=("leads nowhere",)),
    Case("doctor-inventory-binary", ["doctor", "-i", "{binary}", "--no-cluster"], words=("not UTF-8",)),
    # --- verify ----------------------------------------------------------------------------
    Case("verify-no-node", ["verify"], words=("NODE",)),
    Case("verify-node-slash", ["verify", "a/b"], words=("not a node name",)),
    Case("verify-node-huge", ["verify", LONG], words=("not a node name",)),
    Case("verify-node-control", ["verify", "gpu" + OSC_TITLE], words=("\\x1b]0;owned\\x07",)),
    Case("verify-kubeconfig-dir", ["verify", "n1", "--kubeconfig", "{dir}"], words=("is a directory",)),
    Case("verify-kubeconfig-missing", ["verify", "n1", "--kubeconfig", "{missing}"], words=("does not exist",)),
    Case("verify-kubeconfig-loop", ["verify", "n1", "--kubeconfig", "{loop}"], words=("leads nowhere",)),
    Case("verify-expect-negative", ["verify", "n1", "--expect", "-1"], words=("--expect",)),
    Case("verify-timeout-nan", ["verify", "n1", "--timeout", "nan"], words=("--timeout",)),
    Case("verify-timeout-huge", ["verify", "n1", "--timeout", LONG], words=("--timeout",)),
    Case("verify-kube-host-space", ["verify", "n1", "--kube-host", "a b"], words=("--kube-host",)),
    Case("verify-context-newline", ["verify", "n1", "--context", "a\nb"], words=("--context",)),
    Case("verify-toleration-bad", ["verify", "n1", "--toleration", "=:"], words=("--toleration",)),
    # --- render ----------------------------------------------------------------------------
    Case("render-no-lib-path", ["render"], words=("--lib-path",)),
    Case(
        "render-lib-path-dotdot",
        ["render", "--lib-path", "/usr/lib/x/../../etc/shadow"],
        words=("contains '..'",),
    ),
    Case("render-lib-path-control", ["render", "--lib-path", "/usr/lib/" + OSC_TITLE], words=("control characters",)),
    Case("render-lib-path-relative", ["render", "--lib-path", "libnvidia-ml.so.535.261.03"], words=("absolute",)),
    Case("render-driver-version-huge", ["render", "--mode", "runtime", "--driver-version", LONG]),
    Case(
        "render-toleration-bad",
        ["render", "--mode", "runtime", "--driver-version", "535.261.03", "--toleration", "a b"],
    ),
    Case("render-image-hostile", ["render", "--mode", "runtime", "--driver-version", "535.261.03", "--image", "$(id)"]),
    Case(
        "render-namespace-control", ["render", "--mode", "runtime", "--driver-version", "1.2", "--namespace", "a\x00"]
    ),
    Case(
        "render-kubelet-root-relative",
        ["render", "--mode", "runtime", "--driver-version", "1.2", "--kubelet-root", "x"],
    ),
    Case("render-manifest-option-on-subcommand", ["render", "--lib-path", "/x", "alerts"], words=("--lib-path",)),
    Case("alerts-lookahead", ["render", "alerts", "--daemonset-regex", "(?=dev).*"], words=("RE2", "(?=")),
    Case("alerts-backreference", ["render", "alerts", "--daemonset-regex", "(a)\\1"], words=("RE2",)),
    Case("alerts-job-lookbehind", ["render", "alerts", "--plugin-job-regex", "(?<=x)y"], words=("RE2",)),
    Case("alerts-label-bad", ["render", "alerts", "--label", "novalue"], words=("KEY=VALUE",)),
    Case("alerts-node-label-control", ["render", "alerts", "--gpu-node-label", OSC_TITLE], words=("\\x1b",)),
    Case("alerts-namespace-huge", ["render", "alerts", "--namespace", "a" * 10_000]),
    Case("containerd-config-dir", ["render", "containerd", "--config", "{dir}"], words=("is a directory",)),
    Case("containerd-config-empty", ["render", "containerd", "--config", "{empty}"], words=("sets nothing",)),
    Case("containerd-config-binary", ["render", "containerd", "--config", "{binary}"], words=("not UTF-8",)),
    Case("containerd-config-dangling", ["render", "containerd", "--config", "{dangling}"], words=("leads nowhere",)),
    Case("containerd-config-loop", ["render", "containerd", "--config", "{loop}"], words=("leads nowhere",)),
    Case(
        "containerd-version-hostile",
        ["render", "containerd", "--config", "{toml}", "--containerd-version", "$(reboot)"],
    ),
    Case(
        "containerd-runtime-path-newline",
        ["render", "containerd", "--config", "{toml}", "--runtime-path", "/usr/bin/x\n[evil]"],
    ),
    Case("image-archive-is-a-directory", ["image", "build", "--archive", "{dir}"], words=("--archive",)),
    Case("image-wheels-missing", ["image", "build", "--archive", "{missing}", "--wheels", "{missing}"]),
    # --- the command itself, and the plugin's environment ---------------------------------
    Case("unknown-command", ["bootstrapp"], words=("No such command",)),
    Case("unknown-global-option", ["--bogus", "render"], words=("No such option",)),
    Case(
        "plugin-env-resource-name",
        ["plugin", "list"],
        env={"GPUNODE_RESOURCE_NAME": "nvidia.com/" + OSC_TITLE},
        json=False,
        words=("\\x1b",),
    ),
    Case("plugin-env-mig-strategy", ["plugin", "list"], env={"GPUNODE_MIG_STRATEGY": "mixd"}, json=False),
    Case(
        "plugin-env-xids",
        ["plugin", "serve"],
        env={"GPUNODE_HEALTH_IGNORE_XIDS": "13,abc", "GPUNODE_KUBELET_DIR": "{dir}"},
        json=False,
    ),
]
for _case in CASES:
    if (
        _case.args
        and _case.args[0] in ("bootstrap",)
        or _case.args[:1] == ["doctor"]
        and any(a.startswith(("@", "h.example", "-i")) for a in _case.args)
    ):
        _case.subprocess = True


@dataclass
class Scratch:
    root: Path
    paths: dict[str, str]
    env: dict[str, str]

    def snapshot(self) -> dict[str, tuple[int, int]]:
        seen = {}
        for path in sorted(self.root.rglob("*")):
            if path.is_symlink():
                seen[str(path)] = (0, 0)
            else:
                info = path.stat()
                seen[str(path)] = (info.st_size, info.st_mtime_ns)
        return seen


def _scratch(tmp_path: Path, case: Case) -> Scratch:
    home, cwd, tmp, given = (tmp_path / n for n in ("home", "cwd", "tmp", "given"))
    for directory in (home, cwd, tmp, given):
        directory.mkdir()
    (given / "a-directory").mkdir()
    (given / "empty").write_bytes(b"")
    (given / "binary").write_bytes(bytes(range(256)) * 8)
    (given / "dangling").symlink_to(given / "no-such-file")
    (given / "loop-a").symlink_to(given / "loop-b")
    (given / "loop-b").symlink_to(given / "loop-a")
    (given / "config.toml").write_text('version = 2\n[plugins."io.containerd.grpc.v1.cri"]\n')
    inventory = given / "inventory.py"
    inventory.write_text(case.inventory or "hosts = ['h.example']\n")
    paths = {
        "dir": str(given / "a-directory"),
        "missing": str(given / "missing"),
        "empty": str(given / "empty"),
        "binary": str(given / "binary"),
        "dangling": str(given / "dangling"),
        "loop": str(given / "loop-a"),
        "toml": str(given / "config.toml"),
        "inventory": str(inventory),
    }
    env = {
        "HOME": str(home),
        "XDG_STATE_HOME": str(home / ".local" / "state"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "TMPDIR": str(tmp),
        "KUBECONFIG": str(given / "no-kubeconfig"),
    }
    return Scratch(tmp_path, paths, env)


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


def _run(case: Case, scratch: Scratch, args: list[str]) -> Result:
    env = {**scratch.env, **{k: v.format(**scratch.paths) for k, v in case.env.items()}}
    if case.subprocess:
        done = subprocess.run(
            [sys.executable, "-m", "gpunode.bootstrap.cli.main", *args],
            capture_output=True,
            text=True,
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
            cwd=scratch.root / "cwd",
            stdin=subprocess.DEVNULL,
            timeout=60,
            check=False,
        )
        return Result(done.returncode, done.stdout, done.stderr)
    old_cwd = os.getcwd()
    os.chdir(scratch.root / "cwd")
    try:
        runner = CliRunner()
        outcome = runner.invoke(cli, args, env=env, prog_name="gpunode", catch_exceptions=True)
    finally:
        os.chdir(old_cwd)
    assert outcome.exception is None or isinstance(outcome.exception, SystemExit), repr(outcome.exception)
    return Result(outcome.exit_code, outcome.stdout, outcome.stderr)


def _check_message(stderr: str, words: tuple[str, ...]) -> None:
    assert "Traceback" not in stderr, stderr
    assert not any(ch in stderr for ch in "\x1b\x07\x00"), repr(stderr)
    lines = [line for line in stderr.splitlines() if line.startswith("gpunode: ")]
    assert lines, stderr
    message = lines[-1]
    assert " Fix: " in message and message.endswith("."), message
    problem = message.split(" Fix: ")[0]
    assert problem.endswith((".", "?", "!")), message
    for word in words:
        assert word in stderr, f"{word!r} not in {stderr!r}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_keeps_the_contract(case: Case, tmp_path: Path) -> None:
    scratch = _scratch(tmp_path, case)
    args = [arg.format(**scratch.paths) if "{" in arg and "}" in arg and "\\" not in arg else arg for arg in case.args]
    before = scratch.snapshot()
    modes = (["json"] if case.json else []) + (["text"] if case.text or not case.subprocess or not case.json else [])
    for mode in modes:
        if mode == "json":
            cut = args.index("--") if "--" in args else len(args)
            result = _run(case, scratch, [*args[:cut], "--output", "json", *args[cut:]])
        else:
            result = _run(case, scratch, args)
        assert result.code == case.code, f"{mode}: exit {result.code}\n{result.stdout}\n{result.stderr}"
        _check_message(result.stderr, case.words)
        assert "connecting to" not in result.stderr, "a host was contacted: " + result.stderr
        if mode == "json":
            document = json.loads(result.stdout)
            jsonschema.validate(document, SCHEMA)
            assert document["exit_code"] == case.code and document["error"]["kind"] == "bad_input", document
            assert "\x1b" not in result.stdout
        else:
            assert result.stdout == "", result.stdout
    assert scratch.snapshot() == before, "something was written"


# --- what is not bad input -----------------------------------------------------------------


def _json(args: list[str], **env: str) -> tuple[int, dict[str, object]]:
    outcome = CliRunner().invoke(cli, [*args, "--output", "json"], env=env, prog_name="gpunode")
    document = json.loads(outcome.stdout)
    jsonschema.validate(document, SCHEMA)
    return outcome.exit_code, document


def test_every_offline_command_prints_the_envelope_on_success(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('version = 2\n[plugins."io.containerd.grpc.v1.cri"]\n')
    for args in (
        ["render", "--lib-path", "/usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.535.261.03"],
        ["render", "--mode", "runtime", "--driver-version", "535.261.03", "--toleration", "dedicated=ml:NoSchedule"],
        ["render", "alerts"],
        ["render", "alerts", "--plain"],
        ["render", "dashboard"],
        ["render", "containerd", "--config", str(config)],
        ["render", "containerd", "--config", str(config), "--diff"],
    ):
        code, document = _json(args)
        assert code == 0 and document["ok"] is True and document["error"] is None, document
        assert document["command"] == " ".join(a for a in args[:2] if not a.startswith("-")), document


def test_render_toleration_reaches_the_daemonset() -> None:
    code, document = _json(
        ["render", "--mode", "runtime", "--driver-version", "535.261.03", "--toleration", "dedicated=ml:NoSchedule"]
    )
    daemonset = next(d for d in document["documents"] if d["kind"] == "DaemonSet")  # type: ignore[attr-defined]
    tolerations = daemonset["spec"]["template"]["spec"]["tolerations"]
    assert {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"} in tolerations
    assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)


def test_verify_without_a_cluster_could_not_check_and_says_so_in_json(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: x\nclusters: [{name: x, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "contexts: [{name: x, context: {cluster: x, user: x}}]\nusers: [{name: x, user: {token: t}}]\n"
    )
    code, document = _json(["verify", "n1", "--timeout", "0", "--kubeconfig", str(kubeconfig)])
    assert code == 2 and document["error"]["kind"] == "could_not_check", document  # type: ignore[index]
    assert document["nodes"] == []


def test_an_internal_error_is_one_line_and_its_trace_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gpunode.bootstrap.cli.render as render_module

    def broken(*args: object, **kwargs: object) -> str:
        raise RuntimeError("a bug \x1b]0;x\x07")

    monkeypatch.setattr(render_module, "render_manifests", broken)
    state = tmp_path / "state"
    outcome = CliRunner().invoke(
        cli,
        ["render", "--mode", "runtime", "--driver-version", "535.261.03", "--output", "json"],
        env={"XDG_STATE_HOME": str(state)},
        prog_name="gpunode",
    )
    assert outcome.exit_code == 1
    (line,) = outcome.stderr.splitlines()
    assert line.startswith("gpunode: internal error (a bug in gpunode): RuntimeError at bootstrap/cli/render.py:")
    (trace,) = (state / "gpunode").glob("crash-*.txt")
    assert str(trace) in line and "Traceback" in trace.read_text() and "a bug" in trace.read_text()
    assert oct(trace.stat().st_mode & 0o777) == "0o600"
    document = json.loads(outcome.stdout)
    jsonschema.validate(document, SCHEMA)
    assert document["error"]["kind"] == "internal"


def test_the_schema_requires_the_envelope_of_every_command() -> None:
    command_names: list[str] = []

    def walk(group: object, prefix: str) -> None:
        for name, command in getattr(group, "commands", {}).items():
            path = f"{prefix} {name}".strip()
            if name != "plugin":
                command_names.append(path)
                walk(command, path)

    walk(cli, "")
    assert set(command_names) >= {"bootstrap", "verify", "doctor", "render", "render alerts", "render containerd"}
    from gpunode.bootstrap.cli.contract import ContractCommand, ContractGroup

    def find(path: str) -> object:
        command: object = cli
        for word in path.split():
            command = command.commands[word]  # type: ignore[attr-defined]
        return command

    for path in command_names:
        command = find(path)
        assert isinstance(command, (ContractCommand, ContractGroup)), f"gpunode {path} does not keep the contract"
        if path in WITHOUT_JSON:
            continue
        output = next((p for p in command.params if p.name == "output"), None)  # type: ignore[attr-defined]
        assert output is not None and list(getattr(output.type, "choices", ())) == ["text", "json"], path


# Commands that keep the exit codes and messages but have no --output json yet, and why.
WITHOUT_JSON = {
    "image": "a group: its subcommand prints",
}


@pytest.mark.parametrize("args", [[], ["plugin"], ["image"], ["render", "--bogus"]])
def test_a_bare_group_shows_its_help_and_exits_2(args: list[str]) -> None:
    outcome = CliRunner().invoke(cli, args, prog_name="gpunode")
    assert outcome.exit_code == 2 and "Traceback" not in outcome.stderr
    if args[-1:] != ["--bogus"]:
        assert outcome.stderr.startswith("Usage: gpunode") and "\\n" not in outcome.stderr


def test_reports_escape_what_hosts_said_and_files_for_pipes_stay_verbatim() -> None:
    from gpunode.bootstrap.cli.contract import EXIT_OK, ContractCommand, Outcome

    said = "step output from a host: \x1b]0;owned\x07\ttab\nnext line"

    @click.command("report", cls=ContractCommand)
    @click.option("--verbatim", is_flag=True)
    def report(verbatim: bool) -> Outcome:
        return Outcome(EXIT_OK, {}, said, verbatim=verbatim)

    escaped = CliRunner().invoke(report, [])
    assert escaped.exit_code == 0 and "\x1b" not in escaped.stdout and "\x07" not in escaped.stdout
    assert "\\x1b]0;owned\\x07\ttab\nnext line" in escaped.stdout
    raw = CliRunner().invoke(report, ["--verbatim"])
    assert raw.stdout == said + "\n"


def _setting_names() -> list[str]:
    from dataclasses import fields

    from gpunode.bootstrap.core.settings import NodeSettings

    return [f.name for f in fields(NodeSettings)]


@pytest.mark.parametrize("source", ["flag", "inventory data"])
@pytest.mark.parametrize("name", _setting_names())
def test_every_setting_from_every_source_refuses_a_hostile_value(name: str, source: str) -> None:
    """Every node setting, from the command line and from inventory data, refuses a value
    carrying a terminal escape, names its source, and shows the value escaped. (The table
    above runs representatives of these through the whole command; this covers all.)"""
    from pyinfra.api.inventory import Inventory

    from gpunode.bootstrap.errors import UserError
    from gpunode.bootstrap.orchestration.targets import check_inventory

    hostile = "/x" + OSC_TITLE + "; touch /tmp/pwned"
    if source == "flag":
        inventory = Inventory(([("h1.example", {})], {}))
        overrides = {name: hostile}
        where = "command line: host h1.example"
    else:
        inventory = Inventory(([("h1.example", {f"gpunode_{name}": hostile})], {}))
        overrides = {}
        where = "fleet.py: host h1.example"
    with pytest.raises(UserError) as raised:
        check_inventory(inventory, overrides, "fleet.py" if source != "flag" else "command line")
    from gpunode.bootstrap.cli.messages import one_paragraph, problem_and_fix

    shown = one_paragraph(*problem_and_fix(raised.value))
    assert where in shown and name in shown.replace("-", "_"), shown
    assert "\x1b" not in shown and "\x07" not in shown, shown
