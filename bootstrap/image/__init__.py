"""Building the device plugin image (I/O: mmdebstrap, pip, the archive)."""
