"""`gpunode render dashboard`: a Grafana dashboard of the GPUs, as JSON. Offline."""

from __future__ import annotations

import json

import click

from gpunode.bootstrap.cli.contract import EXIT_OK, ContractCommand, Outcome, output_option
from gpunode.bootstrap.core.kube.telemetry import grafana_dashboard


@click.command("dashboard", cls=ContractCommand, empty_body={"documents": []})
@output_option
def dashboard_command(output: str) -> Outcome:
    """Print a Grafana dashboard (JSON) of the GPUs: utilization, memory, temperature,
    power, clocks, XIDs, ECC and remapped rows (dcgm-exporter's metric names, so nodes
    running dcgm-exporter show too), and what only gpunode's plugin knows: GPUs NVML
    cannot read and devices advertised to the kubelet.

    \b
    Import it in Grafana (Dashboards > New > Import), or put it in a provisioning folder:
      gpunode render dashboard > /var/lib/grafana/dashboards/gpunode.json

    With --output json, the dashboard is the one item of the envelope's `documents`. Exit status 0.
    """
    dashboard = grafana_dashboard()
    return Outcome(EXIT_OK, {"documents": [dashboard]}, json.dumps(dashboard, indent=2) + "\n", verbatim=True)
