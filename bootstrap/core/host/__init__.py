"""What a host is: its facts, diagnostics, os-release, the record gpunode leaves on it, the plugin's unit."""
