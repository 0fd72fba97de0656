"""`gpunode doctor` on GPU sharing: a config the plugin refused, a node label naming a config
the ConfigMap lacks, a pod refused by failRequestsGreaterThanOne, MPS without its daemon.
Log lines are the plugins' own: gpunode's written with its log formatter as serve.py writes
them, NVIDIA's as its code prints them; the admission message is the kubelet's."""

from __future__ import annotations

from doctor_support import case, gpu_node, gpunode_daemonset, healthy_view, ids, judge, plugin_pod

from gpunode.bootstrap.core.doctor.engine import format_text
from gpunode.bootstrap.core.doctor.evidence import PodEvidence
from gpunode.bootstrap.core.kube.manifests import config_objects
from gpunode.bootstrap.core.kube.plugin_config import PluginConfigs, sharing_config
from gpunode.bootstrap.core.kube.plugin_deployment import PluginDeployment
from gpunode.plugin.log import format_event

LIB = "/usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.535.261.03"
REGISTERED = "registered resource=nvidia.com/gpu socket=gpunode-nvidia.com-gpu.sock attempt=1\n"


def shared_view(logs: str = REGISTERED, label: str | None = None, other_pods: tuple = ()) -> object:  # type: ignore[type-arg]
    configs = PluginConfigs((sharing_config("time-slicing", 4),), default="time-slicing-4")
    daemonset = gpunode_daemonset(plugin_configs=configs)
    configmap = config_objects(PluginDeployment(driver_version="535.261.03", lib_path=LIB, plugin_configs=configs))[0]
    return healthy_view(
        daemonsets=(daemonset,),
        plugin_pods=(PodEvidence(plugin_pod(daemonset), logs=logs),),
        node=gpu_node(
            allocatable="8", capacity="8", labels={"nvidia.com/device-plugin.config": label} if label else {}
        ),
        config_maps=(configmap,),
        other_pods=other_pods,
    )


def test_a_shared_node_in_order_has_no_sharing_verdict() -> None:
    diagnosis = judge(case(view=shared_view(label="time-slicing-4")))
    assert not [i for i in ids(diagnosis) if i.startswith(("SHARING", "MPS"))], format_text(diagnosis)


def test_a_label_naming_a_config_the_configmap_lacks() -> None:
    diagnosis = judge(case(view=shared_view(label="mps-8")))
    verdict = next(v for v in diagnosis.verdicts if v.id == "SHARING-CONFIG-MISSING")
    assert "nvidia.com/device-plugin.config=mps-8" in verdict.cause
    assert any("has: time-slicing-4" in line for line in verdict.evidence)
    assert "time-slicing-4" in verdict.fix and diagnosis.exit_code == 1


def test_a_refused_config_with_the_old_one_in_force() -> None:
    line = format_event(
        "config_rejected",
        config="broken",
        reason="invalid",
        error="config broken (/available-configs/broken) line 6: sharing.timeSlicing.resources[0].replicas: "
        "1 replicas: the number must be >= 2. Fix: give 2 or more",
        in_force="time-slicing-4",
    )
    diagnosis = judge(case(view=shared_view(logs=REGISTERED + line + "\n", label="time-slicing-4")))
    verdict = next(v for v in diagnosis.verdicts if v.id == "SHARING-CONFIG-INVALID")
    assert "config time-slicing-4 stays in force" in verdict.cause and "line 6" in verdict.cause
    assert verdict.severity == "warning"


def test_nvidias_plugin_and_config_manager_words() -> None:
    nvidia = "E1207 02:00:00.000000       1 main.go:123] error starting plugins: unable to load config: unable to finalize config: unable to parse config file: error parsing config file: unmarshal error: error unmarshaling JSON: while decoding JSON: number of replicas must be >= 2"
    manager = "E1207 02:00:00.000000       1 main.go:177] Error: specified config mps-8 does not exist"
    diagnosis = judge(case(view=shared_view(logs=nvidia + "\n" + manager + "\n")))
    assert {"SHARING-CONFIG-INVALID", "SHARING-CONFIG-MISSING"} <= set(ids(diagnosis))


def test_mps_without_its_daemon() -> None:
    ours = format_event(
        "mps_daemon_not_running", pipes="/run/nvidia/mps/nvidia.com/gpu/pipe/control", waited="60s", fix="run it"
    )
    diagnosis = judge(case(view=shared_view(logs=ours + "\n")))
    verdict = next(v for v in diagnosis.verdicts if v.id == "MPS-DAEMON-DOWN")
    assert "/run/nvidia/mps/nvidia.com/gpu/pipe/control" in verdict.cause
    nvidia = "E1207 plugin.go:88] error checking MPS daemon health: failed to send command to MPS daemon: exit status 1"
    assert "MPS-DAEMON-DOWN" in ids(judge(case(view=shared_view(logs=nvidia + "\n"))))


def test_a_pod_refused_by_fail_requests_greater_than_one() -> None:
    message = (
        "Allocate failed due to rpc error: code = Unknown desc = invalid allocation request for "
        '"nvidia.com/gpu": invalid request: maximum request size for shared resources is 1; found 2, '
        "which is unexpected"
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "trainer", "namespace": "ml"},
        "spec": {"nodeName": "gpu01", "containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": "2"}}}]},
        "status": {"phase": "Failed", "reason": "UnexpectedAdmissionError", "message": message},
    }
    event = {"type": "Warning", "reason": "UnexpectedAdmissionError", "message": message}
    diagnosis = judge(case(view=shared_view(other_pods=(PodEvidence(pod, events=(event,)),))))
    verdict = next(v for v in diagnosis.verdicts if v.id == "SHARING-REQUEST-TOO-LARGE")
    assert "ml/trainer asks for 2 shared GPU replicas" in verdict.cause
    assert "nvidia.com/gpu: 1 per container" in verdict.fix
