"""SSH host keys: the known-hosts file each SSH host is checked against, made ready before connecting.

The policy is OpenSSH's `StrictHostKeyChecking=accept-new` unless the user asks for strict:
a host seen for the first time has its key recorded; a host whose key differs from the
recorded one is refused (paramiko raises BadHostKeyException, pyinfra reports it); with
strict checking (`--strict-host-keys`, or `ssh_strict_host_key_checking="yes"` in an
inventory) a host without a recorded key is refused too.

pyinfra appends new keys to the file but never creates it or its directory, so a control
machine without `~/.ssh` (a fresh CI runner, a new root account) could reach no host. This
module creates what OpenSSH would: the directory 0700, the file 0600, both owned by the user.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paramiko.config import SSHConfig

DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
ACCEPT_NEW = "accept-new"
STRICT = "yes"


@dataclass(frozen=True)
class KnownHosts:
    """Where a host's key is looked up and recorded, and what happens to an unknown key."""

    path: Path
    policy: str

    @property
    def records_new_keys(self) -> bool:
        return self.policy in (ACCEPT_NEW, "ask")


def known_hosts_for(host_name: str, data: Any) -> KnownHosts:
    """The file and policy pyinfra's SSH connector will use for this host (same precedence)."""
    policy = str(data.get("ssh_strict_host_key_checking") or ACCEPT_NEW)
    explicit = data.get("ssh_known_hosts_file")
    if explicit:
        return KnownHosts(Path(str(explicit)).expanduser(), policy)
    config_file = data.get("ssh_config_file") or "~/.ssh/config"
    config_path = Path(str(config_file)).expanduser()
    if config_path.is_file():
        config = SSHConfig.from_path(str(config_path))
        named = config.lookup(str(data.get("ssh_hostname") or host_name)).get("userknownhostsfile")
        if named:
            return KnownHosts(Path(str(named).split()[0]).expanduser(), policy)
    return KnownHosts(Path(DEFAULT_KNOWN_HOSTS).expanduser(), policy)


def ensure_known_hosts_file(known: KnownHosts) -> None:
    """Create the known-hosts file (0600) and any missing directory above it (0700), as ssh does.

    Only when new keys are to be recorded: under strict checking nothing is written, and
    a missing file means "no host is known", which the connection then reports.
    """
    if not known.records_new_keys or known.path.exists():
        return
    missing: list[Path] = []
    parent = known.path.parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    for directory in reversed(missing):
        directory.mkdir(mode=0o700)
        os.chmod(directory, 0o700)  # mkdir's mode is cut by the umask
    fd = os.open(known.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    os.chmod(known.path, 0o600)


def explain_connect_error(message: str, known: KnownHosts) -> str:
    """pyinfra's connection error, with what to do when it is about host keys."""
    if "does not match" in message or "HOST IDENTIFICATION HAS CHANGED" in message:
        return (
            f"{message} The host's key differs from the one recorded in {known.path}: it was "
            "reinstalled, or someone is in between. Fix: check the key with the host's owner, then "
            f"remove the old entry (ssh-keygen -R HOST -f {known.path}) and connect again."
        )
    if "StrictPolicy" in message or "No host key for" in message:
        return (
            f"{message} Strict host key checking is on and {known.path} has no key for this host. "
            "Fix: add its key (ssh-keyscan HOST >> FILE, after checking its fingerprint), or pass "
            "--known-hosts FILE holding it."
        )
    return message
