"""Stand-ins for NVIDIA's container toolkit packages, built as real .deb files.

NVIDIA's package repository cannot be reached from here, so the tests build the four
packages themselves, with the names, versions, dependencies between them, file paths and
maintainer-script behaviour of the real 1.17 packages (from NVIDIA's
nvidia-container-toolkit `packaging/debian` and libnvidia-container `pkg/deb`):

    nvidia-container-toolkit       /usr/bin/nvidia-container-runtime-hook
        Depends: nvidia-container-toolkit-base (= V), libnvidia-container-tools (>= V),
                 libnvidia-container-tools (<< 2.0.0)
    nvidia-container-toolkit-base  /usr/bin/nvidia-container-runtime, nvidia-ctk,
                                   nvidia-cdi-hook; its postinst writes
                                   /etc/nvidia-container-runtime/config.toml with
                                   `nvidia-ctk config --in-place` (since 1.14 the file is
                                   generated, not shipped, so it belongs to no package)
    libnvidia-container-tools      /usr/bin/nvidia-container-cli
        Depends: libnvidia-container1 (>= V), libc6
    libnvidia-container1           /usr/lib/<triplet>/libnvidia-container.so.1 ->
                                   libnvidia-container.so.<upstream version> (a real ELF
                                   shared object with that soname, built here with gcc),
                                   and libnvidia-container-go.so.1 likewise

What the programs do: `--version` prints what the real ones print (same format, this
version); `nvidia-container-runtime` is an OCI runtime that hands every call to runc, as
the real one does for a container that asks for no GPU; the hook accepts the OCI state
and does nothing (no GPU requested, none present). Anything that would need a GPU fails
with a message saying these are the gpunode test stand-ins.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_VERSION = "1.17.8-1"
PACKAGE_NAMES = (
    "libnvidia-container1",
    "libnvidia-container-tools",
    "nvidia-container-toolkit-base",
    "nvidia-container-toolkit",
)
_MULTIARCH = {"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}
_VERSION = re.compile(r"^(?P<upstream>[0-9][0-9A-Za-z.+~]*)-(?P<revision>[0-9A-Za-z.+~]+)$")
_COMMIT = "0123456789abcdef0123456789abcdef01234567"  # what --version prints as commit
_MAINTAINER = "NVIDIA CORPORATION <cudatools@nvidia.com> (gpunode test stand-in)"


@dataclass
class _Package:
    name: str
    section: str
    description: str
    depends: list[str] = field(default_factory=list)
    breaks: list[str] = field(default_factory=list)
    replaces: list[str] = field(default_factory=list)
    multi_arch: str | None = None
    files: dict[str, tuple[bytes, int]] = field(default_factory=dict)  # path -> (data, mode)
    symlinks: dict[str, str] = field(default_factory=dict)  # path -> target
    scripts: dict[str, str] = field(default_factory=dict)  # postinst, triggers, shlibs ...


def upstream_version(version: str) -> str:
    """`1.17.8-1` -> `1.17.8`; `1.18.0~rc.1-1` -> `1.18.0-rc.1` (as NVIDIA prints it)."""
    match = _VERSION.match(version)
    if match is None:
        raise ValueError(f"{version!r} is not a Debian version with a revision (like 1.17.8-1)")
    return match["upstream"].replace("~", "-")


def build_toolkit_packages(out_dir: Path, version: str = DEFAULT_VERSION, arch: str = "amd64") -> list[Path]:
    """Build the four packages into `out_dir` and write a `Packages` index beside them.

    Returns the .deb paths. Install from the directory with apt
    (`deb [trusted=yes] file:<dir> ./` in a sources list, or `apt-get install ./*.deb`).
    """
    if arch not in _MULTIARCH:
        raise ValueError(f"architecture {arch!r} is not supported; use one of {sorted(_MULTIARCH)}")
    native = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout.strip()
    if arch != native:
        raise ValueError(
            f"libnvidia-container1 holds a compiled library: build {arch} packages on an {arch} machine"
            f" (this one is {native})"
        )
    upstream = upstream_version(version)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="toolkit-standin-") as scratch:
        packages = _packages(version, upstream, arch, Path(scratch))
        debs = [_build_deb(pkg, version, arch, out_dir, Path(scratch)) for pkg in packages]
    write_packages_index(out_dir)
    return debs


def write_packages_index(directory: Path) -> Path:
    """A `Packages` index of the .debs in `directory` (what apt reads from a flat repo)."""
    stanzas = []
    for deb in sorted(directory.glob("*.deb")):
        control = subprocess.run(
            ["dpkg-deb", "--field", str(deb)], capture_output=True, text=True, check=True
        ).stdout.rstrip("\n")
        data = deb.read_bytes()
        stanzas.append(
            f"{control}\nFilename: ./{deb.name}\nSize: {len(data)}\n"
            f"MD5sum: {hashlib.md5(data).hexdigest()}\n"
            f"SHA256: {hashlib.sha256(data).hexdigest()}\n"
        )
    index = directory / "Packages"
    partial = directory / ".Packages.partial"
    partial.write_text("\n".join(stanzas))
    os.replace(partial, index)
    return index


def _packages(version: str, upstream: str, arch: str, scratch: Path) -> list[_Package]:
    triplet = _MULTIARCH[arch]
    libdir = f"/usr/lib/{triplet}"
    lib = _build_library(upstream, scratch)
    go_lib = _build_library(upstream, scratch, go=True)
    return [
        _Package(
            name="libnvidia-container1",
            section="libs",
            description="NVIDIA container runtime library",
            depends=["libc6 (>= 2.34)", "libcap2 (>= 1:2.10)", "libseccomp2 (>= 2.5.0)"],
            multi_arch="same",
            files={
                f"{libdir}/libnvidia-container.so.{upstream}": (lib, 0o644),
                f"{libdir}/libnvidia-container-go.so.{upstream}": (go_lib, 0o644),
            },
            symlinks={
                f"{libdir}/libnvidia-container.so.1": f"libnvidia-container.so.{upstream}",
                f"{libdir}/libnvidia-container-go.so.1": f"libnvidia-container-go.so.{upstream}",
            },
            scripts={
                "triggers": "activate-noawait ldconfig\n",
                "shlibs": (
                    f"libnvidia-container 1 libnvidia-container1 (>= {version})\n"
                    f"libnvidia-container-go 1 libnvidia-container1 (>= {version})\n"
                ),
            },
        ),
        _Package(
            name="libnvidia-container-tools",
            section="utils",
            description="NVIDIA container runtime library (command-line tools)",
            depends=[f"libnvidia-container1 (>= {version})", "libc6 (>= 2.34)"],
            files={"/usr/bin/nvidia-container-cli": (_cli_script(upstream).encode(), 0o755)},
        ),
        _Package(
            name="nvidia-container-toolkit-base",
            section="utils",
            description="NVIDIA Container Toolkit Base",
            breaks=["nvidia-container-toolkit (<= 1.10.0-1)"],
            replaces=["nvidia-container-toolkit (<= 1.10.0-1)"],
            files={
                "/usr/bin/nvidia-container-runtime": (_runtime_script(upstream).encode(), 0o755),
                "/usr/bin/nvidia-ctk": (_ctk_script(upstream).encode(), 0o755),
                "/usr/bin/nvidia-cdi-hook": (_cdi_hook_script(upstream).encode(), 0o755),
            },
            scripts={"postinst": _BASE_POSTINST},
        ),
        _Package(
            name="nvidia-container-toolkit",
            section="utils",
            description="NVIDIA Container toolkit",
            depends=[
                f"nvidia-container-toolkit-base (= {version})",
                f"libnvidia-container-tools (>= {version})",
                "libnvidia-container-tools (<< 2.0.0)",
            ],
            breaks=["nvidia-container-runtime (<= 3.5.0-1)", "nvidia-container-runtime-hook"],
            replaces=["nvidia-container-runtime (<= 3.5.0-1)", "nvidia-container-runtime-hook"],
            files={"/usr/bin/nvidia-container-runtime-hook": (_hook_script(upstream).encode(), 0o755)},
        ),
    ]


def _build_library(upstream: str, scratch: Path, go: bool = False) -> bytes:
    """A real shared object with the soname the real library has, exporting nvc_version."""
    stem = "libnvidia-container-go" if go else "libnvidia-container"
    major, minor, patch = (upstream.split("-")[0].split(".") + ["0", "0"])[:3]
    source = scratch / f"{stem}.c"
    source.write_text(
        textwrap.dedent(
            f"""\
            /* gpunode test stand-in for {stem}.so.1 ({upstream}). */
            struct nvc_version {{ unsigned int major, minor, patch; const char *string; }};
            static const struct nvc_version version = {{ {int(major)}, {int(minor)},
                {int("".join(ch for ch in patch if ch.isdigit()) or 0)}, "{upstream}" }};
            const struct nvc_version *nvc_version(void) {{ return &version; }}
            """
        )
    )
    output = scratch / f"{stem}.so"
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O2", "-s", f"-Wl,-soname,{stem}.so.1", "-o", str(output), str(source)],
        check=True,
        capture_output=True,
    )
    return output.read_bytes()


def _build_deb(pkg: _Package, version: str, arch: str, out_dir: Path, scratch: Path) -> Path:
    root = scratch / pkg.name
    (root / "DEBIAN").mkdir(parents=True)
    for path, (data, mode) in pkg.files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        os.chmod(target, mode)
    for path, link in pkg.symlinks.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(link, target)
    installed_kb = sum(len(data) for data, _ in pkg.files.values()) // 1024 + 1
    control = [
        f"Package: {pkg.name}",
        f"Version: {version}",
        f"Architecture: {arch}",
        f"Maintainer: {_MAINTAINER}",
        f"Installed-Size: {installed_kb}",
        f"Section: {pkg.section}",
        "Priority: optional",
        "Homepage: https://github.com/NVIDIA/nvidia-container-toolkit",
    ]
    if pkg.multi_arch:
        control.append(f"Multi-Arch: {pkg.multi_arch}")
    for label, relations in (("Depends", pkg.depends), ("Breaks", pkg.breaks), ("Replaces", pkg.replaces)):
        if relations:
            control.append(f"{label}: {', '.join(relations)}")
    control.append(f"Description: {pkg.description}")
    control.append(" Stand-in built by the gpunode test suite: same name, paths and")
    control.append(" dependencies as NVIDIA's package; no GPU support inside.")
    (root / "DEBIAN" / "control").write_text("\n".join(control) + "\n")
    for name, text in pkg.scripts.items():
        script = root / "DEBIAN" / name
        script.write_text(text)
        os.chmod(script, 0o755 if name in ("postinst", "prerm", "postrm", "preinst") else 0o644)
    # Reproducible: same inputs, same bytes (apt compares sizes and hashes with the index).
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000"}
    for entry in [root, *root.rglob("*")]:
        if not entry.is_symlink():
            os.utime(entry, (1700000000, 1700000000))
    deb = out_dir / f"{pkg.name}_{version}_{arch}.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(root), str(deb)],
        check=True,
        capture_output=True,
        env=env,
    )
    os.chmod(deb, stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)
    return deb


def _shell(body: str) -> str:
    return "#!/bin/sh\n# gpunode test stand-in for NVIDIA's container toolkit.\n" + textwrap.dedent(body)


def _standin_refusal(program: str) -> str:
    return f"echo \"{program}: '$*' is not implemented by the gpunode test stand-in\" >&2; exit 1"


def _runtime_script(upstream: str) -> str:
    # The real runtime finds the low-level runtime from config.toml's `runtimes` list
    # (docker-runc, runc, crun: the first one on PATH) and execs it with the same arguments.
    return _shell(
        f"""\
        set -e
        find_runtime() {{
            for candidate in docker-runc runc crun; do
                if command -v "$candidate" >/dev/null 2>&1; then
                    command -v "$candidate"
                    return 0
                fi
            done
            echo "nvidia-container-runtime: no low-level runtime (runc, crun) found" >&2
            return 1
        }}
        for arg in "$@"; do
            if [ "$arg" = "--version" ] || [ "$arg" = "-v" ]; then
                echo "NVIDIA Container Runtime version {upstream}"
                echo "commit: {_COMMIT}"
                echo "spec: 1.2.1"
                echo
                exec "$(find_runtime)" --version
            fi
        done
        runtime=$(find_runtime)
        exec "$runtime" "$@"
        """
    )


_DEFAULT_CONFIG = """\
#accept-nvidia-visible-devices-as-volume-mounts = false
#accept-nvidia-visible-devices-envvar-when-unprivileged = true
disable-require = false
supported-driver-capabilities = "compat32,compute,display,graphics,ngx,utility,video"
#swarm-resource = "DOCKER_RESOURCE_GPU"

[nvidia-container-cli]
#debug = "/var/log/nvidia-container-toolkit.log"
environment = []
#ldcache = "/etc/ld.so.cache"
ldconfig = "@/sbin/ldconfig"
load-kmods = true
#no-cgroups = false
#path = "/usr/bin/nvidia-container-cli"
#root = "/run/nvidia/driver"
#user = "root:video"

[nvidia-container-runtime]
#debug = "/var/log/nvidia-container-runtime.log"
log-level = "info"
mode = "auto"
runtimes = ["docker-runc", "runc", "crun"]

[nvidia-container-runtime.modes]

[nvidia-container-runtime.modes.cdi]
annotation-prefixes = ["cdi.k8s.io/"]
default-kind = "nvidia.com/gpu"
spec-dirs = ["/etc/cdi", "/var/run/cdi"]

[nvidia-container-runtime.modes.csv]
mount-spec-path = "/etc/nvidia-container-runtime/host-files-for-container.d"

[nvidia-container-runtime.modes.legacy]
cuda-compat-mode = "ldconfig"

[nvidia-container-runtime-hook]
path = "nvidia-container-runtime-hook"
skip-mode-detection = false

[nvidia-ctk]
path = "nvidia-ctk"
"""


def _ctk_script(upstream: str) -> str:
    head = _shell(
        f"""\
        set -e
        print_version() {{
            echo "NVIDIA Container Toolkit CLI version {upstream}"
            echo "commit: {_COMMIT}"
        }}
        """
    )
    # The defaults go in verbatim (not through dedent): a heredoc must keep its columns.
    defaults = "default_config() {\ncat <<'GPUNODE_EOF'\n" + _DEFAULT_CONFIG + "GPUNODE_EOF\n}\n"
    body = textwrap.dedent(
        """\
        quiet=
        while [ $# -gt 0 ]; do
            case "$1" in
                --version|-v) print_version; exit 0 ;;
                --quiet|-q) quiet=1; shift ;;
                --debug|-d) shift ;;
                *) break ;;
            esac
        done
        case "${1:-}" in
            config)
                shift
                file=/etc/nvidia-container-runtime/config.toml
                in_place=
                for arg in "$@"; do
                    case "$arg" in
                        --config-file=*) file=${arg#--config-file=} ;;
                        --in-place|-i) in_place=1 ;;
                        default) default_config; exit 0 ;;
                        *) echo "nvidia-ctk config: '$arg' is not supported by the gpunode test stand-in" >&2; exit 1 ;;
                    esac
                done
                # Like the real command: an existing file is kept, a missing one is
                # created with the defaults.
                if [ -n "$in_place" ]; then
                    if [ ! -e "$file" ]; then
                        mkdir -p "$(dirname "$file")"
                        default_config > "$file.tmp"
                        mv "$file.tmp" "$file"
                    fi
                elif [ -e "$file" ]; then
                    cat "$file"
                else
                    default_config
                fi
                ;;
            "")
                print_version
                ;;
            *)
                echo "nvidia-ctk: '$*' is not implemented by the gpunode test stand-in" >&2
                exit 1
                ;;
        esac
        """
    )
    return head + defaults + body


def _cdi_hook_script(upstream: str) -> str:
    return _shell(
        f"""\
        case "${{1:-}}" in
            --version|-v)
                echo "NVIDIA CDI Hook version {upstream}"
                echo "commit: {_COMMIT}"
                ;;
            *)
                {_standin_refusal("nvidia-cdi-hook")}
                ;;
        esac
        """
    )


def _hook_script(upstream: str) -> str:
    # Called by runc as an OCI prestart hook with the container state on stdin; the real
    # hook leaves a container that requests no GPU alone, and none can here.
    return _shell(
        f"""\
        case "${{1:-}}" in
            --version|-version|-v)
                echo "NVIDIA Container Runtime Hook version {upstream}"
                echo "commit: {_COMMIT}"
                ;;
            prestart|poststart|poststop)
                cat >/dev/null
                ;;
            *)
                {_standin_refusal("nvidia-container-runtime-hook")}
                ;;
        esac
        """
    )


def _cli_script(upstream: str) -> str:
    return _shell(
        f"""\
        case "${{1:-}}" in
            --version|-V)
                echo "cli-version: {upstream}"
                echo "lib-version: {upstream}"
                echo "build date: 2025-01-01T00:00+00:00"
                echo "build revision: {_COMMIT}"
                echo "build compiler: gcc 12.2.0"
                echo "build platform: $(uname -m)"
                echo "build flags: -D_GNU_SOURCE -D_FORTIFY_SOURCE=2 -O2"
                ;;
            *)
                echo "nvidia-container-cli: initialization error: nvml error: driver not loaded" >&2
                exit 1
                ;;
        esac
        """
    )


_BASE_POSTINST = """\
#!/bin/sh
set -e
case "$1" in
    configure)
        /usr/bin/nvidia-ctk --quiet config --config-file=/etc/nvidia-container-runtime/config.toml --in-place
        ;;
    abort-upgrade|abort-remove|abort-deconfigure)
        ;;
    *)
        echo "postinst called with unknown argument '$1'" >&2
        exit 1
        ;;
esac
exit 0
"""

__all__ = ["DEFAULT_VERSION", "PACKAGE_NAMES", "build_toolkit_packages", "upstream_version", "write_packages_index"]
