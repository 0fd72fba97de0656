"""Runs node steps per host (pyinfra API), then cluster steps, then verify."""
