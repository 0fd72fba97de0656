"""Tests against the Kubernetes API stand-in (a package, so its conftest has a name of its own)."""
