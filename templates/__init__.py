"""jinja2 templates shipped as package data (loaded with importlib.resources)."""
