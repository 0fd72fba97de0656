"""Choosing the real libnvidia-ml.so.<version> file from what a host has."""
