"""Pure functions, no I/O: where gpunode's knowledge lives."""
