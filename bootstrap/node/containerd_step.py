"""Step containerd: the `nvidia` runtime in the host's real config, safely.

The core merge decides the new file(s). On the host they are written atomically with a
backup, validated with the host's own `containerd config dump` (the runtime must be
there, as asked, in the *effective* config), and containerd is restarted only when the
effective config changed. If validation or the restart fails, the backup goes back and
containerd is started again on the old config, and the step fails loudly.
"""

from __future__ import annotations

import shlex
import time

from pyinfra.api.command import FunctionCommand, StringCommand
from pyinfra.api.host import Host
from pyinfra.api.state import State

from gpunode.bootstrap.core.containerd.effective import runtime_problems
from gpunode.bootstrap.core.containerd.plan import (
    DEFAULT_DROPIN_PATH,
    MergePlan,
    RuntimeSettings,
    plan_runtime_merge,
)
from gpunode.bootstrap.core.host.facts import HostFacts
from gpunode.bootstrap.core.settings import NodeSettings
from gpunode.bootstrap.errors import GpunodeError, HostStateError
from gpunode.bootstrap.node.remote_files import FileWrite, restore_files_script, sh, write_files_script
from gpunode.bootstrap.node.steps import StepPlan, backup_dir

K3S_CONFIG = "/var/lib/rancher/k3s/agent/etc/containerd/config.toml"
# How long a restarted containerd gets to answer before the restart counts as failed.
RESTART_DEADLINE = 30.0


def containerd_managed_paths(settings: NodeSettings) -> tuple[str, ...]:
    return (DEFAULT_DROPIN_PATH, K3S_CONFIG)


def runtime_settings(settings: NodeSettings) -> RuntimeSettings:
    return RuntimeSettings(
        binary_name=settings.runtime_path,
        set_default_runtime=settings.set_default_runtime,
        in_place=settings.containerd_in_place,
    )


def plan_containerd_step(facts: HostFacts, settings: NodeSettings) -> StepPlan:
    plan = StepPlan("containerd")
    wanted = runtime_settings(settings)
    if facts.is_k3s:
        return _plan_k3s(facts, wanted, plan)
    containerd = facts.containerd
    if containerd.binary is None or containerd.version_text is None:
        plan.failed = (
            "containerd is not installed on this host; gpunode configures the containerd "
            "your kubelet uses. Fix: install containerd (Debian: apt-get install "
            "containerd) and set up the kubelet, then run gpunode again"
        )
        return plan
    if containerd.dump_error is not None:
        plan.failed = (
            f"containerd cannot load its current configuration, so gpunode leaves it "
            f"untouched: {containerd.dump_error.strip().splitlines()[-1]}. Fix: repair "
            f"{containerd.config_path} (`containerd config dump` must succeed), then run "
            "gpunode again"
        )
        return plan
    try:
        merge = plan_runtime_merge(
            containerd.config_text,
            containerd_version=containerd.version_text,
            settings=wanted,
            config_path=containerd.config_path,
            dropin_text=facts.managed_file(wanted.dropin_path),
        )
    except GpunodeError as exc:
        plan.failed = str(exc) + " Nothing was written."
        return plan
    plan.notes += list(merge.notes)
    where = " and ".join(change.path for change in merge.files) or containerd.config_path
    if not merge.changed:
        problems = (
            runtime_problems(containerd.dump_text or "", binary_name=wanted.binary_name) if containerd.dump_text else ()
        )
        if problems:
            plan.failed = (
                "the files already say what gpunode would write, but containerd's "
                "effective config disagrees: "
                + " ".join(problems)
                + " Fix: look for another file in `imports` that overrides the runtime"
            )
            return plan
        plan.unchanged = f'runtime "{wanted.runtime_name}" -> {wanted.binary_name} in {where}'
        return plan
    writes = [FileWrite(change.path, change.new_text) for change in merge.files if change.changed]
    plan.diff = merge.diff
    plan.changes.append(
        f'add runtime "{wanted.runtime_name}" -> {wanted.binary_name}: write ' + ", ".join(w.path for w in writes)
    )
    plan.commands.append(
        FunctionCommand(
            apply_runtime_change,
            (),
            {
                "writes": writes,
                "backup": backup_dir("containerd"),
                "config_path": containerd.config_path,
                "runtime_name": wanted.runtime_name,
                "binary_name": wanted.binary_name,
                "old_dump": containerd.dump_text,
                "restart_command": settings.containerd_restart_command,
                "has_systemd": facts.has_systemd,
                "messages": plan.notes,
            },
        )
    )
    plan.unchanged = f'runtime "{wanted.runtime_name}" -> {wanted.binary_name} in {where}'
    return plan


def _plan_k3s(facts: HostFacts, wanted: RuntimeSettings, plan: StepPlan) -> StepPlan:
    generated = facts.managed_file(K3S_CONFIG)
    try:
        merge: MergePlan = plan_runtime_merge(
            generated,
            containerd_version=facts.containerd.version_text or "1.7.0",
            settings=wanted,
            config_path=K3S_CONFIG,
            k3s=True,
        )
    except GpunodeError as exc:
        plan.failed = str(exc) + " Nothing was written."
        return plan
    plan.notes += list(merge.notes)
    has_runtime = generated is not None and f"runtimes.{wanted.runtime_name}]" in generated.replace('"', "")
    if has_runtime:
        plan.unchanged = f'k3s generated the runtime "{wanted.runtime_name}" itself ({K3S_CONFIG})'
        return plan
    service = "k3s" if facts.k3s_binary and any("server" in arg for arg in facts.kubelet.args) else "k3s-agent"
    if facts.has_systemd:
        plan.commands.append(f"systemctl restart {service} || systemctl restart k3s")
        plan.changes.append(
            f"restart {service}: k3s adds the nvidia runtime itself when it finds nvidia-container-runtime at start"
        )
    else:
        plan.skipped = (
            "k3s adds the nvidia runtime itself at its next start; no systemd here to restart it. Fix: restart k3s"
        )
    return plan


# --------------------------------------------------------------------------------------
# What runs on the host when the runtime changes
# --------------------------------------------------------------------------------------


def _run(host: Host, command: str) -> tuple[bool, str]:
    status, output = host.run_shell_command(
        StringCommand(command),
        _sudo=bool(host.data.get("_sudo")),
    )
    text = "\n".join(output.stdout_lines + output.stderr_lines)
    return bool(status), text


def _dump(host: Host, config_path: str) -> tuple[bool, str]:
    return _run(host, f"containerd --config {shlex.quote(config_path)} config dump")


def _restart(host: Host, restart_command: str | None, has_systemd: bool) -> tuple[bool, str]:
    if restart_command:
        ok, output = _run(host, restart_command)
    elif has_systemd:
        ok, output = _run(host, "systemctl restart containerd")
    else:
        return False, "no systemd"
    if not ok:
        return False, output
    return _wait_healthy(host)


def _wait_healthy(host: Host) -> tuple[bool, str]:
    """containerd answers on its socket (ctr) within the deadline."""
    deadline = time.monotonic() + RESTART_DEADLINE
    output = ""
    while time.monotonic() < deadline:
        ok, output = _run(
            host,
            "ctr --connect-timeout 2s --timeout 5s version >/dev/null 2>&1 "
            "|| { command -v ctr >/dev/null || pgrep -x containerd; }",
        )
        if ok:
            return True, ""
        time.sleep(0.5)
    return False, output or "containerd did not answer after the restart"


def apply_runtime_change(
    state: State,
    host: Host,
    *,
    writes: list[FileWrite],
    backup: str,
    config_path: str,
    runtime_name: str,
    binary_name: str,
    old_dump: str | None,
    restart_command: str | None,
    has_systemd: bool,
    messages: list[str],
) -> bool:
    ok, output = _run(host, sh(write_files_script(writes, backup)))
    if not ok:
        messages.append(f"writing the config failed: {output}")
        _run(host, sh(restore_files_script(writes, backup)))
        return False
    valid, dump = _dump(host, config_path)
    problems: tuple[str, ...]
    try:
        problems = (
            runtime_problems(dump, runtime_name=runtime_name, binary_name=binary_name)
            if valid
            else (f"`containerd config dump` failed: {dump.strip()}",)
        )
    except HostStateError as exc:
        problems = (str(exc),)
    if problems:
        _run(host, sh(restore_files_script(writes, backup)))
        messages.append(
            f"the new config did not validate, so the previous files are back (backup {backup}): " + " ".join(problems)
        )
        return False
    messages.append(f"validated with `containerd config dump`; backup of the previous files in {backup}")
    if old_dump is not None and dump.strip() == old_dump.strip():
        messages.append("the effective config did not change: containerd not restarted")
        return True
    restarted, why = _restart(host, restart_command, has_systemd)
    if restarted:
        messages.append("containerd restarted and answering")
        return True
    if why == "no systemd":
        messages.append(
            "no systemd on this host and no --containerd-restart-command: containerd "
            "was NOT restarted; restart it yourself to load the runtime"
        )
        return True
    _run(host, sh(restore_files_script(writes, backup)))
    back, again = _restart(host, restart_command, has_systemd)
    messages.append(
        f"restarting containerd failed ({why.strip() or 'no output'}); the previous config is back "
        + ("and containerd is running on it again" if back else f"but containerd did not come back: {again}")
    )
    return False


__all__ = ["apply_runtime_change", "containerd_managed_paths", "plan_containerd_step"]
