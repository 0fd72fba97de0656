"""Two bootstraps of one host never interleave; a dead run leaves no stale lock."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from pyinfra.api import Config, Inventory, State

from gpunode.bootstrap.errors import TransientError
from gpunode.bootstrap.node.host_lock import OWNER_PATH, HostLock


def local_host():  # type: ignore[no-untyped-def]
    state = State(Inventory((["@local"], {})), Config())
    host = next(iter(state.inventory))
    host.connect(raise_exceptions=True)
    return host


def test_second_lock_is_refused_with_the_owner_named_then_granted_after_release() -> None:
    first = HostLock(local_host())
    first.acquire()
    try:
        with pytest.raises(TransientError) as refused:
            HostLock(local_host()).acquire()
        assert "another gpunode bootstrap holds this host's lock" in str(refused.value)
        assert "gpunode " in str(refused.value) and " since " in str(refused.value)
    finally:
        first.release()
    with HostLock(local_host()):
        pass


def test_lock_dies_with_the_process_that_held_it() -> None:
    holder = textwrap.dedent("""
        import os, sys
        from pyinfra.api import Config, Inventory, State
        from gpunode.bootstrap.node.host_lock import HostLock
        state = State(Inventory((["@local"], {})), Config())
        host = next(iter(state.inventory)); host.connect(raise_exceptions=True)
        HostLock(host).acquire()
        print("held", flush=True)
        os._exit(9)  # no release: as if gpunode crashed or the connection dropped
    """)
    result = subprocess.run([sys.executable, "-c", holder], capture_output=True, text=True, timeout=60)
    assert "held" in result.stdout, result.stderr
    with HostLock(local_host()):
        with open(OWNER_PATH) as owner:
            assert "gpunode" in owner.read()
