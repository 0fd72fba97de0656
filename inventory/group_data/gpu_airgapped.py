# The air-gapped rack: same account; the driver comes from the distro mirror the rack can
# reach, the toolkit from the local directory set per host.
ssh_user = "admin"
_sudo = True
gpunode_driver_branch = "535"
