# A fleet of GPU nodes reached over SSH from the operator's machine:
#   gpunode bootstrap -i inventory/fleet.py --kubeconfig ~/.kube/config
#
# Each list is a pyinfra group; group-wide settings live in group_data/<group>.py, per-host
# settings in the host's tuple. Settings are inventory data named gpunode_<setting>.
gpu_nodes = [
    "gpu01.example",
    "gpu02.example",
    ("gpu03.example", {"ssh_port": 2222}),
    # A host whose NVIDIA kernel module is built and loaded by another tool.
    ("gpu04.example", {"gpunode_kernel_module": "none"}),
]

# An air-gapped rack: NVIDIA's repositories are unreachable, so the container toolkit
# comes from a local directory of packages on the operator's machine.
gpu_airgapped = [
    ("gpu10.example", {"gpunode_toolkit_packages": "packages/nvidia-container-toolkit"}),
]
