"""containerd's configuration: the runtime merge, its schemas, the effective config."""
