"""A disposable Debian 12 host behind a real sshd, for end-to-end tests of `gpunode bootstrap`.

Each host is the cached mmdebstrap root filesystem (debian_rootfs.py) under a private
overlay, started in its own mount, PID, UTS and IPC namespaces. It shares the network
namespace, so apt inside reaches the Debian archive and sshd listens on a free 127.0.0.1
port. sshd is PID 1: there is no init system.

What the host has of its own: hostname, /etc/hosts, machine-id, a fresh ed25519 host key
and client key (root logs in with that key only), a private /dev (tmpfs with null, zero,
full, random, urandom, tty, devpts with ptmx, shm: never the machine's /dev, since NVML
tools create /dev/nvidia* device nodes), its own /proc and /run, and a read-only sysfs.
What it shares with the machine: the kernel (so /proc/modules and /sys/module are the real
kernel's: no nvidia module is ever loaded), the network, /sys/fs/cgroup.

Leaks are made impossible rather than cleaned up: every mount lives only in the host's
mount namespace, which the kernel tears down with its last process; every process lives
in the host's PID namespace, which dies with its PID 1; PID 1 gets SIGKILL when `unshare`
dies, and `unshare` gets SIGKILL when the thread that started it dies (PR_SET_PDEATHSIG).
What is left on disk (the per-host directory under the test cache) is removed by stop(),
or by the next start if the test process was killed.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import textwrap
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType

from standins.debian_rootfs import DEFAULT_RECIPE, RootfsRecipe, debian_host_cache, rootfs_tree

_HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_HERE = Path(__file__).resolve().parent
_START_SCRIPT = _HERE / "debian_host_init.sh"

# Ports handed out by this process and not yet released, so that hosts started at the
# same moment do not pick the same one (other processes are caught by the retry).
_ports_in_use: set[int] = set()
_ports_lock = threading.Lock()


# Shows an nvidia kernel module of version $1 as loaded, inside the host only (see
# DebianHost.set_loaded_nvidia_module); also run at boot by a host's /etc/rc.local.
LOAD_MODULE_SCRIPT = textwrap.dedent("""
            set -e
            base=/run/gpunode-testbed/kmod
            for m in /proc/modules /proc/driver /sys/module; do
                if mountpoint -q "$m"; then umount "$m"; fi
            done
            rm -rf "$base"
            [ -n "$1" ] || exit 0
            mkdir -p "$base/upper" "$base/work"
            mount -t overlay gpunode-kmod -o "lowerdir=/sys/module,upperdir=$base/upper,workdir=$base/work" /sys/module
            mkdir /sys/module/nvidia
            printf '%s\\n' "$1" > /sys/module/nvidia/version
            echo live > /sys/module/nvidia/initstate
            echo 0 > /sys/module/nvidia/refcnt
            if [ -e /proc/modules ]; then
                { cat /proc/modules; echo "nvidia 56913920 0 - Live 0x0000000000000000 (POE)"; } > "$base/modules"
                mount --bind "$base/modules" /proc/modules
            fi
            mount -t tmpfs -o mode=0555,size=64k gpunode-driver /proc/driver
            mkdir /proc/driver/nvidia
            printf 'NVRM version: NVIDIA UNIX x86_64 Kernel Module  %s  Thu Jan  1 00:00:00 UTC 2025\\nGCC version:  gcc version 12.2.0 (Debian 12.2.0-14+deb12u1)\\n' "$1" > /proc/driver/nvidia/version
        """)


class HostCommandError(subprocess.CalledProcessError):
    """A command in the host failed; the message carries its output."""

    def __str__(self) -> str:
        return f"{super().__str__()}\n--- stdout ---\n{self.stdout or ''}\n--- stderr ---\n{self.stderr or ''}"


class HostStartError(RuntimeError):
    pass


class DebianHost:
    """A running test host. Use `start_debian_host()` to make one; `stop()` ends it."""

    address = "127.0.0.1"
    ssh_user = "root"

    def __init__(
        self,
        *,
        name: str,
        workdir: Path,
        ssh_port: int,
        process: subprocess.Popen[bytes],
        init_pid: int,
        pid_namespace: str,
        apt_pool: Path,
    ) -> None:
        self.name = name
        self.workdir = workdir
        self.ssh_port = ssh_port
        self.ssh_key = workdir / "id_ed25519"
        self.ssh_config_path = workdir / "ssh_config"
        self.known_hosts_path = workdir / "known_hosts"
        self._init_pid = init_pid
        self._pid_namespace = pid_namespace
        self._process = process
        self._lower = Path("/")  # set by _launch: the root filesystem it boots from
        self._apt_pool = apt_pool
        self._stopping = False
        self.reboots = 0
        self.reboot_errors: list[str] = []  # a boot after a reboot that failed (the host stays down)
        self._finalizer = weakref.finalize(
            self, _stop_host, process, init_pid, pid_namespace, workdir, apt_pool, ssh_port
        )

    # --- where and how to reach it ----------------------------------------------------

    @property
    def ssh_alias(self) -> str:
        """The `Host` name in `ssh_config_path` (`ssh -F <ssh_config_path> <ssh_alias>`)."""
        return self.name

    @property
    def root(self) -> Path:
        """The host's root filesystem as the test process sees it (/proc/<pid>/root).

        Its mounts (/run, /dev, /proc) show as the host sees them. Absolute symlinks inside
        point at the *test machine's* files when followed from here: read them with
        os.readlink, or ask the host (`exec("readlink -f ...")`).
        """
        if not self.running:  # its PID may belong to another process by now
            raise RuntimeError(f"{self.name} is not running")
        return Path(f"/proc/{self._init_pid}/root")

    @property
    def init_pid(self) -> int:
        """PID 1 of the host (sshd), as the test machine numbers it."""
        return self._init_pid

    @property
    def pid_namespace(self) -> str:
        """The host's PID namespace, as `readlink /proc/<pid>/ns/pid` prints it."""
        return self._pid_namespace

    @property
    def pyinfra_host_spec(self) -> str:
        """`@ssh/<alias>`: a pyinfra inventory name that resolves through `ssh_config_path`.

        CLI: `pyinfra <spec> --data ssh_config_file=<ssh_config_path> ...` (pyinfra takes a
        bare word without a dot for a module name, hence the `@ssh/` connector prefix).
        API: the inventory entry `(spec, {"ssh_config_file": str(ssh_config_path)})`, or
        any name with `pyinfra_host_data`, which needs no ssh config file.
        """
        return f"@ssh/{self.ssh_alias}"

    @property
    def pyinfra_host_data(self) -> dict[str, object]:
        """pyinfra host data that reaches this host without any ssh config file."""
        return {
            "ssh_hostname": self.address,
            "ssh_port": self.ssh_port,
            "ssh_user": self.ssh_user,
            "ssh_key": str(self.ssh_key),
            "ssh_known_hosts_file": str(self.known_hosts_path),
            "ssh_strict_host_key_checking": "yes",
        }

    @property
    def testinfra_host_spec(self) -> str:
        """`ssh://root@127.0.0.1:PORT?ssh_config=...&ssh_identity_file=...`, complete.

        Usable as `pytest --hosts=<spec>` or `testinfra.get_host(<spec>)`; the ssh config
        file also matches 127.0.0.1, so its known-hosts file is the one used.
        """
        return (
            f"ssh://{self.ssh_user}@{self.address}:{self.ssh_port}"
            f"?ssh_config={self.ssh_config_path}&ssh_identity_file={self.ssh_key}"
        )

    # --- running things ---------------------------------------------------------------

    def ssh(
        self, cmd: str, check: bool = True, *, input: str | None = None, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        """Run `cmd` (a shell command line) over real SSH, as root, with the host's key."""
        argv = ["ssh", "-F", str(self.ssh_config_path), self.ssh_alias, cmd]
        return _run(argv, check=check, input=input, timeout=timeout)

    def exec(
        self, cmd: str, check: bool = True, *, input: str | None = None, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        """Run `cmd` inside the host through nsenter (its namespaces and root), no SSH.

        For test set-up and inspection only: the code under test goes through SSH.
        """
        argv = [
            "nsenter",
            f"--target={self._init_pid}",
            "--mount",
            "--uts",
            "--ipc",
            "--pid",
            "--root",
            "--wd",
            "--",
            "/bin/sh",
            "-c",
            cmd,
        ]
        env = {"PATH": _HOST_PATH, "HOME": "/root", "LANG": "C.UTF-8", "USER": "root"}
        return _run(argv, check=check, input=input, timeout=timeout, env=env)

    def put_file(self, path: str, content: bytes | str, mode: int = 0o644) -> None:
        """Write a file in the host (parents made), owned by root, bytes exactly as given."""
        data = content.encode() if isinstance(content, str) else content
        quoted = shlex.quote(path)
        self.exec(
            f'mkdir -p "$(dirname {quoted})" && base64 -d > {quoted} && chmod {mode:o} {quoted}',
            input=base64.b64encode(data).decode("ascii"),
        )

    # --- containerd as a plain process (there is no systemd) ---------------------------

    def containerd_pid(self) -> int | None:
        """containerd's PID inside the host, or None when it is not running."""
        result = self.exec("pgrep -x containerd", check=False)
        pids = result.stdout.split()
        return int(pids[0]) if result.returncode == 0 and pids else None

    def start_containerd(self, timeout: float = 30) -> int:
        """Start containerd as a plain background process; returns its PID once it serves.

        Logs go to /var/log/containerd.log in the host. Raises if it does not come up.
        """
        if self.containerd_pid() is not None:
            raise RuntimeError(f"{self.name}: containerd is already running")
        self.exec("mkdir -p /var/log && setsid containerd </dev/null >>/var/log/containerd.log 2>&1 &")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.exec("ctr --connect-timeout 1s --timeout 2s version >/dev/null 2>&1", check=False).returncode == 0:
                pid = self.containerd_pid()
                if pid is not None:
                    return pid
            if self.containerd_pid() is None:
                break
            time.sleep(0.1)
        log = self.exec("tail -n 30 /var/log/containerd.log", check=False).stdout
        raise RuntimeError(f"{self.name}: containerd did not start; its log ends:\n{log}")

    def stop_containerd(self, timeout: float = 15) -> None:
        """Stop containerd (SIGTERM, then SIGKILL after `timeout`); no-op if not running."""
        pid = self.containerd_pid()
        if pid is None:
            return
        self.exec(f"kill -TERM {pid}", check=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.containerd_pid() is None:
                return
            time.sleep(0.1)
        self.exec(f"kill -KILL {pid}", check=False)
        while self.containerd_pid() is not None:
            time.sleep(0.05)

    # --- the kernel module this kernel cannot load ---------------------------------------

    def set_loaded_nvidia_module(self, version: str | None) -> None:
        """Make the host see an nvidia kernel module of `version` loaded (None: no module).

        The machine's kernel takes no nvidia module, so this shows one where a node's tools
        and facts look, in the kernel's formats, inside this host only:
        /sys/module/nvidia/version (an overlay on the real /sys/module), the `nvidia` line
        of /proc/modules (so lsmod lists it; only on a kernel with loadable modules: one
        built without them has no /proc/modules at all) and /proc/driver/nvidia/version (a
        tmpfs on /proc/driver). Calling it again replaces the version. Nothing else of a driver
        comes with it (no /dev/nvidia*, NVML still finds no GPU).
        """
        if version is not None and not re.fullmatch(r"[0-9]+(\.[0-9]+)+", version):
            raise ValueError(f"{version!r} is not a driver version like 535.309.01")
        self.exec(f"sh -c {shlex.quote(LOAD_MODULE_SCRIPT)} sh {shlex.quote(version or '')}")

    # --- reboots ---------------------------------------------------------------------

    def allow_reboots(
        self,
        on_down: Callable[[DebianHost], None] | None = None,
        on_up: Callable[[DebianHost], None] | None = None,
    ) -> None:
        """Make `reboot` in the host work as a reboot looks from outside: the host goes
        away (its PID 1 ends, every process and mount with it, /run emptied), then boots
        again from the same disk (its overlay upper layer), same address, port and keys,
        with an uptime that starts at zero, running /etc/rc.local (if executable) before
        sshd answers. `on_down`/`on_up` are called around it (the cluster side's kubelet).

        Call it from a thread that outlives the host (as for start_debian_host): the
        rebooted host is tied to a watcher thread started here.
        """
        self.put_file(
            "/usr/local/sbin/reboot",
            "#!/bin/sh\n# a test host's reboot: PID 1 (sshd) ends; the test harness boots the host again\n"
            "kill -TERM 1\n",
            mode=0o755,
        )
        self.reboots = 0
        threading.Thread(
            target=self._reboot_loop, args=(on_down, on_up), name=f"{self.name}-reboots", daemon=True
        ).start()

    def _reboot_loop(
        self, on_down: Callable[[DebianHost], None] | None, on_up: Callable[[DebianHost], None] | None
    ) -> None:
        while True:
            self._process.wait()
            if self._stopping or not self._finalizer.alive:
                return
            if on_down is not None:
                on_down(self)
            # unshare exits only after the init did, and every process of the namespace died
            # with the init: nothing to wait for (its namespace number may be reused by now).
            try:
                process, init_pid, pid_ns = _boot(
                    self.name, self._lower, self.workdir, self.ssh_port, 60, boot_clock=True
                )
            except Exception as exc:
                self.reboot_errors.append(f"{type(exc).__name__}: {exc}")
                return
            self._finalizer.detach()
            self._finalizer = weakref.finalize(
                self, _stop_host, process, init_pid, pid_ns, self.workdir, self._apt_pool, self.ssh_port
            )
            self._process, self._init_pid, self._pid_namespace = process, init_pid, pid_ns
            self.reboots += 1
            if on_up is not None:
                on_up(self)

    # --- the kernel release a Debian machine would run ---------------------------------------

    def set_kernel_release(self, release: str) -> None:
        """Make `uname -r` in the host say `release` (a Debian kernel's, e.g. 6.1.0-41-amd64).

        The host shares the machine's kernel, which is no Debian kernel: apt has no headers
        for it. A first-contact test of a Debian machine needs the release Debian would
        run; this shows it where tools read it, inside this host only: `uname` (a wrapper
        bound over /usr/bin/uname that answers -r and passes everything else on) and
        /proc/sys/kernel/osrelease. Nothing else of that kernel comes with it.
        """
        if not re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+-[0-9]+-[a-z0-9]+", release):
            raise ValueError(f"{release!r} is not a Debian kernel release like 6.1.0-41-amd64")
        script = """
            set -e
            base=/run/gpunode-testbed/kernel
            mkdir -p "$base"
            [ -e "$base/uname.real" ] || cp -p /usr/bin/uname "$base/uname.real"
            printf '%s\\n' "$1" > "$base/osrelease"
            cat > "$base/uname" <<EOF
        #!/bin/sh
        # gpunode test host: the kernel release a Debian machine would run (tests/standins/debian_host.py)
        if [ "\\$#" = 1 ] && { [ "\\$1" = -r ] || [ "\\$1" = --kernel-release ]; }; then echo $1; exit 0; fi
        exec $base/uname.real "\\$@"
        EOF
            chmod 0755 "$base/uname"
            mountpoint -q /usr/bin/uname || mount --bind "$base/uname" /usr/bin/uname
            mountpoint -q /proc/sys/kernel/osrelease || mount --bind "$base/osrelease" /proc/sys/kernel/osrelease
        """
        self.exec(f"sh -c {shlex.quote(textwrap.dedent(script))} sh {shlex.quote(release)}")

    # --- lifetime ---------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._finalizer.alive and _same_process(self._init_pid, self._pid_namespace)

    def stop(self) -> None:
        """Kill everything in the host and remove its directory. Safe to call twice."""
        self._stopping = True
        self._finalizer()

    def __enter__(self) -> DebianHost:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"DebianHost({self.name!r}, ssh_port={self.ssh_port}, init_pid={self._init_pid})"


def start_debian_host(
    cache_dir: Path,
    *,
    name: str = "gpunode-test",
    recipe: RootfsRecipe = DEFAULT_RECIPE,
    ready_timeout: float = 30,
    seed_apt_cache: bool = True,
) -> DebianHost:
    """Start a fresh host from the cached root filesystem (built on first use).

    `seed_apt_cache=False` starts with an empty /var/cache/apt/archives, so apt downloads
    everything (a cold install); what it downloads still goes to the shared pool.

    Call it from a thread that outlives the host (the main thread, a pytest fixture): the
    host is killed when the thread that started it exits.
    """
    if not _NAME.match(name):
        raise ValueError(f"host name {name!r} is not a valid hostname (a-z, 0-9, '-')")
    if os.geteuid() != 0:
        raise HostStartError("a test host needs root (namespaces, mounts, chroot)")
    lower = rootfs_tree(cache_dir, recipe)
    hosts_dir = debian_host_cache(cache_dir) / "hosts"
    hosts_dir.mkdir(exist_ok=True)
    apt_pool = debian_host_cache(cache_dir) / "apt-archives"
    apt_pool.mkdir(exist_ok=True)
    _sweep_abandoned(hosts_dir, apt_pool)

    last_error: Exception | None = None
    for _attempt in range(3):
        port = _reserve_port()
        try:
            return _launch(name, lower, hosts_dir, apt_pool, port, ready_timeout, seed_apt_cache)
        except _PortTaken as exc:  # another process took the port between probe and bind
            last_error = exc
            _release_port(port)
        except BaseException:
            _release_port(port)
            raise
    raise HostStartError(f"could not start {name}: {last_error}")


def start_debian_hosts(
    cache_dir: Path,
    count: int,
    *,
    name_prefix: str = "gpunode-test",
    recipe: RootfsRecipe = DEFAULT_RECIPE,
) -> list[DebianHost]:
    """Start `count` hosts (named `<prefix>-1` ...); all stopped again if one fails."""
    hosts: list[DebianHost] = []
    try:
        for index in range(1, count + 1):
            hosts.append(start_debian_host(cache_dir, name=f"{name_prefix}-{index}", recipe=recipe))
    except BaseException:
        stop_all(hosts)
        raise
    return hosts


def stop_all(hosts: Iterable[DebianHost]) -> None:
    errors: list[BaseException] = []
    for host in hosts:
        try:
            host.stop()
        except Exception as exc:  # stop the others, then report
            errors.append(exc)
    if errors:
        raise errors[0]


# --- internals ---------------------------------------------------------------------------


class _PortTaken(HostStartError):
    pass


def _run(
    argv: list[str],
    *,
    check: bool,
    input: str | None,
    timeout: float,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        argv,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=None if input is not None else subprocess.DEVNULL,
    )
    if check and result.returncode != 0:
        raise HostCommandError(result.returncode, argv, result.stdout, result.stderr)
    return result


def _reserve_port() -> int:
    with _ports_lock:
        for _ in range(50):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
            if port not in _ports_in_use:
                _ports_in_use.add(port)
                return port
    raise HostStartError("no free port on 127.0.0.1")


def _release_port(port: int) -> None:
    with _ports_lock:
        _ports_in_use.discard(port)


def _launch(
    name: str,
    lower: Path,
    hosts_dir: Path,
    apt_pool: Path,
    port: int,
    ready_timeout: float,
    seed_apt_cache: bool,
) -> DebianHost:
    workdir = Path(tempfile.mkdtemp(prefix=f"{name}.", dir=hosts_dir))
    for part in (str(lower), str(workdir)):
        if any(c in part for c in ",:\n"):  # overlay mount options cannot quote these
            raise HostStartError(f"the test cache path {part!r} may not contain ',' or ':'")
    try:
        _prepare_workdir(workdir, name, port, lower, apt_pool if seed_apt_cache else None)
        process, init_pid, pid_ns = _boot(name, lower, workdir, port, ready_timeout)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    host = DebianHost(
        name=name,
        workdir=workdir,
        ssh_port=port,
        process=process,
        init_pid=init_pid,
        pid_namespace=pid_ns,
        apt_pool=apt_pool,
    )
    host._lower = lower
    host._process = process
    return host


def _boot(
    name: str, lower: Path, workdir: Path, port: int, ready_timeout: float, boot_clock: bool = False
) -> tuple[subprocess.Popen[bytes], int, str]:
    """Start the host's init on its directory (first start, or again after a reboot).

    `boot_clock`: a time namespace whose boot clock starts at zero, so that the host's
    /proc/uptime says it booted just now, as a rebooted machine's does.
    """
    process: subprocess.Popen[bytes] | None = None
    clock: list[str] = []
    if boot_clock:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        clock = ["--time", "--boottime", str(-int(uptime))]
    try:
        log = open(workdir / "host.log", "ab")
        with log:
            process = subprocess.Popen(
                [
                    "setpriv",
                    "--pdeathsig",
                    "KILL",
                    "--",
                    "unshare",
                    "--mount",
                    "--pid",
                    "--uts",
                    "--ipc",
                    *clock,
                    "--fork",
                    "--kill-child=SIGKILL",
                    "--propagation",
                    "private",
                    "--",
                    "/bin/sh",
                    str(_START_SCRIPT),
                    str(lower),
                    str(workdir),
                    name,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        init_pid, pid_ns = _find_init(process, workdir)
        (workdir / "owner").write_text(f"{os.getpid()} {_start_time(os.getpid())} {init_pid} {pid_ns}\n")
        _wait_for_sshd(process, port, workdir, ready_timeout)
    except BaseException:
        if process is not None:
            _kill_host(process, None, None)
        raise
    return process, init_pid, pid_ns


def _prepare_workdir(workdir: Path, name: str, port: int, lower: Path, apt_pool: Path | None) -> None:
    seed = workdir / "seed"
    seed.mkdir()
    for sub in ("upper", "ovl-work", "root", "containerd"):
        (workdir / sub).mkdir()
    os.chmod(workdir / "containerd", 0o711)

    # The client key and the host key: fresh per host, ed25519 (fast to make).
    subprocess.run(
        [
            "ssh-keygen",
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            f"gpunode-test@{name}",
            "-f",
            str(workdir / "id_ed25519"),
        ],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{name}", "-f", str(seed / "ssh_host_ed25519_key")],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    shutil.copyfile(workdir / "id_ed25519.pub", seed / "authorized_keys")
    host_key = (seed / "ssh_host_ed25519_key.pub").read_text().split()
    (workdir / "known_hosts").write_text(f"[127.0.0.1]:{port},[{name}]:{port} {host_key[0]} {host_key[1]}\n")

    (seed / "hostname").write_text(f"{name}\n")
    (seed / "hosts").write_text(
        "127.0.0.1\tlocalhost\n"
        f"127.0.1.1\t{name}\n"
        "::1\t\tlocalhost ip6-localhost ip6-loopback\n"
        "ff02::1\t\tip6-allnodes\n"
        "ff02::2\t\tip6-allrouters\n"
    )
    (seed / "machine-id").write_text(secrets.token_hex(16) + "\n")
    resolv = Path("/etc/resolv.conf")
    if resolv.exists():  # same network namespace, so the same resolver works
        (seed / "resolv.conf").write_text(resolv.read_text())
    (seed / "sshd_config").write_text(
        "# gpunode test host: sshd on a loopback port, root by key only\n"
        f"Port {port}\n"
        "ListenAddress 127.0.0.1\n"
        "HostKey /etc/ssh/ssh_host_ed25519_key\n"
        "PermitRootLogin prohibit-password\n"
        "PubkeyAuthentication yes\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UseDNS no\n"
        # a fleet benchmark opens many connections at once
        "MaxStartups 200:30:400\n"
        "MaxSessions 100\n"
    )
    (workdir / "ssh_config").write_text(
        f"Host {name} 127.0.0.1\n"
        "  HostName 127.0.0.1\n"
        f"  Port {port}\n"
        "  User root\n"
        f"  IdentityFile {workdir / 'id_ed25519'}\n"
        "  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {workdir / 'known_hosts'}\n"
        "  GlobalKnownHostsFile /dev/null\n"
        "  StrictHostKeyChecking yes\n"
        "  BatchMode yes\n"
        "  ConnectTimeout 10\n"
        # OpenSSH 9's default key exchange (sntrup761) costs 0.25 s of CPU per connection;
        # curve25519 first halves a round trip. pyinfra (paramiko) never offers sntrup.
        "  KexAlgorithms curve25519-sha256,curve25519-sha256@libssh.org,"
        "sntrup761x25519-sha512@openssh.com\n"
        "  LogLevel ERROR\n"
    )
    _seed_apt_archives(lower, workdir / "upper", apt_pool)


def _seed_apt_archives(lower: Path, upper: Path, apt_pool: Path | None) -> None:
    """Give the host the packages earlier hosts downloaded (hard links, no copies).

    Each host has its own archives directory: apt locks it and writes partial downloads
    there, so one directory shared by running hosts would make them wait for each other.
    New downloads are collected back into the pool when the host stops.
    """
    rel = Path("var/cache/apt/archives")
    # Directories made in the upper layer by hand keep the lower layer's owner and mode,
    # since the upper one's attributes are what the host sees.
    for depth in range(1, len(rel.parts) + 1):
        part = Path(*rel.parts[:depth])
        st = os.stat(lower / part)
        (upper / part).mkdir(exist_ok=True)
        os.chmod(upper / part, stat.S_IMODE(st.st_mode))
        os.chown(upper / part, st.st_uid, st.st_gid)
    for deb in apt_pool.glob("*.deb") if apt_pool is not None else []:
        target = upper / rel / deb.name
        try:
            os.link(deb, target)
        except OSError:
            shutil.copy2(deb, target)


def _find_init(process: subprocess.Popen[bytes], workdir: Path) -> tuple[int, str]:
    """The host's PID 1 (unshare's child) and its PID namespace."""
    deadline = time.monotonic() + 10
    children_file = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise HostStartError(_failure(workdir, "the host's init exited at once"))
        try:
            children = children_file.read_text().split()
            own_ns = os.readlink(f"/proc/{process.pid}/ns/pid")
        except (FileNotFoundError, ProcessLookupError):
            children, own_ns = [], ""
        if children:
            pid = int(children[0])
            try:
                ns = os.readlink(f"/proc/{pid}/ns/pid")
            except FileNotFoundError:
                ns = ""
            # setpriv has exec'd unshare, unshare forked the init: its namespace is new.
            if ns and ns != own_ns:
                return pid, ns
        time.sleep(0.005)
    raise HostStartError(_failure(workdir, "the host's init did not appear"))


def _wait_for_sshd(process: subprocess.Popen[bytes], port: int, workdir: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = (workdir / "host.log").read_text(errors="replace")
            if "Address already in use" in log or "Cannot bind any address" in log:
                raise _PortTaken(f"port {port} was taken")
            raise HostStartError(_failure(workdir, "the host stopped before sshd was ready"))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                if sock.recv(64).startswith(b"SSH-2.0-"):
                    return
        except OSError:
            pass
        time.sleep(0.01)
    raise HostStartError(_failure(workdir, f"sshd did not answer on port {port}"))


def _failure(workdir: Path, what: str) -> str:
    try:
        log = (workdir / "host.log").read_text(errors="replace")[-3000:]
    except OSError:
        log = ""
    return f"{what}; the host's log:\n{log}"


def _same_process(pid: int, pid_ns: str) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid") == pid_ns
    except OSError:
        return False


def processes_in_namespace(namespace: str, kind: str = "pid") -> list[int]:
    """Live processes (zombies left out) in a namespace (`readlink /proc/PID/ns/<kind>`).

    A zombie holds no mounts and runs nothing; it waits for whoever reaps it (after a
    host's unshare died, that is the machine's PID 1, which may take its time).
    """
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/{kind}") != namespace:
                    continue
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if state != "Z":
                found.append(int(entry))
    return found


def _kill_host(process: subprocess.Popen[bytes] | None, init_pid: int | None, pid_ns: str | None) -> None:
    # SIGKILL to a PID namespace's init kills every process in it; the mount namespace,
    # and with it every mount of the host, goes with the last of them.
    if process is not None and process.poll() is not None:
        # unshare had exited already: its init, and every process of its namespace, died
        # before (a host that went down on its own); the PID and the namespace number may be
        # another host's by now.
        init_pid = pid_ns = None
    if init_pid is not None and pid_ns is not None and _same_process(init_pid, pid_ns):
        try:
            os.kill(init_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if process is not None:
        # unshare reaps the dead init and exits. Killing unshare instead would leave the
        # init's zombie to the machine's PID 1, which may reap it only a second later.
        try:
            process.wait(timeout=10 if init_pid is not None else 0)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)  # --kill-child takes the init with it
            process.wait(timeout=30)
    if pid_ns is not None:
        deadline = time.monotonic() + 10
        while processes_in_namespace(pid_ns):
            if time.monotonic() > deadline:
                raise RuntimeError(f"processes in {pid_ns} outlived their init")
            time.sleep(0.01)


def _stop_host(
    process: subprocess.Popen[bytes],
    init_pid: int,
    pid_ns: str,
    workdir: Path,
    apt_pool: Path,
    port: int,
) -> None:
    try:
        _kill_host(process, init_pid, pid_ns)
        _harvest_apt_archives(workdir / "upper" / "var/cache/apt/archives", apt_pool)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        _release_port(port)


def _harvest_apt_archives(archives: Path, apt_pool: Path) -> None:
    if not archives.is_dir():
        return
    for deb in archives.glob("*.deb"):
        target = apt_pool / deb.name
        if target.exists() or not deb.is_file():
            continue
        partial = apt_pool / f".{deb.name}.{os.getpid()}.partial"
        try:
            os.link(deb, partial)
        except OSError:
            shutil.copy2(deb, partial)
        os.replace(partial, target)


def _start_time(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _sweep_abandoned(hosts_dir: Path, apt_pool: Path) -> None:
    """Remove the directories of hosts whose test process died without stopping them."""
    for workdir in hosts_dir.iterdir():
        owner_file = workdir / "owner"
        try:
            owner_pid, owner_start, init_pid, pid_ns = owner_file.read_text().split()
        except (OSError, ValueError):
            # No owner yet: being prepared by a live start, or a start killed early.
            if time.time() - workdir.stat().st_mtime < 600:
                continue
            shutil.rmtree(workdir, ignore_errors=True)
            continue
        if _start_time(int(owner_pid)) == owner_start:
            continue  # its test process is alive: the host is someone's
        try:
            _kill_host(None, int(init_pid), pid_ns)
        except RuntimeError:
            continue  # something of it still runs: leave its directory alone
        _harvest_apt_archives(workdir / "upper" / "var/cache/apt/archives", apt_pool)
        shutil.rmtree(workdir, ignore_errors=True)
