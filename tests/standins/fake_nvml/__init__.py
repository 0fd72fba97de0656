"""A fake libnvidia-ml.so.1 for machines without GPUs: build it, describe its GPUs, drive it.

The library (fake_nvml.c) speaks NVML's ABI, so the real pynvml loads it through
LD_LIBRARY_PATH (set before the process starts: pynvml loads the library once). Its GPUs
come from a config file, its XID events from an append-only events file; README.md beside
this file documents both formats and the environment variables.

    lib_dir = build_fake_nvml(cache_dir)            # directory holding libnvidia-ml.so.1
    nvml = FakeNvml(tmp_path, lib_dir, FakeNvmlConfig.uniform(8, nvlink_pairs=True))
    subprocess.Popen([...], env={**os.environ, **nvml.env()})
    nvml.inject_xid(3, 79)                          # GPU 3 fell off the bus
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "fake_nvml.c"
LIBRARY_NAME = "libnvidia-ml.so.1"
_CFLAGS = [
    "-shared",
    "-fPIC",
    "-O2",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-fvisibility=hidden",
    f"-Wl,-soname,{LIBRARY_NAME}",
    "-pthread",
]

# NVML's topology levels, nearest first (nvmlGpuTopologyLevel_t).
TOPOLOGY_LEVELS = ("INTERNAL", "SINGLE", "MULTIPLE", "HOSTBRIDGE", "NODE", "SYSTEM")


def build_fake_nvml(cache_dir: Path) -> Path:
    """Compile fake_nvml.c with gcc (once per source and flags) and return the directory
    holding `libnvidia-ml.so.1`. Safe to call from several processes at once: each builds
    in a private directory and renames it into place; the first rename wins."""
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(_CFLAGS).encode()).hexdigest()[:16]
    root = cache_dir / "fake-nvml"
    final = root / digest
    if (final / LIBRARY_NAME).is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=root))
    try:
        subprocess.run(
            ["gcc", *_CFLAGS, "-o", str(building / LIBRARY_NAME), str(SOURCE)],
            check=True,
            capture_output=True,
            text=True,
        )
        try:
            os.rename(building, final)
        except OSError:
            if not (final / LIBRARY_NAME).is_file():
                raise
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"gcc could not build the fake NVML library:\n{exc.stderr}") from exc
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return final


def _value(text: str) -> str:
    if any(c in text for c in '"\n#'):
        raise ValueError(f"fake NVML config values cannot hold '\"', '#' or newlines: {text!r}")
    return f'"{text}"' if (" " in text or not text) else text


@dataclass(frozen=True)
class FakeGpu:
    """One full GPU. Defaults make GPU `index` look like the index-th A100 of a server."""

    index: int
    name: str = "NVIDIA A100-SXM4-40GB"
    uuid: str = ""
    pci_bus_id: str = ""
    minor: int | None = None
    numa: int | None = None
    memory_mib: int = 40960
    mig: str = "0"  # "unsupported", "0" (disabled) or "1" (enabled)
    events: bool = True  # False: the GPU cannot register for XID events
    mig_error: str | None = None  # NVML error its MIG device lookups answer (NO_PERMISSION: F7)
    cc: str = "8.0"  # CUDA compute capability, MAJOR.MINOR

    def resolved_uuid(self) -> str:
        return self.uuid or f"GPU-{0xFA4E0000 + self.index:08x}-0000-4000-8000-{self.index:012x}"

    def resolved_bus_id(self) -> str:
        return self.pci_bus_id or f"00000000:{0x07 + self.index * 0x08:02X}:00.0"

    def line(self) -> str:
        parts = [
            "gpu",
            f"uuid={_value(self.resolved_uuid())}",
            f"name={_value(self.name)}",
            f"pci={self.resolved_bus_id()}",
            f"minor={self.index if self.minor is None else self.minor}",
            f"memory_mib={self.memory_mib}",
            f"mig={self.mig}",
            f"cc={self.cc}",
        ]
        if self.numa is not None:
            parts.append(f"numa={self.numa}")
        if not self.events:
            parts.append("events=unsupported")
        if self.mig_error:
            parts.append(f"mig_error={self.mig_error}")
        return " ".join(parts)


@dataclass(frozen=True)
class FakeMig:
    """One MIG device (a GPU instance with one compute instance) on GPU `parent`."""

    parent: int
    gi: int
    ci: int = 0
    gi_slices: int = 1
    ci_slices: int = 1
    memory_mib: int = 4864
    uuid: str = ""
    decoders: int = 0
    jpegs: int = 0
    ofas: int = 0

    def resolved_uuid(self) -> str:
        return self.uuid or f"MIG-{0x0A160000 + self.parent:08x}-{self.gi:04x}-4{self.ci:03x}-8000-{self.gi:012x}"

    def line(self) -> str:
        return (
            f"mig parent={self.parent} gi={self.gi} ci={self.ci} gi_slices={self.gi_slices} "
            f"ci_slices={self.ci_slices} memory_mib={self.memory_mib} uuid={_value(self.resolved_uuid())} "
            f"decoders={self.decoders} jpegs={self.jpegs} ofas={self.ofas}"
        )


@dataclass(frozen=True)
class FakeNvmlConfig:
    """What the fake library reports: GPUs, MIG devices, NVLinks, PCIe topology, versions."""

    gpus: tuple[FakeGpu, ...]
    migs: tuple[FakeMig, ...] = ()
    nvlinks: tuple[tuple[int, int, int], ...] = ()  # (gpu a, gpu b, link count)
    topology: dict[tuple[int, int], str] = field(default_factory=dict)  # (a, b) -> level
    driver_version: str = "535.261.03"
    init_error: str | None = None  # an NVML error name (NO_PERMISSION ...) nvmlInit answers

    @classmethod
    def uniform(cls, count: int, **kwargs: object) -> FakeNvmlConfig:
        return cls(gpus=tuple(FakeGpu(index=i) for i in range(count)), **kwargs)  # type: ignore[arg-type]

    @classmethod
    def dgx_like(cls) -> FakeNvmlConfig:
        """Eight GPUs on two NUMA nodes, in NVLink pairs (0-1, 2-3, 4-5, 6-7, 12 links each),
        pairs sharing a PCIe switch on the same node (0-3, 4-7) and crossing sockets
        between the halves: the shape topology-aware allocation has to get right."""
        gpus = tuple(
            FakeGpu(index=i, numa=0 if i < 4 else 1, memory_mib=81920, name="NVIDIA A100-SXM4-80GB") for i in range(8)
        )
        nvlinks = tuple((a, a + 1, 12) for a in range(0, 8, 2))
        topology: dict[tuple[int, int], str] = {}
        for a in range(8):
            for b in range(a + 1, 8):
                if a // 4 != b // 4:
                    topology[(a, b)] = "SYSTEM"
                elif a // 2 == b // 2:
                    topology[(a, b)] = "SINGLE"
                else:
                    topology[(a, b)] = "HOSTBRIDGE"
        return cls(gpus=gpus, nvlinks=nvlinks, topology=topology)

    def render(self) -> str:
        lines = [f"driver {_value(self.driver_version)}"]
        if self.init_error:
            lines.append(f"init_error {self.init_error}")
        lines += [gpu.line() for gpu in self.gpus]
        lines += [mig.line() for mig in self.migs]
        lines += [f"nvlink {a} {b} {count}" for a, b, count in self.nvlinks]
        for (a, b), level in sorted(self.topology.items()):
            if level not in TOPOLOGY_LEVELS:
                raise ValueError(f"unknown topology level {level!r}; one of {TOPOLOGY_LEVELS}")
            lines.append(f"topo {a} {b} {level}")
        return "\n".join(lines) + "\n"


class FakeNvml:
    """One fake NVML world in `workdir`: its config file, its events file, the environment a
    process needs to load it. Change the config with `configure()` before a process starts
    (the library reads it at nvmlInit); inject events while it runs."""

    def __init__(self, workdir: Path, library_dir: Path, config: FakeNvmlConfig) -> None:
        self.workdir = workdir
        self.library_dir = library_dir
        self.config_path = workdir / "fake-nvml.conf"
        self.events_path = workdir / "fake-nvml.events"
        self.telemetry_path = workdir / "fake-nvml.telemetry"
        self.telemetry: dict[str, dict[str, str]] = {}
        workdir.mkdir(parents=True, exist_ok=True)
        self.events_path.touch()
        self._write_telemetry()
        self.configure(config)

    def configure(self, config: FakeNvmlConfig) -> None:
        self.config = config
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(config.render())
        tmp.replace(self.config_path)

    def env(self) -> dict[str, str]:
        """Variables to add to a process's environment so that pynvml finds this fake."""
        return {
            "LD_LIBRARY_PATH": str(self.library_dir),
            "FAKE_NVML_CONFIG": str(self.config_path),
            "FAKE_NVML_EVENTS": str(self.events_path),
            "FAKE_NVML_TELEMETRY": str(self.telemetry_path),
        }

    def set_telemetry(self, gpu: int | str, **values: int | str) -> None:
        """Change what the telemetry queries answer for GPU `gpu` (index, UUID or "*"), from
        the next query on, in running processes too: temp=95, ecc_dbe_vol=2, remap_failure=1,
        fail="UNKNOWN" (every telemetry query on the GPU fails with it; "none" clears it) ...
        (README.md lists the keys). Values not given keep what was set before."""
        self.telemetry.setdefault(str(gpu), {}).update({k: str(v) for k, v in values.items()})
        self._write_telemetry()

    def _write_telemetry(self) -> None:
        lines = [f"{gpu} " + " ".join(f"{k}={v}" for k, v in values.items()) for gpu, values in self.telemetry.items()]
        tmp = self.telemetry_path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in lines))
        tmp.replace(self.telemetry_path)

    def _append(self, line: str) -> None:
        with self.events_path.open("a") as events:
            events.write(line + "\n")

    def inject_xid(self, gpu: int | str, xid: int, gi: int | None = None, ci: int | None = None) -> None:
        """An XID critical error on GPU `gpu` (index or UUID), or on one MIG device of it."""
        line = f"xid {gpu} {xid}"
        if gi is not None:
            line += f" gi={gi} ci={0 if ci is None else ci}"
        self._append(line)

    def lose_gpu(self, gpu: int | str) -> None:
        """The GPU is gone: every NVML query on it fails with GPU_IS_LOST from now on."""
        self._append(f"lost {gpu}")
