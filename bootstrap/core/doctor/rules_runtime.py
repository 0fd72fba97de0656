"""Doctor rules over the host's container side: the NVIDIA container toolkit, containerd and
its nvidia runtime, the kubelet and its device-plugins directory. Pure: a DoctorCase in,
verdicts added to Findings (rules_host.py calls these after the driver's rules)."""

from __future__ import annotations

from collections.abc import Sequence

from gpunode.bootstrap.core.containerd.effective import (
    default_runtime_name,
    runtime_binary,
    runtime_problems,
    runtimes,
)
from gpunode.bootstrap.core.doctor.engine import Findings
from gpunode.bootstrap.core.doctor.evidence import DoctorCase
from gpunode.bootstrap.core.host.facts import HostFacts
from gpunode.bootstrap.core.kube.view import dig
from gpunode.bootstrap.errors import HostStateError

K3S_CONTAINERD_CONFIG = "/var/lib/rancher/k3s/agent/etc/containerd/config.toml"
KUBELET_SOCKET = "kubelet.sock"


# --- toolkit and containerd ---------------------------------------------------------------


def runtime_name_for(case: DoctorCase) -> str:
    """The containerd runtime GPU pods use: RuntimeClass nvidia's handler, else `nvidia`."""
    view = case.cluster
    for runtime_class in view.runtime_classes if view else ():
        if dig(runtime_class, "metadata", "name") == "nvidia" and isinstance(runtime_class.get("handler"), str):
            return str(runtime_class["handler"])
    return case.runtime_name


def effective_config(facts: HostFacts) -> tuple[str | None, str]:
    """(containerd's effective config text or None, where it comes from)."""
    if facts.is_k3s:
        text = facts.managed_file(K3S_CONTAINERD_CONFIG)
        return text, f"k3s's rendered {K3S_CONTAINERD_CONFIG}"
    return facts.containerd.dump_text, "`containerd config dump`"


def kubelet_runtime(facts: HostFacts) -> str | None:
    """The CRI endpoint the kubelet is told to use, when it is not containerd."""
    endpoint = facts.kubelet.flag("container-runtime-endpoint") or ""
    for other in ("crio", "cri-dockerd", "dockershim"):
        if other in endpoint:
            return endpoint
    return None


def toolkit_rules(case: DoctorCase, facts: HostFacts, findings: Findings) -> None:
    diag = facts.diagnostics
    text, _ = effective_config(facts)
    binary: str | None = None
    if text:
        try:
            runtime = runtimes(text).get(runtime_name_for(case))
        except HostStateError:
            runtime = None
        if runtime is not None:
            binary = runtime_binary(runtime)
    present = {path for path, ok in (diag.runtime_binaries.items() if diag else ()) if ok}
    packages = [f"{n} {v}" for n, v in sorted(facts.packages.items()) if n.startswith("nvidia-container-toolkit")]
    if binary and binary.startswith("/") and diag is not None and diag.runtime_binaries.get(binary) is False:
        findings.add(
            "F17",
            cause=f"containerd's {runtime_name_for(case)} runtime runs {binary}, which does not exist "
            "on this host: pods with runtimeClassName nvidia cannot start.",
            evidence=[f"BinaryName = {binary!r}: missing", *(f"installed: {p}" for p in packages)],
            fix="Install the NVIDIA container toolkit (`gpunode bootstrap HOST`, or nvidia-container-toolkit "
            "from NVIDIA's repository) or point BinaryName at its nvidia-container-runtime.",
            link="toolkit",
        )
        return
    installed = (
        facts.toolkit_runtime is not None
        or bool(packages)
        or any("nvidia-container-runtime" in path for path in present)
    )
    if not installed:
        findings.add(
            "F17",
            cause="The NVIDIA container toolkit is not installed: there is no "
            "nvidia-container-runtime for containerd to run GPU containers with.",
            evidence=["`command -v nvidia-container-runtime`: nothing", "no nvidia-container-toolkit package"],
            fix="Install it: `gpunode bootstrap HOST` (NVIDIA's repository, or --toolkit-packages DIR "
            "on an air-gapped host).",
            link="toolkit",
        )


def containerd_rules(case: DoctorCase, facts: HostFacts, findings: Findings) -> None:
    other = kubelet_runtime(facts)
    if other is not None:
        findings.skip("containerd runtime", f"the kubelet uses {other}, not containerd; doctor checks containerd only")
        return
    name = runtime_name_for(case)
    text, source = effective_config(facts)
    if facts.is_k3s:
        if text is None:
            findings.skip(
                "containerd runtime (k3s)",
                f"{K3S_CONTAINERD_CONFIG} is missing: k3s has not rendered its containerd config (is k3s running?)",
            )
            return
    else:
        containerd = facts.containerd
        if containerd.binary is None:
            findings.add(
                "CONTAINERD-MISSING",
                cause="containerd is not installed on this host.",
                evidence=["`command -v containerd`: nothing"],
            )
            return
        if containerd.dump_error is not None:
            first = containerd.dump_error.strip().splitlines()[0] if containerd.dump_error.strip() else ""
            findings.add(
                "CONTAINERD-CONFIG",
                cause=f"containerd cannot load its config {containerd.config_path}: "
                "`containerd config dump` fails, so a restart would fail too.",
                evidence=[f"containerd config dump: {line}" for line in containerd.dump_error.strip().splitlines()[:4]]
                or [first],
                fix=f"Fix {containerd.config_path} where the error points (or restore the last good copy "
                "from /var/lib/gpunode/backups); `gpunode render containerd --config FILE` shows a "
                "correct merge.",
            )
            return
        if text is None:
            findings.skip("containerd runtime", "`containerd config dump` printed nothing")
            return
    try:
        found = runtimes(text)
        problems = runtime_problems(text, runtime_name=name)
        default = default_runtime_name(text)
    except HostStateError as exc:
        findings.add(
            "CONTAINERD-CONFIG",
            cause=f"containerd's effective config cannot be read: {exc.problem}",
            evidence=[source],
            fix=exc.fix or "",
        )
        return
    names = ", ".join(sorted(found)) or "none"
    for problem in problems:
        if problem.startswith("containerd has no runtime"):
            if name != "nvidia" and "nvidia" in found:
                findings.add(
                    "F17",
                    cause=f"RuntimeClass nvidia's handler is \"{name}\", but containerd's NVIDIA runtime "
                    'is named "nvidia": pods with runtimeClassName nvidia fail with `no runtime for '
                    f'"{name}" is configured`.',
                    evidence=[f"{source}: runtimes {names}", f"RuntimeClass nvidia: handler {name}"],
                    fix="Set the RuntimeClass handler to the containerd runtime's name: `kubectl patch "
                    "runtimeclass nvidia ...` cannot change a handler, so delete and re-create it with "
                    "handler: nvidia (`gpunode render` prints it).",
                    link="runtimeclass",
                )
            else:
                findings.add(
                    "F17",
                    cause=f'containerd has no runtime "{name}": pods with runtimeClassName nvidia fail '
                    f'with `no runtime for "{name}" is configured`.',
                    evidence=[f"{source}: runtimes {names}"],
                    fix="Add the runtime and restart containerd: `gpunode bootstrap HOST` (validated, "
                    "restarts only on change), or see `gpunode render containerd --config FILE`.",
                )
        elif "SystemdCgroup" in problem:
            findings.add(
                "RUNTIME-CGROUP",
                cause=problem,
                evidence=[f"{source}: runtime {name}"],
            )
        elif "runtime_type" in problem:
            findings.add(
                "RUNTIME-TYPE",
                cause=problem,
                evidence=[f"{source}: runtime {name}"],
            )
        else:
            findings.add(
                "F17",
                cause=f'containerd\'s "{name}" runtime does not run the NVIDIA container runtime, so '
                "containers get no NVIDIA devices or libraries.",
                evidence=[problem],
                fix="Set its BinaryName to the toolkit's nvidia-container-runtime (gpunode bootstrap does).",
            )
    if default == name and name in found:
        findings.add(
            "F4",
            cause=f'containerd\'s default runtime is "{name}": pods without a RuntimeClass are trusted '
            "to get GPUs from it, which does not hold for every pod created through CRI.",
            evidence=[f"{source}: default_runtime_name = {default!r}"],
            fix="Be explicit instead: runtimeClassName: nvidia on GPU pods, and the library mount (or "
            "runtimeClassName) on the device plugin; keep runc the default.",
            severity="info",
            link="containerd",
        )


def kubelet_host_rules(case: DoctorCase, facts: HostFacts, findings: Findings) -> None:
    kubelet = facts.kubelet
    node_known = case.cluster is not None and case.cluster.node is not None
    if not kubelet.running:
        if node_known:
            findings.add(
                "KUBELET-DOWN",
                cause=f"No kubelet process runs on {facts.hostname}, yet the cluster has "
                "its node: nothing can register devices.",
                evidence=["no kubelet, k3s or k3s-agent process"],
            )
        else:
            findings.add(
                "KUBELET-MISSING",
                cause=f"No kubelet runs on {facts.hostname}: it is not (yet) a Kubernetes "
                "node, and a device plugin has nothing to register with.",
                evidence=["no kubelet, k3s or k3s-agent process"],
            )
        return
    socket = f"{kubelet.root_dir}/device-plugins/{KUBELET_SOCKET}"
    if socket not in kubelet.device_plugin_sockets:
        findings.add(
            "KUBELET-SOCKET",
            cause=f"The kubelet runs but serves no {socket}: device plugins cannot register.",
            evidence=[
                f"kubelet {kubelet.process} --root-dir {kubelet.root_dir}",
                "device-plugins: " + (", ".join(kubelet.device_plugin_sockets) or "no sockets"),
            ],
        )


def plugin_sockets(facts: HostFacts) -> list[str]:
    return [path for path in facts.kubelet.device_plugin_sockets if not path.endswith("/" + KUBELET_SOCKET)]


def gpu_count_hint(case: DoctorCase) -> int | None:
    if case.host is not None and case.host.gpus:
        return len(case.host.gpus)
    if case.record is not None and case.record.gpu_count:
        return case.record.gpu_count
    return None


def describe_sockets(facts: HostFacts) -> Sequence[str]:
    diag = facts.diagnostics
    lines = []
    for path in facts.kubelet.device_plugin_sockets:
        stamp = diag.socket_mtimes.get(path) if diag else None
        age = f" (created {diag.now - stamp} s ago)" if diag and diag.now and stamp else ""
        lines.append(f"socket {path}{age}")
    return lines
