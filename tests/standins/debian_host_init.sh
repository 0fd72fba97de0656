#!/bin/sh
# PID 1 of a gpunode test host (see debian_host.py). Runs in fresh mount, PID, UTS and IPC
# namespaces made by `unshare`, with the test machine's tools until pivot_root; ends by
# exec'ing the host's own sshd, which stays PID 1 (it reaps orphans; there is no init).
#   $1  the shared, read-only root filesystem (overlay lower layer)
#   $2  this host's directory: upper/, ovl-work/, root/ (mount point), seed/, containerd/
#   $3  the host name
set -eu
lower=$1
work=$2
name=$3
r=$work/root
seed=$work/seed

# The host's own copy of the root filesystem: writes land in its upper layer only.
mount -t overlay gpunode-testhost \
    -o "lowerdir=$lower,upperdir=$work/upper,workdir=$work/ovl-work" "$r"

# /proc of the host's PID namespace; sysfs is the machine's (read-only here, so a test
# cannot change the machine through it); the cgroup hierarchy as a node has it.
mount -t proc -o nosuid,nodev,noexec proc "$r/proc"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$r/sys"
if [ -d /sys/fs/cgroup ] && [ -d "$r/sys/fs/cgroup" ]; then
    mount --rbind /sys/fs/cgroup "$r/sys/fs/cgroup"
fi

# A private /dev: never the machine's (NVML tools create /dev/nvidia* nodes).
mount -t tmpfs -o nosuid,noexec,mode=0755,size=1m gpunode-dev "$r/dev"
mknod -m 0666 "$r/dev/null" c 1 3
mknod -m 0666 "$r/dev/zero" c 1 5
mknod -m 0666 "$r/dev/full" c 1 7
mknod -m 0666 "$r/dev/random" c 1 8
mknod -m 0666 "$r/dev/urandom" c 1 9
mknod -m 0666 "$r/dev/tty" c 5 0
mkdir -m 0755 "$r/dev/pts"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5,nosuid,noexec devpts "$r/dev/pts"
ln -s pts/ptmx "$r/dev/ptmx"
mkdir -m 1777 "$r/dev/shm"
mount -t tmpfs -o nosuid,nodev,mode=1777 shm "$r/dev/shm"
ln -s /proc/self/fd "$r/dev/fd"
ln -s /proc/self/fd/0 "$r/dev/stdin"
ln -s /proc/self/fd/1 "$r/dev/stdout"
ln -s /proc/self/fd/2 "$r/dev/stderr"

# /run is a tmpfs on a real host, so nothing in it survives a "reboot" (a new host).
mount -t tmpfs -o nosuid,nodev,mode=0755,size=64m tmpfs "$r/run"
mkdir -m 1777 "$r/run/lock"
mkdir -m 0755 "$r/run/sshd"

# containerd's state on a real filesystem: its overlayfs snapshotter cannot put an upper
# layer on the host's overlay root (containerd's CRI plugin would not load).
mkdir -p "$r/var/lib/containerd"
mount --bind "$work/containerd" "$r/var/lib/containerd"

# Who this host is.
for f in hostname hosts machine-id resolv.conf; do
    if [ -f "$seed/$f" ]; then
        rm -f "$r/etc/$f"
        install -m 0644 "$seed/$f" "$r/etc/$f"
    fi
done
install -d -m 0700 "$r/root/.ssh"
install -m 0600 "$seed/authorized_keys" "$r/root/.ssh/authorized_keys"
install -m 0600 "$seed/ssh_host_ed25519_key" "$r/etc/ssh/ssh_host_ed25519_key"
install -m 0644 "$seed/ssh_host_ed25519_key.pub" "$r/etc/ssh/ssh_host_ed25519_key.pub"
install -m 0644 "$seed/sshd_config" "$r/etc/ssh/sshd_config.d/gpunode-testhost.conf"
hostname "$name"

# Make the host's root the root of this mount namespace and drop the machine's tree.
cd "$r"
pivot_root . .
umount -l .
cd /
# What a boot runs before the host answers (a reboot test's module load, containerd).
if [ -x /etc/rc.local ]; then
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin /etc/rc.local || echo "rc.local failed: $?"
fi
exec /usr/sbin/sshd -D -e
