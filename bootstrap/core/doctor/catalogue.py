"""Every verdict `gpunode doctor` can give, in one table: its link in the chain, its severity,
what breaks, what the operator sees, and what fixes it.

A rule names the verdict by id and gives what it found (the cause as it holds on this node,
the evidence, a fix when it can say more than the table); the link and severity come from
here. docs/failure-modes.md is generated from this table (tests/unit/test_catalogue.py checks
both that it is current and that every id here can be emitted by a rule, and that no rule
emits an id missing here).

Adding a verdict: one Entry below, and the rule that emits it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Severity = Literal["critical", "warning", "info"]
SEVERITIES: tuple[Severity, ...] = ("critical", "warning", "info")

# The chain, bottom up (docs/failure-modes.md). Every verdict sits on one link; the lowest
# broken link comes first, since it explains the ones above it.
LINKS: tuple[str, ...] = (
    "host",  # the machine itself: GPUs on the bus
    "driver",  # kernel module + libnvidia-ml
    "toolkit",  # NVIDIA container toolkit
    "containerd",  # containerd and its nvidia runtime
    "runtimeclass",  # RuntimeClass nvidia -> containerd runtime
    "deployment",  # a device plugin DaemonSet (or host service) that reaches the node
    "plugin",  # the plugin process: NVML, devices, its configuration
    "registration",  # kubelet, its device-plugins socket, Register
    "allocatable",  # the node's Allocatable nvidia.com/gpu
    "workload",  # the pod that asks for a GPU
)


@dataclass(frozen=True)
class Entry:
    id: str
    link: str  # where it sits in the chain
    severity: Severity
    breaks: str  # what breaks, in a few words
    seen: str  # what the operator sees
    fix: str  # what fixes it (a rule may say it more precisely for the case at hand)
    # Other links the same failure can show at (F17: the toolkit, the runtime, the handler).
    also_at: tuple[str, ...] = ()

    @property
    def links(self) -> tuple[str, ...]:
        return (self.link, *self.also_at)


_ENTRIES = (
    # --- the failure modes every GPU node meets (F1 ... F17) ---------------------------------
    Entry(
        "F1",
        "plugin",
        "critical",
        "the device plugin runs under plain runc: no NVIDIA libraries, NVML cannot load",
        "plugin log: library not found (`could not load NVML library`, `Incompatible strategy detected auto`, "
        "`nvml_init_failed reason=library_not_found`); its pod mounts no libnvidia-ml and names no "
        "RuntimeClass; Allocatable absent",
        "Mount the host's real libnvidia-ml.so.<version> (resolve the symlink chain on the host) as a hostPath "
        "of type File at /usr/local/lib/libnvidia-ml.so.1 with LD_LIBRARY_PATH=/usr/local/lib, or run the pod "
        "with runtimeClassName: nvidia; `gpunode render` writes either.",
    ),
    Entry(
        "F2",
        "plugin",
        "critical",
        "the library mount is a symlink, mounts nothing or fails; or the host's library chain is broken",
        "the pod mounts libnvidia-ml.so.1 (a link on the host), a FailedMount event on the library volume, a "
        "mount outside LD_LIBRARY_PATH; on the host a dangling or looping chain",
        "Resolve the symlink chain on the host (`readlink -f`), mount that real file (hostPath type File) at "
        "/usr/local/lib/libnvidia-ml.so.1 with LD_LIBRARY_PATH=/usr/local/lib; on the host, reinstall the "
        "driver's NVML package so the chain ends at a file, then run ldconfig.",
        also_at=("driver",),
    ),
    Entry(
        "F3",
        "plugin",
        "critical",
        "a system library directory is mounted over the image's",
        "a hostPath of /usr/lib/<triplet> (or /lib, /usr/lib64) onto the same directory; `exec ... no such "
        "file or directory`, GLIBC_PRIVATE errors",
        "Never mount a system library directory: mount only the real libnvidia-ml.so.<version> (hostPath type File) at /usr/local/lib/libnvidia-ml.so.1 with LD_LIBRARY_PATH=/usr/local/lib (`gpunode render` does).",
    ),
    Entry(
        "F4",
        "plugin",
        "critical",
        "containerd's default runtime is trusted to give pods the GPU",
        "the host's default runtime is nvidia and the plugin or GPU pod, with no RuntimeClass or mount, got "
        "no NVML (works with nerdctl --gpus, not through CRI); alone it is an info note",
        "Be explicit: runtimeClassName: nvidia on GPU pods, and an explicit library mount (or runtimeClassName) "
        "for the device plugin.",
        also_at=("containerd", "workload"),
    ),
    Entry(
        "F5",
        "plugin",
        "critical",
        "/dev/nvidia* visible through a /dev mount, but the device cgroup denies it",
        "NVML `Insufficient Permissions` (or Unknown Error) in a pod that mounts /dev unprivileged",
        "Run the plugin privileged (the mount approach needs it), or with runtimeClassName: nvidia so the "
        "toolkit's hook adds the devices.",
    ),
    Entry(
        "F6",
        "workload",
        "critical",
        "a GPU pod runs under plain runc",
        "a pod with an nvidia.com/gpu limit and no runtimeClassName: `nvidia-smi: not found`, exit 127, no "
        "/dev/nvidia0",
        "Add `runtimeClassName: nvidia` to the pod (or use CDI).",
    ),
    Entry(
        "F7",
        "plugin",
        "critical",
        "MIG capabilities unreadable, or the MIG strategy does not fit the GPUs",
        "plugin reason `mig_no_permission` / `mig_strategy_mismatch`, NVIDIA's `invalid MIG configuration`; a "
        "pod's UnexpectedAdmissionError with `nvml: Insufficient Permissions`",
        "Give the plugin MIG monitoring: NVIDIA_MIG_MONITOR_DEVICES=all and capability SYS_ADMIN, MIG strategy mixed where MIG and non-MIG GPUs are mixed.",
        also_at=("workload",),
    ),
    Entry(
        "F8",
        "deployment",
        "critical",
        "the plugin DaemonSet is gone while a status says ready",
        "no plugin DaemonSet, while the GPU Operator's ClusterPolicy says ready (or the node carries "
        "gpunode's driver label)",
        "Re-apply it: `gpunode bootstrap HOST` (or `gpunode render --plugin` and kubectl apply); judge the "
        "DaemonSet and the node, never a status field alone.",
    ),
    Entry(
        "F9",
        "allocatable",
        "critical",
        "Allocatable nvidia.com/gpu is 0 and the key is kept",
        '`allocatable["nvidia.com/gpu"] == "0"` on a GPU node; alerts written as absent(...) never fire',
        "Find the plugin that went away or the GPUs it reports Unhealthy (the verdicts below this one); alert "
        "on == 0 for GPU nodes, and on absent separately.",
    ),
    Entry(
        "F10",
        "workload",
        "info",
        "NVML `Unknown Error` in a debug pod is not a dead driver",
        "a node-debugger-* (or GPU-less) pod's `Failed to initialize NVML: Unknown Error`",
        "Judge the driver from the host (`gpunode doctor HOST`, or nvidia-smi over SSH) or from a pod with runtimeClassName: nvidia and nvidia.com/gpu: 1; a debug pod gets no GPU device nodes.",
    ),
    Entry(
        "F11",
        "plugin",
        "critical",
        "the plugin hides its NVML failure and keeps running (FAIL_ON_INIT_ERROR=false)",
        "the plugin pod is Running, Allocatable absent or 0, its log has the NVML failure; the failure itself "
        "is its own verdict, listed first",
        "Make init errors fatal (FAIL_ON_INIT_ERROR=true, GPUNODE_FAIL_ON_INIT_ERROR=true, Helm "
        "failOnInitError: true) so a failure shows as a crash, and fix the failure named with it.",
    ),
    Entry(
        "F12",
        "registration",
        "critical",
        "the kubelet restarted and the plugin never registered again",
        "kubelet younger than the plugin, no plugin socket in device-plugins, Allocatable 0, no "
        "re-registration in the plugin's log",
        "Restart the plugin now (its pod, or `systemctl restart gpunode-device-plugin`); run a plugin that "
        "watches kubelet.sock and registers again (gpunode's does).",
    ),
    Entry(
        "F13",
        "driver",
        "critical",
        "the driver does not initialise",
        "nouveau loaded; Secure Boot rejecting an unsigned module; a GPU too old for the branch; module not "
        "loaded; NVML finds no GPU; plugin reason `driver_not_loaded` / `no_devices`",
        "Blacklist nouveau and rebuild the initramfs, pick a branch that supports the GPU, sign the module or "
        "use signed precompiled modules; reboot.",
    ),
    Entry(
        "F14",
        "driver",
        "critical",
        "the loaded kernel module and the NVML library disagree (reboot required)",
        "`Failed to initialize NVML: Driver/library version mismatch`; the loaded module's version differs "
        "from the library file's",
        "Reboot so that the kernel module matches the library, then run `gpunode bootstrap` again so the "
        "device plugin mounts the new library.",
    ),
    Entry(
        "F15",
        "deployment",
        "critical",
        "a taint on the GPU node nobody tolerates",
        "the plugin DaemonSet schedules 0 pods on the node; a pod's FailedScheduling `had untolerated taint`",
        "Tolerate the taint: `tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]` "
        "(gpunode bootstrap --toleration), or remove it.",
        also_at=("workload",),
    ),
    Entry(
        "F16",
        "workload",
        "critical",
        "the pod asks for no GPU",
        "a pod with no nvidia.com/gpu limit runs anywhere, without a GPU",
        "Add `resources: limits: nvidia.com/gpu: 1` to the container that needs the GPU (and runtimeClassName: nvidia).",
    ),
    Entry(
        "F17",
        "containerd",
        "critical",
        "toolkit missing, no nvidia runtime in containerd, or the RuntimeClass handler names another runtime",
        'pods with runtimeClassName fail: `no runtime for "nvidia" is configured`; no toolkit package or '
        "runtime binary on the host",
        "Install the toolkit and add the runtime (`gpunode bootstrap HOST`), and make the RuntimeClass "
        "handler name the runtime containerd has.",
        also_at=("toolkit", "runtimeclass"),
    ),
    # --- the host and its driver --------------------------------------------------------------
    Entry(
        "NO-GPU",
        "host",
        "critical",
        "no NVIDIA GPU on the PCI bus",
        "`lspci -d 10de:` lists no GPU",
        "Check that the GPU is seated and enabled (BIOS, VM passthrough), or run doctor on a GPU host.",
    ),
    Entry(
        "NO-GPU-NODE",
        "host",
        "warning",
        "no node of the cluster is a GPU node",
        "no node carries a GPU label or advertises nvidia.com/gpu",
        "Run `gpunode doctor HOST` against the machine that should be a GPU node, or `gpunode bootstrap HOST` to make it one.",
    ),
    Entry(
        "DRIVER-MISSING",
        "driver",
        "critical",
        "no NVIDIA driver installed",
        "no nvidia module, no driver package, no libnvidia-ml.so.1",
        "Install it: `gpunode bootstrap HOST` (the distribution's packages for a supported branch, pinned), then reboot if it says so.",
    ),
    Entry(
        "DRIVER-ERROR",
        "driver",
        "critical",
        "NVML starts on the host but fails a query",
        "the host's NVML check fails after init",
        "Read `dmesg | grep -i -e nvrm -e xid` on the host; reload the module or reboot.",
    ),
    Entry(
        "NVML-MISSING",
        "driver",
        "critical",
        "no libnvidia-ml.so.1 of the host's architecture",
        "ldconfig's cache and the library directories hold no NVML library (the driver's userspace is not installed)",
        "Reinstall the driver's NVML package (Debian: libnvidia-ml1) and run ldconfig.",
    ),
    Entry(
        "NVML-ARCH",
        "driver",
        "critical",
        "the library is built for another architecture",
        "libnvidia-ml.so.1 leads to a file of another ELF machine (the i386 copy)",
        "Install the NVML package of the host's architecture and run ldconfig.",
    ),
    Entry(
        "NVML-AMBIGUOUS",
        "driver",
        "critical",
        "several copies of libnvidia-ml.so.1 lead to different files and ldconfig names none",
        "two or more candidate chains ending at different versions",
        "Remove the copies that do not belong to the installed driver, then run ldconfig.",
    ),
    Entry(
        "NVML-UNVERSIONED",
        "driver",
        "critical",
        "libnvidia-ml.so.1 leads to a file without the driver version in its name",
        "the chain ends at a file not named libnvidia-ml.so.<version>",
        "Reinstall the driver's NVML package so libnvidia-ml.so.1 is a link to libnvidia-ml.so.<version>.",
    ),
    Entry(
        "NVML-PROBE",
        "driver",
        "critical",
        "the library probe printed nothing gpunode can read",
        "the probe's output is missing or cut off",
        "Run the probe by hand on the host with `sh -c` and read its error.",
    ),
    Entry(
        "GPU-MISSING",
        "driver",
        "warning",
        "NVML sees fewer GPUs than the PCI bus",
        "nvidia-smi lists fewer GPUs than lspci",
        "Find the missing GPU in `dmesg` (Xid 79: fallen off the bus); reseat it or reset the node.",
    ),
    Entry(
        "GPU-UNHEALTHY",
        "driver",
        "warning",
        "a GPU reports a fault",
        "Xid errors in the kernel log, a GPU in a failed state",
        "Read the Xid on the host (`dmesg | grep -i xid`): 79 (fallen off the bus) and 48/63/64/94/95 (memory errors) need a reset or reboot; the plugin recovers the others by itself.",
    ),
    # --- containerd and the RuntimeClass ------------------------------------------------------
    Entry(
        "CONTAINERD-MISSING",
        "containerd",
        "critical",
        "containerd is not installed",
        "no containerd binary on the host",
        "Install containerd (Debian: `apt-get install containerd`) and point the kubelet at it.",
    ),
    Entry(
        "CONTAINERD-CONFIG",
        "containerd",
        "critical",
        "containerd cannot load its config",
        "`containerd config dump` fails",
        "Repair the config until `containerd config dump` succeeds, then restart containerd.",
    ),
    Entry(
        "RUNTIME-TYPE",
        "containerd",
        "critical",
        "the nvidia runtime is not run through the runc v2 shim",
        "runtime_type of the nvidia runtime is not io.containerd.runc.v2",
        'Set runtime_type = "io.containerd.runc.v2" for the nvidia runtime.',
    ),
    Entry(
        "RUNTIME-CGROUP",
        "containerd",
        "warning",
        "the nvidia runtime uses another cgroup driver than runc",
        "SystemdCgroup differs between the nvidia and the runc runtime",
        "Copy SystemdCgroup from the runc runtime's options into the nvidia runtime's (gpunode bootstrap inherits it).",
    ),
    Entry(
        "RUNTIMECLASS-MISSING",
        "runtimeclass",
        "critical",
        "the RuntimeClass nvidia does not exist",
        'pods fail: `RuntimeClass "nvidia" not found`',
        "Create RuntimeClass nvidia (handler nvidia): `gpunode render` prints it.",
    ),
    # --- the device plugin's deployment and process ---------------------------------------------
    Entry(
        "DP-NONE",
        "deployment",
        "critical",
        "no device plugin serves the node",
        "no device plugin DaemonSet in the cluster and no host service",
        "Deploy one: `gpunode bootstrap HOST` (gpunode's plugin, per driver version), NVIDIA's Helm chart, or the GPU Operator.",
    ),
    Entry(
        "DP-NOT-SELECTED",
        "deployment",
        "critical",
        "no plugin DaemonSet selects the node",
        "the DaemonSets' node selectors miss the node (another driver version label)",
        "Run `gpunode bootstrap HOST` so the node gets the labels of its driver version and its DaemonSet.",
    ),
    Entry(
        "DP-NO-POD",
        "deployment",
        "critical",
        "the plugin DaemonSet selects the node but has no pod there",
        "DaemonSet desired on the node, no pod",
        "Describe the DaemonSet (`kubectl describe daemonset`) and read its events.",
    ),
    Entry(
        "HOST-PLUGIN-DOWN",
        "deployment",
        "critical",
        "the plugin's systemd service (plugin mode host) is not running",
        "gpunode-device-plugin.service inactive or failed",
        "`systemctl restart gpunode-device-plugin` and read `journalctl -u gpunode-device-plugin`.",
    ),
    Entry(
        "DP-POD-NOT-RUNNING",
        "plugin",
        "critical",
        "the plugin pod does not run",
        "the pod Pending or waiting, with its events (the GPU Operator's validators named)",
        "Read the pod's events (`kubectl describe pod`).",
    ),
    Entry(
        "DP-MOUNT",
        "plugin",
        "critical",
        "a hostPath of the plugin pod cannot be mounted",
        "FailedMount on a volume other than the library's",
        "Make the hostPath exist on the node with the type the DaemonSet asks for, or fix the DaemonSet's volume.",
    ),
    Entry(
        "DP-IMAGE",
        "plugin",
        "critical",
        "the plugin image cannot be pulled",
        "ErrImagePull, ImagePullBackOff, InvalidImageName",
        "Check the image name and tag, the registry's reachability from the node, and imagePullSecrets.",
    ),
    Entry(
        "DP-CRASH",
        "plugin",
        "critical",
        "the plugin keeps crashing for a reason gpunode does not know",
        "CrashLoopBackOff, a non-zero exit, no NVML failure in the log",
        "Read `kubectl logs --previous` of the plugin pod.",
    ),
    Entry(
        "DP-LIB-STALE",
        "plugin",
        "critical",
        "the DaemonSet mounts the previous driver's library",
        "the mounted file's version differs from the host's library after a driver upgrade",
        "Run `gpunode bootstrap HOST` again: it renders a DaemonSet for the new library.",
    ),
    Entry(
        "DP-LIB-ARCH",
        "plugin",
        "critical",
        "the library mounted into the plugin is of another architecture",
        "`wrong ELF class`, ELFCLASS32 in the plugin's log",
        "Mount the copy of the node's architecture: `readlink -f` of the x86_64 libnvidia-ml.so.1 (never the "
        "i386 one).",
    ),
    Entry(
        "DP-LIB-OLD",
        "plugin",
        "critical",
        "the library in the plugin pod is older than the plugin needs",
        "plugin reason `library_too_old`",
        "Mount the driver's current libnvidia-ml.so.<version>; after a driver upgrade re-run `gpunode "
        "bootstrap` so the mount follows.",
    ),
    Entry(
        "DP-LIB-UNUSABLE",
        "plugin",
        "critical",
        "the library in the plugin pod cannot be loaded",
        "plugin reason `library_unusable`, a loader error",
        "Mount the host's real libnvidia-ml.so.<version> as a hostPath of type File at "
        "/usr/local/lib/libnvidia-ml.so.1 with LD_LIBRARY_PATH=/usr/local/lib.",
    ),
    Entry(
        "DP-RUNTIME-NO-INJECT",
        "plugin",
        "critical",
        "the plugin pod names a RuntimeClass, yet no library was injected",
        "runtimeClassName set, NVML not found in the pod",
        "Check that the RuntimeClass handler's runtime runs nvidia-container-runtime and that the pod sets "
        "NVIDIA_VISIBLE_DEVICES=all and NVIDIA_DRIVER_CAPABILITIES=utility.",
    ),
    Entry(
        "DP-NO-DEVICES",
        "plugin",
        "critical",
        "the plugin sees no GPU",
        "`No devices found. Waiting indefinitely.`, plugin reason `no_devices`",
        "Check the GPUs on the host (`gpunode doctor HOST`) and the plugin's device visibility "
        "(NVIDIA_VISIBLE_DEVICES).",
    ),
    Entry(
        "DP-PERMISSION",
        "plugin",
        "critical",
        "NVML lacks permission in the plugin pod",
        "`Insufficient Permissions` from NVML in the plugin",
        "Run the plugin privileged, or with runtimeClassName: nvidia so the hook adds the devices.",
    ),
    Entry(
        "DP-NVML-ERROR",
        "plugin",
        "critical",
        "NVML fails in the plugin for another reason",
        "plugin reason `nvml_error` / `nvml_query_failed`",
        "Read the plugin's log and the host's `dmesg | grep -i nvrm`.",
    ),
    # --- GPU sharing and per-node plugin configs (NVIDIA's config v1) --------------------------
    Entry(
        "SHARING-CONFIG-MISSING",
        "plugin",
        "critical",
        "the node's nvidia.com/device-plugin.config label names a config the ConfigMap does not have",
        "gpunode's `config_rejected reason=missing`, NVIDIA's config-manager `specified config ... does not "
        "exist`; the plugin keeps its old config or does not start",
        "Label the node with a config the ConfigMap has, or add the config to the ConfigMap.",
    ),
    Entry(
        "SHARING-CONFIG-INVALID",
        "plugin",
        "critical",
        "the plugin refused its config (it does not parse, or cannot be honoured)",
        "gpunode's `config_rejected`, NVIDIA's `unable to load config`",
        "Correct the config (gpunode render --plugin-config FILE names the key and line of what is wrong).",
    ),
    Entry(
        "MPS-DAEMON-DOWN",
        "plugin",
        "critical",
        "MPS sharing without its control daemon",
        "gpunode's `mps_daemon_not_running`, NVIDIA's `error checking MPS daemon health`; the MPS replicas "
        "are not advertised",
        "Run NVIDIA's MPS control daemon on the node (its DaemonSet, with the same config and mpsRoot), or choose a time-slicing config for the node.",
    ),
    Entry(
        "SHARING-REQUEST-TOO-LARGE",
        "workload",
        "critical",
        "a pod asks for more than one shared replica and failRequestsGreaterThanOne refuses it",
        "UnexpectedAdmissionError: `maximum request size for shared resources is 1`",
        "Ask for nvidia.com/gpu: 1 per container (a replica is access to a shared GPU, not a share of it), then delete and recreate the pod; or set failRequestsGreaterThanOne: false in the config.",
    ),
    # --- GPU health and feature labels (the bundled plugin's telemetry and labeller) ----------
    Entry(
        "GPU-ROW-REMAP-FAILURE",
        "host",
        "critical",
        "a GPU has no spare memory rows left to remap a failing one",
        "gpunode's plugin log `gpu_row_remap_failure gpu=...`; DCGM_FI_DEV_ROW_REMAP_FAILURE 1; the "
        "GpuRowRemapFailure alert; uncorrectable ECC errors that recur",
        "Drain the node and replace the GPU (RMA); until then keep it out of service.",
    ),
    Entry(
        "NODE-LABELS-DRIVER-MISMATCH",
        "driver",
        "warning",
        "the node is labelled for one driver while its plugin's NVML reports another",
        "node label gpunode.io/driver-version differs from gpunode.io/nvml.driver-version (what the running "
        "plugin's NVML reports): the driver changed without gpunode bootstrap, so the DaemonSet chosen by the "
        "old label may mount the wrong library",
        "Run gpunode bootstrap on the node again: it relabels the node and moves it to the DaemonSet that mounts "
        "its library (reboot first if the module and the library disagree).",
    ),
    Entry(
        "NODE-LABELS-REFUSED",
        "plugin",
        "warning",
        "the plugin may not label its node: GPU feature labels missing or stale",
        "gpunode's plugin log `node_labels state=forbidden`; no nvidia.com/gpu.product on the node, so pods "
        "selecting it stay Pending",
        "Grant the plugin's service account a ClusterRole with nodes get and patch (gpunode render and bootstrap "
        "write it), or run NFD and use --node-labels nfd.",
    ),
    # --- the kubelet and the node -------------------------------------------------------------
    Entry(
        "DP-REGISTER-FAILED",
        "registration",
        "critical",
        "the plugin cannot register with the kubelet",
        "register errors in the plugin's log",
        "Mount the kubelet's real device-plugins directory (its --root-dir + /device-plugins) into the plugin, and check the kubelet runs.",
    ),
    Entry(
        "DP-NOT-REGISTERED",
        "registration",
        "critical",
        "no plugin has registered nvidia.com/gpu with the kubelet",
        "no plugin socket in device-plugins, no registration in the log",
        "Check that the plugin mounts the kubelet's own device-plugins directory, then restart it.",
    ),
    Entry(
        "KUBELET-DOWN",
        "registration",
        "critical",
        "the kubelet is not running",
        "no kubelet process on the host",
        "Start the kubelet (`systemctl restart kubelet`, or k3s/k3s-agent) and read its log.",
    ),
    Entry(
        "KUBELET-MISSING",
        "registration",
        "warning",
        "no kubelet on the host",
        "no kubelet binary or process: the host is not a node yet",
        "Join the host to the cluster (kubeadm join, k3s agent), then run doctor again.",
    ),
    Entry(
        "KUBELET-SOCKET",
        "registration",
        "critical",
        "the kubelet's device-plugins socket is missing",
        "no kubelet.sock under <root-dir>/device-plugins",
        "Check the kubelet's --root-dir and its log (the device manager starts with the kubelet); mount that directory's device-plugins into the plugin.",
    ),
    Entry(
        "NODE-NOT-READY",
        "registration",
        "critical",
        "the node is NotReady",
        "the node's Ready condition is not True",
        "Look at the kubelet on the node (`systemctl status kubelet`, its log) and the container runtime.",
    ),
    # --- Allocatable and the workload ---------------------------------------------------------
    Entry(
        "ALLOCATABLE-ABSENT",
        "allocatable",
        "critical",
        "Allocatable has no nvidia.com/gpu",
        "no plugin has registered the resource since the kubelet started (absent, not 0)",
        "Fix the link below this one; the resource appears when a plugin registers.",
    ),
    Entry(
        "ALLOCATABLE-SHORT",
        "allocatable",
        "warning",
        "Allocatable has fewer GPUs than the node",
        "allocatable nvidia.com/gpu below the GPUs found",
        "The missing ones are unhealthy or unseen: see the plugin's device lines and the host's Xid errors (`dmesg | grep -i xid`).",
    ),
    Entry(
        "NODE-CORDONED",
        "workload",
        "info",
        "the node is cordoned",
        "spec.unschedulable: true",
        "Uncordon it (`kubectl uncordon NODE`) when it should take pods again.",
    ),
    Entry(
        "AGENT-CONDITION",
        "allocatable",
        "info",
        "what gpunode's agent on the node last published (its GPUNodeReady condition)",
        "`kubectl describe node`: condition GPUNodeReady, its reason the first verdict of this chain",
        "Nothing when it agrees with doctor; a stale heartbeat means the agent stopped (check its DaemonSet "
        "pod on the node, `gpunode render agent`).",
    ),
    Entry(
        "AGENT-RBAC",
        "deployment",
        "warning",
        "gpunode's agent lacks a permission it uses",
        "the agent's ClusterRole/Role `gpunode-agent` misses a rule `gpunode render agent` grants; "
        "its ticks log the refusal, its condition goes stale or is never written",
        "Apply `gpunode render agent` (with the agent's --mode) again, or add the named grant to its roles.",
    ),
    Entry(
        "POD-UNSCHEDULABLE",
        "workload",
        "critical",
        "the GPU pod cannot be scheduled",
        "FailedScheduling: Insufficient nvidia.com/gpu",
        "Fix the node links above; or free GPUs / add GPU nodes.",
    ),
    Entry(
        "POD-ADMISSION",
        "workload",
        "critical",
        "the kubelet refused the pod at admission",
        "UnexpectedAdmissionError",
        "Read the message: it is the device plugin's Allocate error.",
    ),
)

CATALOGUE: dict[str, Entry] = {entry.id: entry for entry in _ENTRIES}


def entry(verdict_id: str) -> Entry:
    """The catalogue's entry; a rule that names an id the catalogue lacks is a bug."""
    try:
        return CATALOGUE[verdict_id]
    except KeyError:
        raise ValueError(f"verdict {verdict_id!r} is not in the catalogue (core/doctor/catalogue.py)") from None


def failure_modes_table() -> str:
    """The catalogue as the table of docs/failure-modes.md (tests/unit/test_catalogue.py keeps
    that file equal to it), in the chain's order."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    rows = [
        "| id | link | severity | what breaks | what the operator sees | fix |",
        "|---|---|---|---|---|---|",
    ]
    ranked = sorted(_ENTRIES, key=lambda e: (LINKS.index(e.link), not e.id.startswith("F"), _ENTRIES.index(e)))
    for item in ranked:
        link = ", ".join(item.links)
        rows.append(
            f"| {item.id} | {link} | {item.severity} | {cell(item.breaks)} | {cell(item.seen)} | {cell(item.fix)} |"
        )
    return "\n".join(rows) + "\n"
