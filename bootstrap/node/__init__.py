"""pyinfra facts (read the host) and operations (change it)."""
