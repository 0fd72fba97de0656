# Every host of the gpu_nodes group: an admin account with sudo, one driver branch and one
# toolkit version for the whole group.
ssh_user = "admin"
_sudo = True
gpunode_driver_branch = "535"
gpunode_toolkit_version = "1.17.8-1"
