"""The rollout's part of `gpunode bootstrap`'s text summary (from RolloutResult.as_dict())."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def format_rollout(doc: Mapping[str, Any], *, dry_run: bool = False) -> str:
    nodes = [n for n in doc.get("nodes") or [] if n.get("batch")]
    lines = [
        "",
        f"rollout: {len(nodes)} node(s) disrupted, in {doc.get('batches', 0)} batch(es) of at most "
        f"{doc.get('max_unavailable')} (cordon, drain, steps, ready, uncordon)",
    ]
    if not nodes:
        lines.append("  no run disrupts a node: nothing cordoned or drained")
    for node in sorted(nodes, key=lambda n: (n["batch"], n["node"])):
        lines.append(f"  batch {node['batch']}  {node['node']} ({node['host']}): {node['status']}")
        lines.append(f"    why: {'; '.join(node['reasons'])}")
        if dry_run:
            scope = "all pods, GPU pods first" if node.get("drain_scope") == "all" else "GPU pods only"
            lines.append(f"    would evict ({scope}): {', '.join(node['would_evict']) or 'nothing'}")
            for block in node.get("blocked_by") or []:
                lines.append(f"    would block: {block}")
        for phase in node.get("phases") or []:
            detail = f": {phase['detail']}" if phase.get("detail") else ""
            lines.append(f"    {phase['name']:<8} {phase['status']:<7} {phase['seconds']:.1f} s{detail}")
        if node.get("cordoned"):
            lines.append("    left cordoned")
    if doc.get("stopped"):
        lines.append(f"STOPPED: {doc['stopped']}")
    return "\n".join(lines)
