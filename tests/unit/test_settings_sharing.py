"""Per-host sharing settings: inventory data (gpunode_plugin_config, gpunode_sharing with
gpunode_replicas) and flags, checked before any host is contacted, naming the config the
node is labelled with."""

from __future__ import annotations

import pytest

from gpunode.bootstrap.core.settings import resolve_settings
from gpunode.bootstrap.errors import UserError


def test_the_config_a_host_uses() -> None:
    assert resolve_settings("h", {}, {}).plugin_config_name is None
    shared = resolve_settings("h", {"gpunode_sharing": "time-slicing", "gpunode_replicas": 4}, {})
    assert shared.plugin_config_name == "time-slicing-4"
    named = resolve_settings(
        "h", {"gpunode_plugin_config": "big", "gpunode_sharing": "mps", "gpunode_replicas": "2"}, {}
    )
    assert named.plugin_config_name == "big"
    # A flag overrides the inventory for every host.
    flagged = resolve_settings("h", {"gpunode_sharing": "time-slicing", "gpunode_replicas": 4}, {"sharing": "mps"})
    assert flagged.plugin_config_name == "mps-4"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"gpunode_sharing": "time-slicing"}, "sharing and replicas go together"),
        ({"gpunode_sharing": "spatial", "gpunode_replicas": 2}, "is not one of time-slicing, mps"),
        ({"gpunode_sharing": "mps", "gpunode_replicas": 1}, "is not a number of replicas"),
        ({"gpunode_sharing": "mps", "gpunode_replicas": "two"}, "is not a number of replicas"),
        ({"gpunode_plugin_config": "has space"}, "cannot name a device plugin config"),
    ],
)
def test_bad_sharing_data_is_refused_naming_the_host_and_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(UserError, match=message) as refused:
        resolve_settings("gpu07", data, {})
    assert "gpu07" in str(refused.value)
