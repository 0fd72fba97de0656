"""What runs on the host after the driver step installed a branch without --driver-version.

The plan can only hold the branch (`535.*`) while it installs: which release apt picks is
known once it has picked. Right after the install the pin is narrowed to the release that
is now installed, with the very file the next run's plan computes from that release, so a
second run finds the pin as it wants it and changes nothing (converged in one run).
"""

from __future__ import annotations

from dataclasses import replace

from pyinfra.api.host import Host
from pyinfra.api.state import State

from gpunode.bootstrap.core.packages.driver import plan_driver
from gpunode.bootstrap.errors import GpunodeError
from gpunode.bootstrap.node.containerd_apply import _run
from gpunode.bootstrap.node.remote_files import FileWrite, sh, write_files_script
from gpunode.bootstrap.node.steps.base import PinInstalledDriver


def pin_installed_driver(state: State, host: Host, *, pin: PinInstalledDriver) -> bool:
    ok, output = _run(host, f"dpkg-query -W -f='${{Version}}' {pin.version_package}")
    installed = output.strip()
    if not ok or not installed:
        pin.messages.append(f"could not read the installed {pin.version_package} to pin it: {output.strip()}")
        return False
    try:
        planned = plan_driver(pin.os, pin.arch, replace(pin.request, version=installed), pin.kernel_release, {})
    except GpunodeError as exc:
        pin.messages.append(f"the installed driver {installed} cannot be pinned: {exc}")
        return False
    if planned.pin is None:
        return True
    ok, output = _run(host, sh(write_files_script([FileWrite(planned.pin.path, planned.pin.content)], pin.backup)))
    if not ok:
        pin.messages.append(f"writing {planned.pin.path} failed: {output}")
        return False
    pin.messages.append(f"held at the installed release {installed} ({planned.pin.path})")
    return True


__all__ = ["pin_installed_driver"]
