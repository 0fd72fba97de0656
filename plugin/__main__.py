"""`python -m gpunode.plugin serve ...`: the plugin without the rest of gpunode."""

from gpunode.plugin.cli import plugin_group

if __name__ == "__main__":
    plugin_group(prog_name="python -m gpunode.plugin")
