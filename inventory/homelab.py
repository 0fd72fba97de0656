# A single GPU box that is its own Kubernetes node (k3s, kubeadm or similar), bootstrapped
# from itself:   sudo gpunode bootstrap -i inventory/homelab.py
#
# Settings are inventory data named gpunode_<setting>; a command-line flag overrides them.
# The device plugin runs as a systemd service on the host (no DaemonSet needed).
homelab = [
    (
        "@local",
        {
            "gpunode_kernel_module": "dkms",
            "gpunode_plugin_mode": "host",
        },
    ),
]
