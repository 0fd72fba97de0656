"""verify's rules: Allocatable against the GPUs found, each result with its cause."""
