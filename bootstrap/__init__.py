"""gpunode's operator side: CLI, settings, the pure core, pyinfra facts and operations,
the cluster layer, verify and doctor."""
