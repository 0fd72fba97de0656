"""Every rendered manifest is valid Kubernetes, by the API's own OpenAPI schema.

The schemas are the JSON Schema documents generated from Kubernetes' OpenAPI definitions that
the `kubernetes-validate` package ships per release, in their strict form (an unknown field
is an error). Validated against 1.28 (the oldest release gpunode supports) and the newest
release the installed package carries (1.37 with kubernetes-validate 1.37.0).
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import kubernetes_validate
import pytest
from kubernetes_validate.utils import latest_version
from packaging.version import Version

from gpunode.bootstrap.core.kube.manifests import manifest_objects
from gpunode.bootstrap.core.kube.plugin_deployment import MIG_STRATEGIES, MODES, PLUGINS, PluginDeployment

OLDEST = "1.28.0"
NEWEST = latest_version()


def objects(plugin: str, mode: str, mig: str) -> list[dict[str, Any]]:
    return manifest_objects(
        PluginDeployment(
            driver_version="535.261.03",
            lib_path="/usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.535.261.03",
            plugin=plugin,  # type: ignore[arg-type]
            mode=mode,  # type: ignore[arg-type]
            mig_strategy=mig,  # type: ignore[arg-type]
        )
    )


def test_the_newest_schema_is_recent() -> None:
    assert Version(NEWEST) >= Version("1.34")


@pytest.mark.parametrize("kubernetes", [OLDEST, NEWEST])
@pytest.mark.parametrize("plugin,mode,mig", list(itertools.product(PLUGINS, MODES, MIG_STRATEGIES)))
def test_manifests_validate_strictly(kubernetes: str, plugin: str, mode: str, mig: str) -> None:
    rendered = objects(plugin, mode, mig)
    labeller = ["ServiceAccount", "ClusterRole", "ClusterRoleBinding"] if plugin == "bundled" else []
    assert [o["kind"] for o in rendered] == ["RuntimeClass", *labeller, "DaemonSet"]
    for obj in rendered:
        # validate() names the schema release it used: the one asked for, not an older one.
        assert kubernetes_validate.validate(obj, kubernetes, strict=True) == ".".join(kubernetes.split(".")[:2])


@pytest.mark.parametrize("kubernetes", [OLDEST, NEWEST])
def test_the_validator_rejects_what_the_api_server_would(kubernetes: str) -> None:
    # Proof that the check can fail: a misspelt field and a wrong type in the same DaemonSet.
    daemonset = objects("bundled", "mount", "none")[-1]
    misspelt = copy.deepcopy(daemonset)
    misspelt["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privilged"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, kubernetes, strict=True)
    wrong_type = copy.deepcopy(daemonset)
    wrong_type["spec"]["template"]["spec"]["volumes"][0]["hostPath"]["path"] = ["/var/lib/kubelet"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, kubernetes, strict=True)
