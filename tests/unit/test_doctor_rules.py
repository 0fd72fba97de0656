"""`gpunode doctor`'s rules, evidence written out by hand: every failure mode of the field
notes named first, with its cause, in the combinations a node really shows; the traps (F8,
F9, F10, F11, F12) judged right; a healthy node judged healthy; gaps said, not guessed."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from doctor_support import (
    DRIVER,
    KUBELET_SOCKET,
    LIB_DIR,
    NODE,
    NOW,
    case,
    crashing,
    debian_library,
    dump,
    gpu_node,
    gpunode_daemonset,
    healthy_diagnostics,
    healthy_host,
    healthy_view,
    ids,
    judge,
    plugin_pod,
    running,
    runtime_class,
)

from gpunode.bootstrap.core.doctor.engine import LINKS, format_text
from gpunode.bootstrap.core.doctor.evidence import ClusterView, PodEvidence, Unavailable
from gpunode.bootstrap.core.host.diagnostics import HostProcess, NvmlCheck
from gpunode.bootstrap.core.host.facts import PciGpu
from gpunode.bootstrap.core.host.record import HostRecord
from gpunode.bootstrap.core.plugin_log import read_plugin_log


def plugin_view(status: dict, logs: str, events: tuple = (), **deployment) -> object:  # type: ignore[type-arg]
    daemonset = gpunode_daemonset(**deployment)
    return healthy_view(
        daemonsets=(daemonset,),
        plugin_pods=(PodEvidence(plugin_pod(daemonset, status), events=events, logs=logs),),
        node=gpu_node(allocatable=None, capacity=None),
    )


def first(diagnosis):  # type: ignore[no-untyped-def]
    assert diagnosis.verdicts, format_text(diagnosis)
    return diagnosis.verdicts[0]


# --- healthy, and what could not be checked -------------------------------------------------


def test_a_healthy_node_has_no_verdict_and_exits_0() -> None:
    diagnosis = judge(case())
    assert diagnosis.verdicts == () and diagnosis.exit_code == 0
    assert json.loads(diagnosis.to_json()) == {"healthy": True, "exit_code": 0, "verdicts": [], "not_checked": []}


def test_an_unreachable_host_or_cluster_is_said_and_exits_2_not_guessed() -> None:
    diagnosis = judge(
        case(
            host=None,
            host_unavailable=Unavailable("could not connect over SSH: timed out"),
            view=None,
            cluster_unavailable=Unavailable("could not reach the cluster"),
        )
    )
    assert diagnosis.verdicts == ()
    assert diagnosis.exit_code == 2
    whats = [item.why for item in diagnosis.not_checked]
    assert "could not connect over SSH: timed out" in whats and "could not reach the cluster" in whats
    # Not asked for (no HOST given, --no-cluster): said, but the node is healthy as far as judged.
    assert judge(case(host=None)).exit_code == 0
    assert judge(case(host=None)).not_checked[0].asked is False


def test_problems_found_beat_could_not_check() -> None:
    host = healthy_host(loaded_modules=frozenset({"nouveau"}), nvml=debian_library(module=None))
    diagnosis = judge(case(host=host, view=None, cluster_unavailable=Unavailable("unreachable")))
    assert diagnosis.exit_code == 1


# --- the driver: F13, F14, F2 on the host --------------------------------------------------------


def test_f13_nouveau_loaded_says_blacklist_initramfs_reboot() -> None:
    host = healthy_host(
        loaded_modules=frozenset({"nouveau"}), nvml=debian_library(module=None), nouveau_blacklisted_by=()
    )
    verdict = first(
        judge(
            case(
                host=host,
                view=plugin_view(
                    crashing(), 'nvml_init_failed reason=driver_not_loaded error="NVML: Driver Not Loaded" fix="x"'
                ),
            )
        )
    )
    assert verdict.id == "F13" and "nouveau" in verdict.cause and verdict.link == "driver"
    assert "update-initramfs -u" in verdict.fix and verdict.reboot_required


def test_f13_secure_boot_rejects_the_unsigned_module() -> None:
    diag = healthy_diagnostics(
        module_signer=None,
        kernel_log=("[    5.1] Lockdown: modprobe: unsigned module loading is restricted; see man kernel_lockdown.7",),
    )
    host = healthy_host(
        loaded_modules=frozenset(), nvml=debian_library(module=None), secure_boot=True, diagnostics=diag
    )
    verdict = first(judge(case(host=host)))
    assert verdict.id == "F13" and "Secure Boot" in verdict.cause
    assert "precompiled" in verdict.fix and "mokutil" in verdict.fix


def test_a_locked_down_kernel_alone_is_not_a_rejected_module() -> None:
    diag = healthy_diagnostics(
        kernel_log=("[0.06] Kernel is locked down from Kernel configuration; see man kernel_lockdown.7",)
    )
    assert judge(case(host=healthy_host(diagnostics=diag))).verdicts == ()


def test_f13_a_kepler_gpu_with_a_driver_branch_too_new() -> None:
    host = healthy_host(
        gpus=(PciGpu("0000:04:00.0", "0x102d", "GK210GL [Tesla K80]"),),
        nvml=debian_library(module="550.54.15", version="550.54.15"),
        packages={"libnvidia-ml1": "550.54.15-1", "nvidia-container-toolkit": "1.17.8-1"},
        diagnostics=healthy_diagnostics(nvml=NvmlCheck(0, driver="550.54.15", count=0)),
    )
    verdict = first(judge(case(host=host)))
    assert verdict.id == "F13" and "too new" in verdict.cause and "470" in verdict.fix


def test_f13_the_kernels_legacy_message_names_the_branch() -> None:
    diag = healthy_diagnostics(
        kernel_log=(
            "NVRM: The NVIDIA Tesla K40m GPU installed in this system is supported through the NVIDIA 470.xx Legacy drivers.",
        ),
        nvml=NvmlCheck(0, driver=DRIVER, count=0),
    )
    verdict = first(judge(case(host=healthy_host(diagnostics=diag))))
    assert verdict.id == "F13" and "too new" in verdict.cause


def test_f13_module_not_loaded_with_the_driver_installed() -> None:
    host = healthy_host(
        loaded_modules=frozenset(),
        nvml=debian_library(module=None),
        diagnostics=healthy_diagnostics(nvml=NvmlCheck(4, init_error="Driver Not Loaded")),
    )
    verdict = first(judge(case(host=host)))
    assert verdict.id == "F13" and "not loaded" in verdict.cause and "modprobe nvidia" in verdict.fix


def test_a_module_not_loaded_and_a_broken_chain_are_both_named_kernel_first() -> None:
    host = healthy_host(loaded_modules=frozenset(), nvml=replace(debian_library(module=None), files=frozenset()))
    assert ids(judge(case(host=host)))[:2] == ["F13", "F2"]


def test_a_plugin_pod_stuck_before_running_says_what_its_events_say() -> None:
    daemonset = gpunode_daemonset()
    status = {
        "phase": "Pending",
        "initContainerStatuses": [],
        "containerStatuses": [
            {
                "name": "gpunode-device-plugin",
                "ready": False,
                "restartCount": 0,
                "state": {"waiting": {"reason": "ContainerCreating"}},
            }
        ],
    }
    event = {"type": "Warning", "reason": "FailedCreatePodSandBox", "message": "failed to setup network for sandbox"}
    view = healthy_view(
        plugin_pods=(PodEvidence(plugin_pod(daemonset, status), events=(event,)),),
        node=gpu_node(allocatable=None, capacity=None),
    )
    diagnosis = judge(case(host=None, view=view))
    assert ids(diagnosis) == ["DP-POD-NOT-RUNNING", "ALLOCATABLE-ABSENT"]
    assert "failed to setup network" in " ".join(diagnosis.verdicts[0].evidence)


def test_a_gpu_operator_plugin_pod_with_finished_init_containers_is_judged_by_its_plugin() -> None:
    daemonset = gpunode_daemonset(fail_on_init_error=False)
    status = running()
    status["initContainerStatuses"] = [
        {
            "name": "toolkit-validation",
            "ready": True,
            "restartCount": 0,
            "state": {"terminated": {"exitCode": 0, "reason": "Completed"}},
        }
    ]
    log = 'nvml_init_failed reason=no_permission error="NVML: Insufficient Permissions" fix="x"'
    view = healthy_view(
        plugin_pods=(PodEvidence(plugin_pod(daemonset, status), logs=log),),
        node=gpu_node(allocatable=None, capacity=None),
    )
    diagnosis = judge(case(host=None, view=view))
    assert ids(diagnosis)[:2] == ["DP-PERMISSION", "F11"]
    assert "Running, 1/1 ready" in diagnosis.verdicts[1].evidence[0]


def test_no_driver_at_all_is_its_own_verdict() -> None:
    host = healthy_host(
        loaded_modules=frozenset(),
        packages={},
        nvml=replace(debian_library(module=None), ldconfig="", links={}, files=frozenset(), listed=()),
        diagnostics=healthy_diagnostics(module_file=None, module_file_version=None),
    )
    assert first(judge(case(host=host))).id == "DRIVER-MISSING"


def test_f14_module_and_library_disagree_reboot_required() -> None:
    host = healthy_host(nvml=debian_library(module="535.261.03", version="535.309.01"))
    verdict = first(judge(case(host=host)))
    assert verdict.id == "F14" and verdict.reboot_required and "Reboot" in verdict.fix
    assert "535.261.03" in verdict.cause and "535.309.01" in verdict.cause


def test_f14_seen_only_in_the_plugin_log_is_still_a_driver_verdict() -> None:
    log = 'nvml_init_failed reason=driver_library_mismatch error="NVML: Driver/library version mismatch" fix="reboot"'
    diagnosis = judge(case(host=None, view=plugin_view(crashing(), log)))
    verdict = first(diagnosis)
    assert verdict.id == "F14" and verdict.link == "driver" and verdict.reboot_required


def test_f2_a_dangling_library_chain_on_the_host() -> None:
    library = debian_library()
    host = healthy_host(nvml=replace(library, files=frozenset()))
    verdict = first(judge(case(host=host)))
    assert verdict.id == "F2" and "dangling" in verdict.cause


def test_f13_nvml_on_the_host_finds_no_gpu() -> None:
    host = healthy_host(diagnostics=healthy_diagnostics(nvml=NvmlCheck(0, driver=DRIVER, count=0)))
    verdict = first(judge(case(host=host)))
    assert verdict.id == "F13" and "drives no GPU" in verdict.cause


def test_a_gpu_missing_from_nvml_is_a_warning() -> None:
    host = healthy_host(
        diagnostics=healthy_diagnostics(nvml=NvmlCheck(0, driver=DRIVER, count=1, devices=("GPU-1 A100",)))
    )
    diagnosis = judge(case(host=host, view=healthy_view(node=gpu_node(allocatable="1", capacity="1"))))
    assert ids(diagnosis)[:2] == ["GPU-MISSING", "ALLOCATABLE-SHORT"]
    assert diagnosis.verdicts[0].severity == "warning"


def test_nvidia_smi_is_the_fallback_when_the_host_has_no_python3() -> None:
    from gpunode.bootstrap.core.host.diagnostics import CommandRun

    diag = healthy_diagnostics(
        nvml=None,
        nvidia_smi=CommandRun(9, "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."),
    )
    verdict = first(judge(case(host=healthy_host(diagnostics=diag))))
    assert verdict.id == "F13" and "nvidia-smi" in verdict.evidence[0]


# --- toolkit and containerd: F17, F4 ---------------------------------------------------------------


def test_f17_toolkit_missing() -> None:
    host = healthy_host(
        toolkit_runtime=None,
        packages={"libnvidia-ml1": f"{DRIVER}-1"},
        diagnostics=healthy_diagnostics(runtime_binaries={}),
    )
    verdict = first(judge(case(host=host)))
    assert verdict.id == "F17" and "toolkit is not installed" in verdict.cause and verdict.link == "toolkit"


def test_f17_the_runtime_binary_containerd_names_is_gone() -> None:
    host = healthy_host(diagnostics=healthy_diagnostics(runtime_binaries={"/usr/bin/nvidia-container-runtime": False}))
    verdict = first(judge(case(host=host)))
    assert verdict.id == "F17" and "does not exist" in verdict.cause


def test_f17_containerd_has_no_nvidia_runtime() -> None:
    host = healthy_host(containerd=replace(healthy_host().containerd, dump_text=dump(runtime=None)))
    verdict = first(judge(case(host=host)))
    assert verdict.id == "F17" and 'no runtime "nvidia"' in verdict.cause and verdict.link == "containerd"


def test_f17_runtimeclass_handler_names_no_containerd_runtime() -> None:
    view = healthy_view(runtime_classes=(runtime_class(handler="nvidia-cdi"),))
    verdict = first(judge(case(view=view)))
    assert verdict.id == "F17" and "handler" in verdict.cause and verdict.link == "runtimeclass"


def test_f17_seen_only_from_the_cluster_in_a_pod_event() -> None:
    daemonset = gpunode_daemonset(mode="runtime")
    status = {
        "phase": "Pending",
        "containerStatuses": [
            {
                "name": "gpunode-device-plugin",
                "ready": False,
                "restartCount": 0,
                "state": {"waiting": {"reason": "ContainerCreating"}},
            }
        ],
    }
    event = {
        "type": "Warning",
        "reason": "FailedCreatePodSandBox",
        "message": "Failed to create pod sandbox: rpc error: "
        'code = Unknown desc = failed to get sandbox runtime: no runtime for "nvidia" is configured',
    }
    view = healthy_view(
        daemonsets=(daemonset,),
        plugin_pods=(PodEvidence(plugin_pod(daemonset, status), events=(event,)),),
        node=gpu_node(allocatable=None, capacity=None),
    )
    verdict = first(judge(case(host=None, view=view)))
    assert verdict.id == "F17" and verdict.link == "containerd"


def test_malformed_containerd_config() -> None:
    containerd = replace(
        healthy_host().containerd,
        dump_text=None,
        dump_error="containerd: failed to load TOML: /etc/containerd/config.toml: (3, 1): unexpected token",
    )
    verdict = first(judge(case(host=healthy_host(containerd=containerd))))
    assert verdict.id == "CONTAINERD-CONFIG" and "unexpected token" in " ".join(verdict.evidence)


def test_f4_the_plugin_trusts_the_default_runtime() -> None:
    host = healthy_host(containerd=replace(healthy_host().containerd, dump_text=dump(default="nvidia")))
    daemonset = gpunode_daemonset()
    pod = plugin_pod(daemonset, crashing())
    spec = pod["spec"]
    spec["volumes"] = [v for v in spec["volumes"] if v["name"] == "device-plugins"]
    spec["containers"][0]["volumeMounts"] = [
        m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "device-plugins"
    ]
    log = (
        'nvml_init_failed reason=library_not_found error="libnvidia-ml.so.1: cannot open shared object file: '
        'No such file or directory" fix="x"'
    )
    view = healthy_view(plugin_pods=(PodEvidence(pod, logs=log),), node=gpu_node(allocatable=None, capacity=None))
    diagnosis = judge(case(host=host, view=view))
    assert ids(diagnosis)[0] == "F4"
    f4 = [v for v in diagnosis.verdicts if v.id == "F4"]
    assert [v.severity for v in f4] == ["critical"], "the host's note is replaced by the verdict that explains it"
    assert "default runtime" in f4[0].cause


def test_the_default_runtime_alone_is_a_note_not_a_problem() -> None:
    host = healthy_host(containerd=replace(healthy_host().containerd, dump_text=dump(default="nvidia")))
    diagnosis = judge(case(host=host))
    assert ids(diagnosis) == ["F4"] and diagnosis.verdicts[0].severity == "info" and diagnosis.exit_code == 0


# --- the device plugin: F1, F2, F3, F5, F7, F11 -----------------------------------------------------

LIB_NOT_FOUND = (
    'nvml_init_failed reason=library_not_found error="libnvidia-ml.so.1: cannot open shared object '
    'file: No such file or directory" fix="mount the host\'s real libnvidia-ml.so.<driver version>"'
)
NVIDIA_LIB_NOT_FOUND = (
    "I0615 10:00:00.000000       1 main.go:178] Starting OS watcher.\n"
    "I0615 10:00:00.000000       1 factory.go:104] Detected non-NVML platform: could not load NVML library: "
    "libnvidia-ml.so.1: cannot open shared object file: No such file or directory\n"
    "E0615 10:00:00.000000       1 factory.go:112] Incompatible platform detected\n"
    "E0615 10:00:00.000000       1 main.go:132] error starting plugins: error creating plugin manager: "
    "unable to create plugin manager: platform detection failed\n"
)


def nvidia_helm_daemonset(**env: str) -> dict:  # type: ignore[type-arg]
    """NVIDIA's Helm chart's DaemonSet, as deployed by hand: no library mount, no RuntimeClass."""
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {
            "name": "nvidia-device-plugin",
            "namespace": "nvidia-device-plugin",
            "uid": "helm-uid",
            "labels": {"app.kubernetes.io/managed-by": "Helm", "app.kubernetes.io/name": "nvidia-device-plugin"},
        },
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": "nvidia-device-plugin"}},
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": "nvidia-device-plugin"}},
                "spec": {
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    "containers": [
                        {
                            "name": "nvidia-device-plugin-ctr",
                            "image": "nvcr.io/nvidia/k8s-device-plugin:v0.17.0",
                            "env": [{"name": k, "value": v} for k, v in env.items()],
                            "volumeMounts": [{"name": "device-plugin", "mountPath": "/var/lib/kubelet/device-plugins"}],
                        }
                    ],
                    "volumes": [{"name": "device-plugin", "hostPath": {"path": "/var/lib/kubelet/device-plugins"}}],
                },
            },
        },
        "status": {"desiredNumberScheduled": 1, "numberReady": 0},
    }


def test_f1_nvidias_plugin_under_plain_runc() -> None:
    daemonset = nvidia_helm_daemonset()
    view = healthy_view(
        daemonsets=(daemonset,),
        node=gpu_node(allocatable=None, capacity=None),
        plugin_pods=(PodEvidence(plugin_pod(daemonset, crashing()), logs=NVIDIA_LIB_NOT_FOUND),),
    )
    diagnosis = judge(case(host=None, view=view))
    verdict = first(diagnosis)
    assert verdict.id == "F1" and "plain runc" in verdict.cause and verdict.link == "plugin"
    assert "could not load NVML library" in " ".join(verdict.evidence)
    assert ids(diagnosis) == ["F1", "ALLOCATABLE-ABSENT"]
    assert "absent, not 0" in diagnosis.verdicts[1].cause


NVIDIA_V017_UNDER_RUNC = (
    "E0615 10:00:00.000000       1 factory.go:112] Incompatible strategy detected auto\n"
    "E0615 10:00:00.000000       1 factory.go:113] If this is a GPU node, did you configure the NVIDIA Container "
    "Toolkit?\n"
    "E0615 10:00:00.000000       1 main.go:173] error starting plugins: error getting plugins: unable to create "
    "plugins: failed to construct resource managers: invalid device discovery strategy\n"
)


def test_f1_incompatible_strategy_means_no_nvml_in_the_pod_not_mig() -> None:
    """v0.16 to v0.19 say "Incompatible strategy detected auto" when neither NVML nor Tegra is
    found (internal/plugin/factory.go): no library in the pod, F1; not F7 (issue 17.14)."""
    daemonset = nvidia_helm_daemonset()
    view = healthy_view(
        daemonsets=(daemonset,),
        node=gpu_node(allocatable=None, capacity=None),
        plugin_pods=(PodEvidence(plugin_pod(daemonset, crashing()), logs=NVIDIA_V017_UNDER_RUNC),),
    )
    diagnosis = judge(case(host=None, view=view))
    assert ids(diagnosis)[0] == "F1" and "F7" not in ids(diagnosis)
    assert "Incompatible strategy detected auto" in " ".join(first(diagnosis).evidence)


def test_f2_the_daemonset_mounts_the_so1_symlink() -> None:
    diagnosis = judge(case(view=plugin_view(crashing(), LIB_NOT_FOUND, lib_path=None, mode="runtime")))
    assert ids(diagnosis)[0] == "DP-RUNTIME-NO-INJECT"  # runtime mode without injection: its own verdict
    daemonset = gpunode_daemonset()
    pod = plugin_pod(daemonset, crashing())
    for volume in pod["spec"]["volumes"]:
        if volume["name"] == "nvml-library":
            volume["hostPath"]["path"] = f"{LIB_DIR}/libnvidia-ml.so.1"
    view = healthy_view(
        plugin_pods=(PodEvidence(pod, logs=LIB_NOT_FOUND),), node=gpu_node(allocatable=None, capacity=None)
    )
    verdict = first(judge(case(view=view)))
    assert verdict.id == "F2" and "symlink" in verdict.cause


def test_f2_the_library_mount_fails() -> None:
    event = {
        "type": "Warning",
        "reason": "FailedMount",
        "message": 'MountVolume.SetUp failed for volume "nvml-library" : '
        f"hostPath type check failed: {LIB_DIR}/nvidia/current/libnvidia-ml.so.{DRIVER} is not a file",
    }
    status = {
        "phase": "Pending",
        "containerStatuses": [
            {
                "name": "gpunode-device-plugin",
                "ready": False,
                "restartCount": 0,
                "state": {"waiting": {"reason": "ContainerCreating"}},
            }
        ],
    }
    verdict = first(judge(case(host=None, view=plugin_view(status, "", events=(event,)))))
    assert verdict.id == "F2" and "cannot mount" in verdict.cause


def test_a_stale_library_mount_after_a_driver_upgrade() -> None:
    event = {
        "type": "Warning",
        "reason": "FailedMount",
        "message": 'MountVolume.SetUp failed for volume "nvml-library" : '
        f"hostPath type check failed: {LIB_DIR}/nvidia/current/libnvidia-ml.so.{DRIVER} is not a file",
    }
    status = {
        "phase": "Pending",
        "containerStatuses": [
            {
                "name": "gpunode-device-plugin",
                "ready": False,
                "restartCount": 0,
                "state": {"waiting": {"reason": "ContainerCreating"}},
            }
        ],
    }
    host = healthy_host(nvml=debian_library(module="535.309.01", version="535.309.01"))
    verdict = first(judge(case(host=host, view=plugin_view(status, "", events=(event,)))))
    assert verdict.id == "DP-LIB-STALE" and "535.309.01" in verdict.cause


def test_f3_a_system_library_directory_over_the_containers() -> None:
    daemonset = nvidia_helm_daemonset()
    spec = daemonset["spec"]["template"]["spec"]
    spec["volumes"].append({"name": "libs", "hostPath": {"path": "/usr/lib/x86_64-linux-gnu"}})
    spec["containers"][0]["volumeMounts"].append({"name": "libs", "mountPath": "/usr/lib/x86_64-linux-gnu"})
    status = crashing(message="exec /usr/bin/nvidia-device-plugin: no such file or directory")
    view = healthy_view(
        daemonsets=(daemonset,),
        node=gpu_node(allocatable=None, capacity=None),
        plugin_pods=(PodEvidence(plugin_pod(daemonset, status), logs=""),),
    )
    verdict = first(judge(case(host=None, view=view)))
    assert verdict.id == "F3" and "libc" in verdict.cause
    assert any("no such file or directory" in line for line in verdict.evidence)


def test_f5_dev_mounted_without_privileged() -> None:
    daemonset = gpunode_daemonset()
    pod = plugin_pod(daemonset, crashing())
    pod["spec"]["containers"][0]["securityContext"] = {}
    log = 'nvml_init_failed reason=no_permission error="NVML: Insufficient Permissions" fix="x"'
    view = healthy_view(plugin_pods=(PodEvidence(pod, logs=log),), node=gpu_node(allocatable=None, capacity=None))
    verdict = first(judge(case(host=None, view=view)))
    assert verdict.id == "F5" and "privileged: true" in verdict.fix


def test_f7_mig_capabilities_unreadable() -> None:
    log = (
        'nvml_init_failed reason=mig_no_permission error="reading the MIG devices of GPU 0: NVML: '
        'Insufficient Permissions" fix="x"'
    )
    verdict = first(judge(case(host=None, view=plugin_view(crashing(), log))))
    assert verdict.id == "F7" and "NVIDIA_MIG_MONITOR_DEVICES=all" in verdict.fix and "mixed" in verdict.fix


def test_f7_a_pod_refused_at_admission() -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "train", "namespace": "ml"},
        "spec": {
            "nodeName": NODE,
            "runtimeClassName": "nvidia",
            "containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": "1"}}}],
        },
        "status": {
            "phase": "Failed",
            "reason": "UnexpectedAdmissionError",
            "message": "Allocate failed due to rpc error: code = Unknown desc = GetPreferredAllocation: nvml: "
            "Insufficient Permissions, which is unexpected",
        },
    }
    verdict = first(judge(case(target_pod=PodEvidence(pod))))
    assert verdict.id == "F7"


def test_f11_running_while_init_failed_is_not_healthy() -> None:
    log = 'nvml_init_failed reason=no_permission error="NVML: Insufficient Permissions" fix="x"\n'
    diagnosis = judge(case(host=None, view=plugin_view(running(), log, fail_on_init_error=False)))
    # The failure is its own verdict, first; F11 says it was hidden (issue 17.11).
    assert ids(diagnosis)[:2] == ["DP-PERMISSION", "F11"]
    verdict = diagnosis.verdicts[1]
    assert "Running but advertises nothing" in verdict.cause and "hides" in verdict.cause
    assert "GPUNODE_FAIL_ON_INIT_ERROR=false" in " ".join(verdict.evidence)
    assert "no_permission" in verdict.cause and "DP-PERMISSION" in verdict.cause


def test_f11_nvidias_no_devices_found_waiting_indefinitely() -> None:
    log = (
        NVIDIA_LIB_NOT_FOUND.replace("platform detection failed", "x")
        + "I0615 10:00:01.000000       1 main.go:245] No devices found. Waiting indefinitely.\n"
    )
    daemonset = nvidia_helm_daemonset(FAIL_ON_INIT_ERROR="false")
    view = healthy_view(
        daemonsets=(daemonset,),
        node=gpu_node(allocatable=None, capacity=None),
        plugin_pods=(PodEvidence(plugin_pod(daemonset, running()), logs=log),),
    )
    diagnosis = judge(case(host=None, view=view))
    # NVIDIA's own static manifest sets FAIL_ON_INIT_ERROR=false: the canonical F1 case must
    # still say F1, first, with F11 saying that it was hidden (issue 17.11).
    assert ids(diagnosis)[:2] == ["F1", "F11"]
    verdict = diagnosis.verdicts[1]
    assert "F1" in verdict.cause and "FAIL_ON_INIT_ERROR=false" in " ".join(verdict.evidence)


def test_f11_with_a_driver_cause_names_the_driver_first() -> None:
    log = 'nvml_init_failed reason=driver_library_mismatch error="NVML: Driver/library version mismatch" fix="x"'
    diagnosis = judge(case(host=None, view=plugin_view(running(), log, fail_on_init_error=False)))
    assert ids(diagnosis)[:2] == ["F14", "F11"]


# --- deployment: F8, F15, no plugin -------------------------------------------------------------------


def test_f8_cluster_policy_ready_and_the_daemonset_gone() -> None:
    policy = {
        "apiVersion": "nvidia.com/v1",
        "kind": "ClusterPolicy",
        "metadata": {"name": "cluster-policy"},
        "spec": {"devicePlugin": {"enabled": True}},
        "status": {"state": "ready", "namespace": "gpu-operator"},
    }
    view = healthy_view(
        daemonsets=(),
        plugin_pods=(),
        cluster_policies=(policy,),
        node=gpu_node(allocatable="0", capacity="0", labels={"nvidia.com/gpu.present": "true"}),
    )
    diagnosis = judge(case(host=None, view=view))
    verdict = first(diagnosis)
    assert verdict.id == "F8" and "says 'ready'" in verdict.cause
    assert ids(diagnosis) == ["F8", "F9"]


def test_f8_gpunodes_own_daemonset_gone() -> None:
    view = healthy_view(daemonsets=(), plugin_pods=(), node=gpu_node(allocatable="0", capacity="0"))
    verdict = first(judge(case(host=None, view=view)))
    assert verdict.id == "F8" and "gpunode-device-plugin-535-261-03" in verdict.cause


def test_f9_zero_kept_when_the_plugin_left_no_one_else_to_blame() -> None:
    node = gpu_node(allocatable="0", capacity="0", labels={"nvidia.com/gpu.present": "true"})
    del node["metadata"]["labels"]["gpunode.io/driver-version"]
    diagnosis = judge(case(host=None, view=healthy_view(daemonsets=(), plugin_pods=(), node=node)))
    assert ids(diagnosis) == ["F9"]
    assert "is 0 and the key is kept" in diagnosis.verdicts[0].cause
    assert "absent()" in diagnosis.verdicts[0].cause


def test_absent_is_not_zero() -> None:
    node = gpu_node(allocatable=None, capacity=None, labels={"nvidia.com/gpu.present": "true"})
    del node["metadata"]["labels"]["gpunode.io/driver-version"]
    diagnosis = judge(case(host=None, view=healthy_view(daemonsets=(), plugin_pods=(), node=node)))
    assert ids(diagnosis) == ["DP-NONE", "ALLOCATABLE-ABSENT"]
    assert "F9" not in ids(diagnosis)


def test_f15_tainted_node_and_a_daemonset_without_the_toleration() -> None:
    daemonset = nvidia_helm_daemonset()
    daemonset["spec"]["template"]["spec"]["tolerations"] = []
    node = gpu_node(
        allocatable=None, capacity=None, taints=[{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
    )
    diagnosis = judge(case(host=None, view=healthy_view(daemonsets=(daemonset,), plugin_pods=(), node=node)))
    verdict = first(diagnosis)
    assert verdict.id == "F15" and "nvidia.com/gpu=present:NoSchedule" in verdict.cause
    assert "operator: Exists" in verdict.fix


def test_f15_a_pod_without_the_toleration() -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "train", "namespace": "ml"},
        "spec": {
            "runtimeClassName": "nvidia",
            "containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": "1"}}}],
        },
        "status": {"phase": "Pending"},
    }
    event = {
        "type": "Warning",
        "reason": "FailedScheduling",
        "message": "0/3 nodes are available: 1 node(s) had "
        "untolerated taint {nvidia.com/gpu: present}, 2 Insufficient nvidia.com/gpu.",
    }
    verdict = first(judge(case(target_pod=PodEvidence(pod, events=(event,)))))
    assert verdict.id == "F15" and verdict.link == "workload"


def test_a_daemonset_that_selects_another_driver_version() -> None:
    node = gpu_node(labels={"gpunode.io/driver-version": "550.54.15"}, allocatable=None, capacity=None)
    verdict = first(judge(case(host=None, view=healthy_view(plugin_pods=(), node=node))))
    assert verdict.id == "DP-NOT-SELECTED" and "550.54.15" in " ".join(verdict.evidence)
    assert "gpunode-device-plugin-550-54-15" in verdict.fix


# --- registration: F12 ------------------------------------------------------------------------------


def test_f12_kubelet_restarted_after_the_plugin_and_it_never_came_back() -> None:
    host = healthy_host(
        kubelet=replace(healthy_host().kubelet, device_plugin_sockets=(KUBELET_SOCKET,)),
        diagnostics=healthy_diagnostics(kubelet_age_seconds=120, socket_mtimes={KUBELET_SOCKET: NOW - 120}),
    )
    daemonset = gpunode_daemonset()
    view = healthy_view(
        node=gpu_node(allocatable="0", capacity="2"),
        plugin_pods=(
            PodEvidence(
                plugin_pod(daemonset, running(started="2025-06-01T00:00:00Z")),
                logs="registered resource=nvidia.com/gpu socket=x attempt=1\n",
            ),
        ),
    )
    diagnosis = judge(case(host=host, view=view))
    verdict = first(diagnosis)
    assert verdict.id == "F12" and "never registered again" in verdict.cause
    assert any("started 120 s ago" in line for line in verdict.evidence)
    assert ids(diagnosis) == ["F12", "F9"]


def test_f12_from_the_cluster_alone_the_kubelets_starting_event() -> None:
    daemonset = gpunode_daemonset()
    event = {
        "type": "Normal",
        "reason": "Starting",
        "message": "Starting kubelet.",
        "lastTimestamp": "2025-06-15T11:00:00Z",
        "involvedObject": {"kind": "Node", "name": NODE},
    }
    view = healthy_view(
        node=gpu_node(allocatable="0", capacity="2"),
        node_events=(event,),
        plugin_pods=(
            PodEvidence(plugin_pod(daemonset, running(started="2025-06-15T10:00:00Z")), logs="registered resource=x\n"),
        ),
    )
    assert first(judge(case(host=None, view=view))).id == "F12"


def test_a_plugin_that_noticed_the_restart_is_not_f12() -> None:
    daemonset = gpunode_daemonset()
    event = {
        "type": "Normal",
        "reason": "Starting",
        "message": "Starting kubelet.",
        "lastTimestamp": "2025-06-15T11:00:00Z",
    }
    log = "registered resource=nvidia.com/gpu attempt=1\nkubelet_gone socket=x\nkubelet_back socket=x\nregistered resource=nvidia.com/gpu attempt=2\n"
    view = healthy_view(
        node_events=(event,),
        plugin_pods=(PodEvidence(plugin_pod(daemonset, running(started="2025-06-15T10:00:00Z")), logs=log),),
    )
    assert judge(case(host=None, view=view)).verdicts == ()


def test_f12_on_the_host_alone_a_plugin_process_older_than_the_kubelet() -> None:
    host = healthy_host(
        kubelet=replace(healthy_host().kubelet, device_plugin_sockets=(KUBELET_SOCKET,)),
        diagnostics=healthy_diagnostics(
            kubelet_age_seconds=30, plugin_processes=(HostProcess(4242, 86400, "S", "nvidia-device-p"),)
        ),
    )
    verdict = first(judge(case(host=host, view=None)))
    assert verdict.id == "F12"


# --- the workload: F6, F10, F16 -----------------------------------------------------------------------


def gpu_pod(**spec: object) -> dict:  # type: ignore[type-arg]
    base = {
        "nodeName": NODE,
        "restartPolicy": "Never",
        "containers": [
            {
                "name": "cuda",
                "image": "nvidia/cuda",
                "command": ["nvidia-smi", "-L"],
                "resources": {"limits": {"nvidia.com/gpu": "1"}},
            }
        ],
    }
    base.update(spec)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "cuda-test", "namespace": "default"},
        "spec": base,
        "status": {
            "phase": "Failed",
            "containerStatuses": [
                {
                    "name": "cuda",
                    "ready": False,
                    "restartCount": 0,
                    "state": {"terminated": {"exitCode": 127, "reason": "Error"}},
                }
            ],
        },
    }


def test_f6_a_gpu_pod_under_plain_runc() -> None:
    evidence = PodEvidence(gpu_pod(), logs="/bin/sh: 1: nvidia-smi: not found\n")
    verdict = first(judge(case(target_pod=evidence)))
    assert verdict.id == "F6" and "runtimeClassName: nvidia" in verdict.fix


def test_f16_a_pod_that_asks_for_no_gpu() -> None:
    pod = gpu_pod(runtimeClassName="nvidia")
    pod["spec"]["containers"][0]["resources"] = {}
    pod["status"] = {"phase": "Succeeded"}
    verdict = first(judge(case(target_pod=PodEvidence(pod, logs="No devices were found\n"))))
    assert verdict.id == "F16" and "every GPU or none" in verdict.cause


def test_f10_a_debug_pods_unknown_error_is_not_a_dead_driver() -> None:
    debugger = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"node-debugger-{NODE}-7x2q", "namespace": "default"},
        "spec": {
            "nodeName": NODE,
            "hostPID": True,
            "containers": [{"name": "debugger", "image": "ubuntu"}],
            "volumes": [{"name": "host-root", "hostPath": {"path": "/"}}],
        },
        "status": {"phase": "Succeeded"},
    }
    logs = "Failed to initialize NVML: Unknown Error\n"
    diagnosis = judge(case(view=healthy_view(other_pods=(PodEvidence(debugger, logs=logs),))))
    assert ids(diagnosis) == ["F10"]
    verdict = diagnosis.verdicts[0]
    assert verdict.severity == "info" and diagnosis.exit_code == 0
    assert "says nothing about the driver" in verdict.cause
    assert any("the host's own NVML check: ok" in line for line in verdict.evidence)
    # Without the host, it says the driver was not judged, and still blames nothing.
    diagnosis = judge(case(host=None, view=healthy_view(other_pods=(PodEvidence(debugger, logs=logs),))))
    assert ids(diagnosis) == ["F10"] and "gpunode doctor HOST" in diagnosis.verdicts[0].cause


def test_f10_with_a_really_dead_driver_names_the_driver_first() -> None:
    debugger = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"node-debugger-{NODE}-7x2q", "namespace": "default"},
        "spec": {"nodeName": NODE, "containers": [{"name": "debugger", "image": "ubuntu"}]},
        "status": {"phase": "Succeeded"},
    }
    host = healthy_host(nvml=debian_library(module="535.261.03", version="535.309.01"))
    diagnosis = judge(
        case(
            host=host,
            view=healthy_view(other_pods=(PodEvidence(debugger, logs="Failed to initialize NVML: Unknown Error"),)),
        )
    )
    assert ids(diagnosis)[0] == "F14" and "F10" in ids(diagnosis)


# --- order, logs, rendering ---------------------------------------------------------------------------


def test_the_lowest_broken_link_comes_first_whatever_the_order_found() -> None:
    host = healthy_host(
        loaded_modules=frozenset({"nouveau"}),
        nvml=debian_library(module=None),
        toolkit_runtime=None,
        packages={},
        containerd=replace(healthy_host().containerd, dump_text=dump(runtime=None)),
    )
    node = gpu_node(allocatable=None, capacity=None, taints=[{"key": "nvidia.com/gpu", "effect": "NoSchedule"}])
    daemonset = gpunode_daemonset()
    daemonset["spec"]["template"]["spec"]["tolerations"] = []
    diagnosis = judge(case(host=host, view=healthy_view(node=node, daemonsets=(daemonset,), plugin_pods=())))
    links = [v.link for v in diagnosis.verdicts]
    assert links == sorted(links, key=LINKS.index)
    assert ids(diagnosis)[0] == "F13"
    assert {"F17", "F15", "ALLOCATABLE-ABSENT"} <= set(ids(diagnosis))


def test_plugin_log_reader_knows_both_plugins() -> None:
    bundled = read_plugin_log(LIB_NOT_FOUND)
    assert bundled.plugin == "bundled" and bundled.init_failure and bundled.init_failure.reason == "library_not_found"
    assert "cannot open shared object file" in bundled.init_failure.error
    nvidia = read_plugin_log(NVIDIA_LIB_NOT_FOUND)
    assert nvidia.plugin == "nvidia" and nvidia.init_failure and nvidia.init_failure.reason == "library_not_found"
    registered = read_plugin_log(
        "I0615 main.go:1] Registered device plugin for 'nvidia.com/gpu' with Kubelet\n"
        "I0615 main.go:2] inotify: /var/lib/kubelet/device-plugins/kubelet.sock created, restarting.\n"
    )
    assert registered.registered and registered.kubelet_restart_seen and registered.init_failure is None
    for text, reason in (
        ("nvml init failed: ERROR_DRIVER_NOT_LOADED", "driver_not_loaded"),
        ("Failed to initialize NVML: Driver/library version mismatch", "driver_library_mismatch"),
        ("nvml init failed: Insufficient Permissions", "no_permission"),
        ("error getting MIG device: Insufficient Permissions", "mig_no_permission"),
        ("nvml init failed: Unknown Error", "nvml_unknown_error"),
        ("/lib/x86_64-linux-gnu/libc.so.6: version `GLIBC_PRIVATE' not found", "library_unusable"),
    ):
        found = read_plugin_log(text).init_failure
        assert found is not None and found.reason == reason, text


def test_text_and_json_output() -> None:
    host = healthy_host(nvml=debian_library(module="535.261.03", version="535.309.01"))
    diagnosis = judge(case(host=host, record=HostRecord("0.1.0", NODE, 2)))
    text = format_text(diagnosis)
    assert text.splitlines()[0] == f"{NODE}:"
    assert text.splitlines()[1].startswith("!![F14] Driver/library version mismatch") and "(reboot required)" in text
    assert "      evidence: " in text and "      fix: Reboot" in text
    data = json.loads(diagnosis.to_json())
    assert data["exit_code"] == 1 and data["healthy"] is False
    verdict = data["verdicts"][0]
    assert set(verdict) >= {"id", "cause", "evidence", "fix", "severity"}
    assert verdict["id"] == "F14" and verdict["severity"] == "critical" and isinstance(verdict["evidence"], list)


@pytest.mark.parametrize(
    "alloc, expected", [("2", []), ("1", ["ALLOCATABLE-SHORT"]), ("0", ["F9"]), (None, ["ALLOCATABLE-ABSENT"])]
)
def test_allocatable_against_the_gpus_on_the_host(alloc: str | None, expected: list[str]) -> None:
    view = healthy_view(node=gpu_node(allocatable=alloc, capacity=alloc))
    assert [i for i in ids(judge(case(view=view))) if i.startswith(("ALLOC", "F9"))] == expected


def _image_pull_view(image: str) -> ClusterView:
    daemonset = gpunode_daemonset(image=image)
    status = {
        "phase": "Pending",
        "containerStatuses": [
            {
                "name": "gpunode-device-plugin",
                "ready": False,
                "restartCount": 0,
                "image": image,
                "state": {"waiting": {"reason": "ErrImagePull", "message": f'failed to pull "{image}": not found'}},
            }
        ],
    }
    return healthy_view(
        daemonsets=(daemonset,),
        plugin_pods=(PodEvidence(plugin_pod(daemonset, status)),),
        node=gpu_node(allocatable=None, capacity=None),
    )


def test_dp_image_for_gpunodes_own_image_names_it_and_the_ways_to_get_one() -> None:
    diagnosis = judge(case(host=None, view=_image_pull_view("ghcr.io/gpunode/gpunode:0.1.0")))
    verdict = next(v for v in diagnosis.verdicts if v.id == "DP-IMAGE")
    assert "ghcr.io/gpunode/gpunode:0.1.0" in verdict.cause
    for way in ("gpunode image build", "ctr -n k8s.io images import", "--image REF", "--plugin-mode host"):
        assert way in verdict.fix
    other = judge(case(host=None, view=_image_pull_view("registry.local/team/plugin:1")))
    verdict = next(v for v in other.verdicts if v.id == "DP-IMAGE")
    assert "registry.local/team/plugin:1" in verdict.cause and "gpunode image build" not in verdict.fix
