"""A pyinfra session over many hosts: connect, read the snapshot, run planned operations.

pyinfra's own runners stop a host at its first failed operation by raising inside a
greenlet; gpunode wants a verdict per host and step instead, so it drives
`run_host_op` itself, one greenlet per host, at most `parallel` hosts at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import gevent
from gevent.pool import Pool
from pyinfra.api.config import Config
from pyinfra.api.exceptions import ConnectError
from pyinfra.api.host import Host
from pyinfra.api.inventory import Inventory
from pyinfra.api.operation import add_op
from pyinfra.api.operations import run_host_op
from pyinfra.api.state import State
from pyinfra.connectors.ssh import SSHConnector
from pyinfra.context import ctx_host, ctx_state

from gpunode.bootstrap.core.host.facts import HostFacts, SnapshotError
from gpunode.bootstrap.node.snapshot import HostSnapshot
from gpunode.bootstrap.orchestration.host_keys import ensure_known_hosts_file, explain_connect_error, known_hosts_for


@dataclass(frozen=True)
class PlannedOp:
    """One pyinfra operation for one host, with the step it belongs to."""

    step: str
    function: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class OpOutcome:
    step: str
    succeeded: bool
    changed: bool
    output: str


def quiet_pyinfra() -> None:
    """pyinfra logs every command at INFO; gpunode prints its own summary instead."""
    logging.getLogger("pyinfra").setLevel(logging.WARNING)


class Session:
    def __init__(self, inventory: Inventory, *, parallel: int = 10, connect_timeout: int = 10) -> None:
        quiet_pyinfra()
        self.parallel = max(1, parallel)
        self.state = State(
            inventory,
            Config(PARALLEL=self.parallel, CONNECT_TIMEOUT=connect_timeout),  # type: ignore[no-untyped-call]
            check_for_changes=False,
        )
        self.pool = Pool(self.parallel)

    @property
    def hosts(self) -> list[Host]:
        return list(self.state.inventory)

    def _each(self, hosts: Iterable[Host], work: Callable[[Host], Any]) -> dict[Host, Any]:
        """Run `work` for every host concurrently; an exception becomes that host's result."""

        def guarded(host: Host) -> Any:
            with ctx_state.use(self.state), ctx_host.use(host):
                try:
                    return work(host)
                except Exception as exc:
                    return exc

        greenlets = {host: self.pool.spawn(guarded, host) for host in hosts}
        gevent.joinall(list(greenlets.values()))
        return {host: greenlet.value for host, greenlet in greenlets.items()}

    def connect(self) -> dict[Host, str | None]:
        """Connect every host; the value is the connection error, or None."""

        def connect_one(host: Host) -> str | None:
            known = None
            if host.connector_cls is SSHConnector:
                known = known_hosts_for(host.name, host.data)
                try:
                    ensure_known_hosts_file(known)
                except OSError as exc:
                    return (
                        f"cannot create the known-hosts file {known.path}: {exc.strerror}. "
                        "Fix: pass --known-hosts with a file you can write."
                    )
            try:
                host.connect(raise_exceptions=True, show_errors=False)
            except ConnectError as exc:
                message = str(exc.args[0] if exc.args else exc)
                return explain_connect_error(message, known) if known is not None else message
            self.state.activate_host(host)
            return None

        results = self._each(self.hosts, connect_one)
        return {host: (str(value) if isinstance(value, Exception) else value) for host, value in results.items()}

    def snapshot(
        self,
        hosts: Sequence[Host],
        *,
        containerd_config: Mapping[Host, str],
        managed_files: Mapping[Host, tuple[str, ...]],
        apt_names: Mapping[Host, tuple[str, ...]] | None = None,
        diagnostics: bool = False,
    ) -> dict[Host, HostFacts | Exception]:
        def read(host: Host) -> HostFacts | Exception:
            output = host.run_shell_command(
                HostSnapshot().command(
                    containerd_config[host], managed_files[host], diagnostics, (apt_names or {}).get(host, ())
                ),
            )
            status, lines = output
            if not status:
                return SnapshotError("reading the host failed: " + " ".join(lines.stderr_lines[-3:]).strip())
            return HostSnapshot().process(lines.stdout_lines)

        return self._each(hosts, read)

    def run(
        self, plans: Mapping[Host, Sequence[PlannedOp]], on_outcome: Callable[[Host, OpOutcome], None] | None = None
    ) -> dict[Host, list[OpOutcome]]:
        """Add and execute each host's operations in order; a host stops at its first failure."""
        hashes: dict[Host, list[tuple[str, str]]] = {}
        with ctx_state.use(self.state):
            for host, planned in plans.items():
                hashes[host] = []
                for op in planned:
                    before = len(host.op_hash_order)
                    add_op(self.state, op.function, *op.args, host=host, name=op.step, **op.kwargs)
                    hashes[host].append((op.step, host.op_hash_order[before]))
        self.state.is_executing = True

        def run_host(host: Host) -> list[OpOutcome]:
            outcomes: list[OpOutcome] = []
            for step, op_hash in hashes[host]:
                succeeded = run_host_op(self.state, host, op_hash)
                meta = self.state.get_op_data_for_host(host, op_hash).operation_meta
                output = "\n".join(meta.stderr_lines or meta.stdout_lines) if meta.is_complete() else ""
                outcome = OpOutcome(step, bool(succeeded), bool(succeeded) and meta.did_change(), output)
                outcomes.append(outcome)
                if on_outcome is not None:
                    on_outcome(host, outcome)
                if not succeeded:
                    break
            return outcomes

        results = self._each(list(plans), run_host)
        self.state.is_executing = False
        return {
            host: (
                value
                if not isinstance(value, Exception)
                else [OpOutcome("internal", False, False, f"{type(value).__name__}: {value}")]
            )
            for host, value in results.items()
        }

    def disconnect(self) -> None:
        for host in self.state.activated_hosts:
            try:
                host.disconnect()
            except Exception:
                pass
