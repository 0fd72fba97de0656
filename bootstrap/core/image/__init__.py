"""The device plugin image as data: the Debian base's recipe, the plugin's requirements, the
OCI image layout that carries them (the building itself is in gpunode.bootstrap.image)."""
