"""What each XID asks of the operator, after NVIDIA's XID catalogue, and what the plugin does.

NVIDIA's catalogue (docs.nvidia.com/deploy/xid-errors, "Resolution Bucket (Immediate
Action)") sorts XIDs by the action they need: nothing, the application's restart, a GPU
reset, or a node reboot. The plugin's health policy follows that action:

- nothing from the GPU's side (the application did something wrong): ignored, counted;
- the application's restart (the error was contained to it; the GPU goes on): the device
  is Unhealthy for the quiet period (`--health-recovery-seconds`), then Healthy again;
- a GPU reset or a reboot: fatal, the device stays Unhealthy until the plugin restarts
  (which, in a DaemonSet, follows the reset or reboot that clears the fault).

An XID this table does not name is treated like an application restart: Unhealthy for the
quiet period. docs/plugin.md carries the same table for users; a test keeps them equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Action = Literal["none", "restart-app", "reset-gpu", "reboot"]
Treatment = Literal["ignored", "transient", "fatal"]

# The treatment each action gets (see the module docstring).
TREATMENT: dict[Action, Treatment] = {
    "none": "ignored",
    "restart-app": "transient",
    "reset-gpu": "fatal",
    "reboot": "fatal",
}


@dataclass(frozen=True)
class Xid:
    number: int
    meaning: str
    action: Action
    # Set only where the plugin departs from the action's treatment, with the reason in `meaning`.
    override: Treatment | None = None

    @property
    def treatment(self) -> Treatment:
        return self.override or TREATMENT[self.action]


XIDS: tuple[Xid, ...] = (
    # Application faults: the GPU is fine (NVIDIA's device plugin skips the same six).
    Xid(13, "graphics engine exception (an application's illegal instruction or address)", "none"),
    Xid(31, "GPU memory page fault (an application's illegal address)", "none"),
    Xid(43, "GPU stopped processing one application's channel (the application faulted)", "none"),
    Xid(45, "preemptive cleanup after an earlier error (the application was stopped)", "none"),
    Xid(68, "video decoder exception (an application's stream)", "none"),
    Xid(109, "context switch timeout (an application's context)", "none"),
    # Contained errors: the application that met it must restart; the GPU goes on.
    Xid(94, "contained ECC error (only the application using the memory is affected)", "restart-app"),
    # Corrected errors need nothing now, but a high rate comes before uncorrectable ones:
    # Unhealthy for the quiet period, so a burst shows, then Healthy again.
    Xid(92, "high single-bit ECC error rate (corrected errors)", "none", override="transient"),
    # The GPU needs a reset before it can be trusted again.
    Xid(46, "GPU stopped processing (the whole GPU)", "reset-gpu"),
    Xid(48, "uncorrectable double-bit ECC error", "reset-gpu"),
    Xid(61, "internal micro-controller breakpoint or warning", "reset-gpu"),
    Xid(62, "internal micro-controller halt", "reset-gpu"),
    Xid(63, "ECC page retirement or row remapping recorded (applied at the next reset)", "reset-gpu"),
    Xid(64, "ECC page retirement or row remapping failed", "reset-gpu"),
    Xid(74, "NVLink error", "reset-gpu"),
    Xid(95, "uncontained ECC error (every application on the GPU is affected)", "reset-gpu"),
    Xid(119, "GSP RPC timeout", "reset-gpu"),
    Xid(120, "GSP error", "reset-gpu"),
    Xid(140, "unrecovered ECC error", "reset-gpu"),
    # The GPU is gone from the bus: a reset from the host rarely brings it back.
    Xid(79, "GPU has fallen off the bus", "reboot"),
)

BY_NUMBER: dict[int, Xid] = {x.number: x for x in XIDS}


def with_treatment(treatment: Treatment) -> frozenset[int]:
    return frozenset(x.number for x in XIDS if x.treatment == treatment)
