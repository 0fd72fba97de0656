"""Kubernetes objects gpunode writes and reads: manifests, the cluster plan, taints, views of node and pod JSON, alert rules."""
