"""The NVML library probe: one POSIX sh command that gathers, in one round trip, what
`choose_nvml_library()` (library.py) decides from: ldconfig's cache, every symlink met while
following each candidate hop by hop, which final paths are regular files and their ELF
headers, a listing of the usual library directories, `uname -m`, the loaded module's version.
`parse_probe()` reads its output into `LibraryEvidence`.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from gpunode.bootstrap.core.nvml.problem import LibraryProblem

_VERSION = r"\d+\.\d+(?:\.\d+)*"
_NVRM_VERSION = re.compile(rf"Kernel Module(?:\s+for\s+\S+)?\s+({_VERSION})\b")
_MODULE_VERSION = re.compile(rf"^{_VERSION}$")

# The directories the probe lists, to see every copy, leftover and 32-bit twin: the multiarch
# and lib64 directories of Debian, Ubuntu and the RHEL family, their usrmerge aliases,
# Debian's nvidia/current directories (where the real file lives), /etc/alternatives (whose
# entries are named `nvidia--libnvidia-ml.so.1-<triplet>`) and the places a .run installer
# or a cloud image drops its copy.
PROBE_DIRS: tuple[str, ...] = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu/nvidia/current",
    "/lib/x86_64-linux-gnu",
    "/usr/lib64",
    "/lib64",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu/nvidia/current",
    "/lib/aarch64-linux-gnu",
    "/usr/lib/powerpc64le-linux-gnu",
    "/usr/lib/powerpc64le-linux-gnu/nvidia/current",
    "/usr/lib/i386-linux-gnu",
    "/usr/lib/i386-linux-gnu/nvidia/current",
    "/usr/lib",
    "/lib",
    "/usr/local/lib",
    "/usr/local/nvidia/lib64",
    "/etc/alternatives",
)

# Linux's own limit on symlinks followed in one lookup; past it the chain is a loop.
MAX_HOPS = 40

PROBE_HEADER = "gpunode-nvml-probe 1"

# e_machine numbers from the ELF specification.
_ELF_MACHINES = {3: "i386", 40: "arm", 62: "x86_64", 183: "aarch64", 20: "ppc"}


@dataclass(frozen=True)
class LibraryEvidence:
    """What the host says about its NVML library; gathered by `PROBE_COMMAND`."""

    ldconfig: str  # `ldconfig -p` output, possibly only its libnvidia-ml lines
    links: Mapping[str, str]  # every symlink met: path -> target exactly as readlink prints it
    files: frozenset[str]  # paths that exist as regular files
    listed: tuple[str, ...]  # every *libnvidia-ml.so* found by listing PROBE_DIRS
    arch: str  # uname -m
    module_version: str | None  # /sys/module/nvidia/version; None when no module is loaded
    # path -> machine of a regular file's ELF header ("x86_64", "i386", "aarch64", ...;
    # "not-elf" when it has no ELF header). Paths missing here were not examined.
    machines: Mapping[str, str] = field(default_factory=dict)
    ldconfig_error: str | None = None  # set when `ldconfig -p` itself failed


# --------------------------------------------------------------------------------------------
# The probe


def probe_command(
    root: str = "",
    ldconfig: Sequence[str] = ("ldconfig", "-p"),
    arch: str | None = None,
    dirs: Sequence[str] = PROBE_DIRS,
) -> str:
    """The POSIX sh command that gathers `LibraryEvidence` on a host in one round trip.

    `root`, `ldconfig` (an argv), `arch` and `dirs` exist so the very same command can run
    against a tree built under a temporary directory in tests; on a host, use
    `PROBE_COMMAND`. Every value is quoted: they are data, not shell code. Paths printed are
    host paths (the root prefix stripped), and absolute link targets resolve under the root.
    """
    q = shlex.quote
    ldconfig_cmd = " ".join(q(word) for word in ldconfig)
    arch_cmd = f"printf '%s\\n' {q(arch)}" if arch is not None else "uname -m"
    dir_words = " ".join(q(d) for d in dirs)
    # The follow function mirrors `_resolve` below step for step: walk the path one
    # component at a time; at the first component that is a symlink, print it, substitute its
    # target (relative targets against the link's directory) and start again; `..` is
    # resolved lexically, which is right because every component before it has already been
    # checked not to be a symlink. Variables are prefixed (no `local` in POSIX sh).
    # The chains of ldconfig's entries and of the listed files share most of their links:
    # each link is read and printed once (gn_links: newline, path, tab, target), each file's
    # header once (gn_files), and a start path already followed is skipped (gn_starts). This
    # runs on every host of every run; forks are most of its cost.
    return f"""r={q(root.rstrip("/"))}
PATH="$PATH:/sbin:/usr/sbin"
gn_nl='
'
gn_tab=$(printf '\\t')
gn_links=; gn_files=; gn_starts=
gn_follow() {{
  case $gn_starts in *"$gn_nl$1$gn_nl"*) return 0;; esac
  gn_starts=$gn_starts$gn_nl$1$gn_nl
  gn_p=$1; gn_hops=0
  while :; do
    gn_rest=${{gn_p#/}}; gn_cur=; gn_hit=
    while [ -n "$gn_rest" ]; do
      case $gn_rest in */*) gn_c=${{gn_rest%%/*}}; gn_rest=${{gn_rest#*/}};; *) gn_c=$gn_rest; gn_rest=;; esac
      case $gn_c in ''|.) continue;; ..) gn_cur=${{gn_cur%/*}}; continue;; esac
      gn_cur=$gn_cur/$gn_c
      if [ -L "$r$gn_cur" ]; then
        case $gn_links in
          *"$gn_nl$gn_cur$gn_tab"*) gn_t=${{gn_links#*"$gn_nl$gn_cur$gn_tab"}}; gn_t=${{gn_t%%"$gn_nl"*}};;
          *) gn_t=$(readlink "$r$gn_cur")
             gn_links=$gn_links$gn_nl$gn_cur$gn_tab$gn_t$gn_nl
             printf 'link\\t%s\\t%s\\n' "$gn_cur" "$gn_t";;
        esac
        case $gn_t in /*) gn_p=$gn_t;; *) gn_p=${{gn_cur%/*}}/$gn_t;; esac
        if [ -n "$gn_rest" ]; then gn_p=$gn_p/$gn_rest; fi
        gn_hit=1; break
      fi
    done
    [ -n "$gn_hit" ] || break
    gn_hops=$((gn_hops + 1))
    if [ "$gn_hops" -gt {MAX_HOPS} ]; then printf 'loop\\t%s\\n' "$1"; return 0; fi
  done
  gn_cur=${{gn_cur:-/}}
  case $gn_files in *"$gn_nl$gn_cur$gn_nl"*) return 0;; esac
  gn_files=$gn_files$gn_nl$gn_cur$gn_nl
  if [ -f "$r$gn_cur" ]; then
    printf 'file\\t%s\\t%s\\n' "$gn_cur" "$(od -An -tx1 -N20 "$r$gn_cur" 2>/dev/null | tr -d ' \\n')"
  elif [ -e "$r$gn_cur" ]; then printf 'other\\t%s\\n' "$gn_cur"
  else printf 'missing\\t%s\\n' "$gn_cur"; fi
}}
echo {q(PROBE_HEADER)}
printf 'arch\\t%s\\n' "$({arch_cmd})"
if [ -r "$r/sys/module/nvidia/version" ]; then printf 'module\\t%s\\n' "$(cat "$r/sys/module/nvidia/version")"; fi
if [ -r "$r/proc/driver/nvidia/version" ]; then printf 'nvrm\\t%s\\n' "$(head -n 1 "$r/proc/driver/nvidia/version")"; fi
gn_ld=$({ldconfig_cmd} 2>&1); gn_st=$?
printf 'ldconfig-status\\t%s\\n' "$gn_st"
if [ "$gn_st" -ne 0 ]; then printf '%s\\n' "$gn_ld" | head -n 1 | while IFS= read -r gn_l; do printf 'ldconfig-error\\t%s\\n' "$gn_l"; done; fi
printf '%s\\n' "$gn_ld" | grep -F 'libnvidia-ml.so' | while IFS= read -r gn_l; do printf 'ldconfig\\t%s\\n' "$gn_l"; done
gn_ents=$(printf '%s\\n' "$gn_ld" | grep -F 'libnvidia-ml.so' | sed -n 's/.* => //p')
# A here-document, not a pipe: the loop runs in this shell and keeps gn_follow's memo.
while IFS= read -r gn_l; do [ -z "$gn_l" ] || gn_follow "$gn_l"; done <<gn_end
$gn_ents
gn_end
for gn_d in {dir_words}; do
  for gn_f in "$r$gn_d"/*libnvidia-ml.so*; do
    if [ -L "$gn_f" ] || [ -e "$gn_f" ]; then
      gn_l=${{gn_f#"$r"}}
      printf 'listed\\t%s\\n' "$gn_l"
      gn_follow "$gn_l"
    fi
  done
done
echo end
"""


PROBE_COMMAND: str = probe_command()


def parse_probe(output: str) -> LibraryEvidence:
    """Read the output of `PROBE_COMMAND` (as run on the host) into `LibraryEvidence`."""
    lines = [line.rstrip("\r") for line in output.splitlines()]
    try:
        start = lines.index(PROBE_HEADER)
    except ValueError:
        raise LibraryProblem(
            "NVML-PROBE",
            "The NVML library probe printed no recognisable output.",
            "Run the probe command by hand on the host with `sh -c` and read its error.",
            evidence=tuple(lines[:5]),
        ) from None
    if "end" not in lines[start:]:
        raise LibraryProblem(
            "NVML-PROBE",
            "The NVML library probe's output was cut off before its end marker.",
            "Run it again; if it keeps failing, run it by hand on the host with `sh -c`.",
            evidence=tuple(lines[-5:]),
        )
    arch = ""
    module: str | None = None
    nvrm: str | None = None
    ldconfig: list[str] = []
    ldconfig_error: str | None = None
    ldconfig_status = "0"
    links: dict[str, str] = {}
    files: set[str] = set()
    machines: dict[str, str] = {}
    listed: list[str] = []
    for line in lines[start + 1 :]:
        if line == "end":
            break
        kind, _, rest = line.partition("\t")
        if kind == "arch":
            arch = rest.strip()
        elif kind == "module":
            module = rest.strip() or None
        elif kind == "nvrm":
            nvrm = rest
        elif kind == "ldconfig":
            ldconfig.append(rest)
        elif kind == "ldconfig-status":
            ldconfig_status = rest.strip()
        elif kind == "ldconfig-error":
            ldconfig_error = rest
        elif kind == "link":
            path, _, target = rest.partition("\t")
            links[path] = target
        elif kind == "file":
            path, _, header = rest.partition("\t")
            files.add(path)
            machines[path] = _elf_machine(header)
        elif kind == "listed":
            if rest not in listed:
                listed.append(rest)
    if ldconfig_status != "0" and ldconfig_error is None:
        ldconfig_error = f"ldconfig -p exited with status {ldconfig_status}"
    if module is not None and not _MODULE_VERSION.match(module):
        module = None
    if module is None and nvrm is not None:
        found = _NVRM_VERSION.search(nvrm)
        module = found.group(1) if found else None
    return LibraryEvidence(
        ldconfig="\n".join(ldconfig),
        links=links,
        files=frozenset(files),
        listed=tuple(listed),
        arch=arch,
        module_version=module,
        machines=machines,
        ldconfig_error=ldconfig_error,
    )


def _elf_machine(header_hex: str) -> str:
    """The machine of an ELF file from the hex of its first 20 bytes (`od -An -tx1 -N20`)."""
    try:
        data = bytes.fromhex(header_hex.strip())
    except ValueError:
        return "not-elf"
    if len(data) < 20 or data[:4] != b"\x7fELF":
        return "not-elf"
    little = data[5] == 1
    number = int.from_bytes(data[18:20], "little" if little else "big")
    if number == 21:  # EM_PPC64: the byte order tells ppc64le from ppc64
        return "ppc64le" if little else "ppc64"
    return _ELF_MACHINES.get(number, f"elf-machine-{number}")
