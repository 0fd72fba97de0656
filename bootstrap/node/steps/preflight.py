"""Step preflight: what the host is, read only; a host that cannot be a GPU node stops here."""

from __future__ import annotations

from gpunode.bootstrap.core.containerd.plan import parse_containerd_version
from gpunode.bootstrap.core.settings import NodeSettings
from gpunode.bootstrap.errors import GpunodeError
from gpunode.bootstrap.node.steps.base import NodeFacts, NodeStep, StepPlan


def plan_preflight(node: NodeFacts, settings: NodeSettings) -> StepPlan:
    facts = node.host
    plan = StepPlan("preflight")
    gpus = facts.gpus
    if gpus:
        names = sorted({gpu.name for gpu in gpus})
        found = f"{len(gpus)} NVIDIA GPU{'s' if len(gpus) > 1 else ''} ({', '.join(names)})"
    elif settings.allow_no_gpu:
        found = "no NVIDIA GPU on the PCI bus (continuing: --allow-no-gpu)"
    else:
        plan.failed = (
            "no NVIDIA GPU on the PCI bus of this host, so there is nothing to set up. "
            "Fix: check `lspci -d 10de:` on the host (a GPU passed through to a VM must be "
            "attached to it), or pass --allow-no-gpu to set up the software anyway"
        )
        return plan
    if facts.os.family == "unknown":
        plan.failed = f"gpunode does not support {facts.os.describe()}. Fix: use Debian, Ubuntu or a RHEL-family host"
        return plan
    parts = [found, facts.os.describe(), f"kernel {facts.kernel_release} {facts.arch}"]
    if facts.containerd.version_text:
        try:
            parts.append("containerd " + ".".join(map(str, parse_containerd_version(facts.containerd.version_text))))
        except GpunodeError:
            parts.append(facts.containerd.version_text)
    elif not facts.is_k3s:
        if not settings.install_containerd:
            plan.failed = (
                "no container runtime on this host (no containerd, no k3s): pods could never use the "
                "GPUs, so gpunode changes nothing. Fix: pass --install-containerd to install the "
                "distribution's containerd (configured as kubeadm's documentation says), or install the "
                "runtime your kubelet uses, then run gpunode again"
            )
            return plan
        parts.append("no containerd (--install-containerd: the container-runtime step installs it)")
    if facts.module_version:
        parts.append(f"nvidia module {facts.module_version} loaded")
    plan.unchanged = ", ".join(parts)
    if not facts.kubelet.present and not facts.is_k3s:
        plan.notes.append(
            "no kubelet on this host: the node steps can run, but the cluster steps will find no node "
            "for it until a kubelet here joins the cluster (kubeadm join, or k3s)"
        )
    if "nouveau" in facts.loaded_modules:
        plan.notes.append("nouveau is loaded: it holds the GPUs until the host reboots with it blacklisted")
    if facts.secure_boot and settings.kernel_module == "dkms":
        plan.notes.append(
            "Secure Boot is on: a DKMS-built nvidia module loads only if it is signed with a "
            "key enrolled in MOK (mokutil --import); otherwise use signed precompiled modules"
        )
    return plan


STEP = NodeStep("preflight", "preflight", plan_preflight)
