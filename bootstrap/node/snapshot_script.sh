# gpunode host snapshot: everything bootstrap, verify and doctor need to know about a host,
# read in one round trip. It only reads. POSIX sh; every section starts with a line
# "@@<name>"; file contents are base64 so that no content can forge a section line.
# The sections, the @GPUNODE_<NAME>@ placeholders and the GPUNODE_* parameters (shell
# variables set before this script) are those of bootstrap/core/host/snapshot_contract.py,
# which checks this script against them.
PATH="$PATH:/usr/sbin:/sbin:/usr/local/sbin"
sec() { printf '@@%s\n' "$1"; }
# One line of base64 from stdin. GNU base64 -w0 saves a `tr` per file (this script runs on
# every host of every run); busybox's base64 refuses -w before reading anything.
b64() { base64 -w0 2>/dev/null || base64 | tr -d '\n'; }
b64file() {
  if [ -f "$1" ] && [ -r "$1" ]; then
    printf '%s ' "$1"; b64 < "$1"; echo
  fi
}

sec hostname; hostname 2>/dev/null || cat /proc/sys/kernel/hostname
sec uname; uname -r; uname -m
sec os_release; b64file /etc/os-release || b64file /usr/lib/os-release
sec init; if [ -d /run/systemd/system ]; then echo systemd; else echo none; fi
sec pci
# `read` is a builtin: no fork per device on hosts with hundreds of PCI functions.
for d in /sys/bus/pci/devices/*; do
  [ -r "$d/vendor" ] || continue
  read -r vendor < "$d/vendor" || continue
  [ "$vendor" = 0x10de ] || continue
  read -r device < "$d/device"; read -r class < "$d/class"
  printf '%s %s %s\n' "${d##*/}" "$device" "$class"
done
sec lspci; command -v lspci >/dev/null 2>&1 && lspci -Dmm -d 10de: 2>/dev/null
sec modules
for m in nvidia nvidia_uvm nvidia_drm nvidia_modeset nouveau; do [ -d "/sys/module/$m" ] && echo "$m"; done
sec secure_boot
if command -v mokutil >/dev/null 2>&1 && mokutil --sb-state 2>/dev/null; then :
elif [ ! -d /sys/firmware/efi ]; then echo "no-efi"
else
  for f in /sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c; do
    [ -r "$f" ] && printf 'efivar %s\n' "$(od -An -tu1 "$f" | tr -s ' ' | sed 's/^ //')"
  done
fi
sec modprobe_nouveau
grep -ls '^[[:space:]]*blacklist[[:space:]]\+nouveau' /etc/modprobe.d/*.conf /usr/lib/modprobe.d/*.conf /lib/modprobe.d/*.conf 2>/dev/null
sec initramfs
for t in update-initramfs dracut; do command -v "$t" >/dev/null 2>&1 && echo "$t"; done
sec nvml
@GPUNODE_NVML_PROBE@
sec packages
if command -v dpkg-query >/dev/null 2>&1; then echo dpkg; @GPUNODE_DPKG_QUERY@
elif command -v rpm >/dev/null 2>&1; then echo rpm; @GPUNODE_RPM_QUERY@; fi
# What apt could install of the packages the steps may install (GPUNODE_APT_NAMES, with
# KERNEL_RELEASE standing for `uname -r`): a plan must not count on a package apt has no
# candidate for (the headers of a kernel the distribution does not ship). Only names not
# installed are asked about: apt-cache loads every package list (most of a second), which
# a converged host never pays.
sec apt_candidates
if [ -n "$GPUNODE_APT_NAMES" ] && command -v apt-cache >/dev/null 2>&1; then
  kernel=$(uname -r)
  set --
  for n in $GPUNODE_APT_NAMES; do [ "$n" = linux-headers-KERNEL_RELEASE ] && n="linux-headers-$kernel"; set -- "$@" "$n"; done
  installed=" $(dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' "$@" 2>/dev/null | awk '$1 == "ii" {printf "%s ", $2}')"
  asked=
  for n in "$@"; do case "$installed" in *" $n "*) ;; *) asked="$asked $n" ;; esac; done
  echo "asked$asked"
  [ -z "$asked" ] || LC_ALL=C apt-cache policy $asked 2>/dev/null | grep -E '^[^ ].*:$|^  Candidate:'
fi
sec toolkit_runtime; command -v nvidia-container-runtime 2>/dev/null
sec containerd
if command -v containerd >/dev/null 2>&1; then
  command -v containerd; containerd --version 2>/dev/null | head -n 1
fi
sec containerd_config_path; printf '%s\n' "$GPUNODE_CONTAINERD_CONFIG"
sec containerd_config; b64file "$GPUNODE_CONTAINERD_CONFIG"
sec containerd_dump
if command -v containerd >/dev/null 2>&1; then
  if [ -f "$GPUNODE_CONTAINERD_CONFIG" ]; then
    out=$(containerd --config "$GPUNODE_CONTAINERD_CONFIG" config dump 2>&1); rc=$?
  else
    out=$(containerd config dump 2>&1); rc=$?
  fi
  printf '%s ' "$rc"; printf '%s\n' "$out" | b64; echo
  containerd_dump_out=$out
fi
sec k3s
command -v k3s 2>/dev/null
for f in /var/lib/rancher/k3s/agent/etc/containerd/config.toml.tmpl /var/lib/rancher/k3s/agent/etc/containerd/config-v3.toml.tmpl; do
  [ -f "$f" ] && echo "$f"
done
sec kubelet
kubelet_root=/var/lib/kubelet
for p in /proc/[0-9]*; do
  read -r comm < "$p/comm" 2>/dev/null || continue
  case "$comm" in
    kubelet|k3s-server|k3s-agent|k3s)
      args=$(tr '\0' '\n' < "$p/cmdline" 2>/dev/null)
      kubelet_pid=${p#/proc/}
      printf 'process %s\n' "$comm"
      printf '%s\n' "$args" | sed 's/^/arg /'
      r=$(printf '%s\n' "$args" | awk 'p {print; p=0} /^--root-dir=/ {sub(/^--root-dir=/, ""); print} $0 == "--root-dir" {p=1}' | tail -n 1)
      [ -n "$r" ] && kubelet_root=$r
      break ;;
  esac
done
printf 'root %s\n' "$kubelet_root"
command -v kubelet >/dev/null 2>&1 && printf 'binary %s\n' "$(command -v kubelet)"
sec device_plugins
if [ -d "$kubelet_root/device-plugins" ]; then
  for f in "$kubelet_root"/device-plugins/*; do
    if [ -S "$f" ]; then echo "socket $f"; elif [ -e "$f" ]; then echo "file $f"; fi
  done
fi
sec apt_sources
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do b64file "$f"; done
sec managed_files
printf '%s\n' "$GPUNODE_MANAGED_FILES" | while IFS= read -r f; do [ -n "$f" ] && b64file "$f"; done
# Paths gpunode may write that are no regular file: a symlink is followed when written, so
# only a link that leads nowhere, a directory or a device needs saying.
sec file_kinds
printf '%s\n%s\n' "$GPUNODE_CONTAINERD_CONFIG" "$GPUNODE_MANAGED_FILES" | while IFS= read -r f; do
  [ -n "$f" ] || continue
  if [ -L "$f" ] && ! [ -e "$f" ]; then k=broken-link
  elif [ -d "$f" ]; then k=directory
  elif [ -L "$f" ]; then if [ -f "$f" ]; then k=link; else k=other; fi
  elif [ -e "$f" ] && ! [ -f "$f" ]; then k=other
  else continue; fi
  printf '%s %s\n' "$k" "$f"
done
sec uploads
if [ -d "$GPUNODE_UPLOAD_DIR" ]; then
  find "$GPUNODE_UPLOAD_DIR" -type f -exec sha256sum {} + 2>/dev/null
fi
sec plugin_venv
for d in /opt/gpunode/venv/lib/python3*/site-packages/gpunode-*.dist-info; do [ -d "$d" ] && echo "dist ${d##*/}"; done
command -v python3 >/dev/null 2>&1 && echo "python3 $(command -v python3)"
if command -v dpkg-query >/dev/null 2>&1; then
  dpkg-query -W -f='${db:Status-Abbrev}' python3-venv 2>/dev/null | grep -q '^ii' && echo "venv-package installed"
fi
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  printf 'unit-active %s\n' "$(systemctl is-active gpunode-device-plugin.service 2>/dev/null)"
fi
if [ "${GPUNODE_DIAGNOSE:-0}" = 1 ]; then
# What only `gpunode doctor` reads: live checks of the driver, the kernel's own words, and
# the ages and times that tell a kubelet restart from a plugin that never registered. Still
# read-only; every command that could hang on a sick driver runs under a time limit.
limited() { if command -v timeout >/dev/null 2>&1; then timeout 20 "$@"; else "$@"; fi; }
b64out() { printf '%s ' "$1"; printf '%s\n' "$2" | b64; echo; }
age_of() { ps -o etimes= -p "$1" 2>/dev/null | tr -d ' '; }
sec diag_now; date +%s
# The GPU Operator's driver runs in a container whose root is mounted at /run/nvidia/driver
# ($GPUNODE_DRIVER_ROOT): its libnvidia-ml is there, not in the host's library directories.
sec diag_driver_root
driver_lib=
if [ -d "$GPUNODE_DRIVER_ROOT/usr" ]; then
  printf 'root %s\n' "$GPUNODE_DRIVER_ROOT"
  for d in usr/lib/x86_64-linux-gnu usr/lib64 usr/lib/aarch64-linux-gnu; do
    if [ -e "$GPUNODE_DRIVER_ROOT/$d/libnvidia-ml.so.1" ]; then
      driver_lib=$(readlink -f "$GPUNODE_DRIVER_ROOT/$d/libnvidia-ml.so.1"); break
    fi
  done
  @GPUNODE_NVML_PROBE_DRIVER_ROOT@
fi
sec diag_nvml
if command -v python3 >/dev/null 2>&1; then
  out=$(GPUNODE_NVML_LIB="$driver_lib" limited python3 -c "$GPUNODE_NVML_CHECK" 2>&1); b64out "python3 $?" "$out"
fi
if command -v nvidia-smi >/dev/null 2>&1; then
  out=$(limited nvidia-smi -L 2>&1); b64out "nvidia-smi $?" "$out"
fi
sec diag_kernel_log
out=$( { dmesg 2>/dev/null || journalctl -k -b -q --no-pager 2>/dev/null; } \
  | grep -iE 'nvrm|nvidia|nouveau|lockdown|module verification|key was rejected|unsigned module' | tail -n 40)
b64out "lines 0" "$out"
sec diag_modinfo
if command -v modinfo >/dev/null 2>&1; then
  for field in version signer filename; do printf '%s %s\n' "$field" "$(modinfo -F "$field" nvidia 2>/dev/null | head -n 1)"; done
fi
sec diag_kubelet
if [ -n "${kubelet_pid:-}" ]; then printf 'age %s\n' "$(age_of "$kubelet_pid")"; fi
for f in "$kubelet_root"/device-plugins/*; do
  [ -e "$f" ] && printf 'mtime %s %s\n' "$(stat -c %Y "$f" 2>/dev/null)" "$f"
done
sec diag_plugin_processes
for p in /proc/[0-9]*; do
  read -r comm < "$p/comm" 2>/dev/null || continue
  case "$comm" in
    nvidia-device-p*|python*|gpunode*)
      cmd=$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null)
      case "$cmd" in
        *gpunode.plugin*|*"gpunode plugin"*|*nvidia-device-plugin*)
          pid=${p#/proc/}
          state=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "$p/status" 2>/dev/null)
          printf 'process %s %s %s %s\n' "$pid" "$(age_of "$pid")" "${state:-?}" "$comm" ;;
      esac ;;
  esac
done
sec diag_runtime_binaries
# The runtimes' binaries as the effective config names them (k3s: its rendered config).
{ printf '%s\n' "${containerd_dump_out:-}"; cat /var/lib/rancher/k3s/agent/etc/containerd/config.toml 2>/dev/null; } \
  | sed -n 's/^[[:space:]]*BinaryName[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' \
  | sort -u | while IFS= read -r bin; do
  case "$bin" in /*) if [ -x "$bin" ]; then echo "present $bin"; else echo "missing $bin"; fi ;; esac
done
fi
sec end
