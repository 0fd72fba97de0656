"""gpunode's bundled NVML device plugin (kubelet device plugin API v1beta1).

Runs as its own process; never imports pyinfra (gevent) or gpunode.bootstrap.
"""
