"""What the operator answers to the Deployment's probes and Prometheus' scrape (served by
`safeship.operator.api.operator_app`, beside the API and dashboard, with no token):

    GET /healthz   200 {"ok": true, "leader": ..., "identity": ..., "releases": N} while the loops run,
                   503 once they stopped
    GET /metrics   Prometheus text: whether this instance leads, Releases known, and the counters of
                   lists, watch events, bookmarks, 410s, status writes and refusals, ticks, deployments
"""

from __future__ import annotations

from typing import Any

from safeship.operator.runner import Operator


def health_json(operator: Operator, alive: bool) -> dict[str, Any]:
    return {"ok": alive, "leader": operator.elector.is_leader(), "identity": operator.elector.identity,
            "releases": len(operator.releases)}


def metrics_text(operator: Operator) -> str:
    lines = [
        "# HELP safeship_operator_leader 1 when this instance holds the Lease and reconciles.",
        "# TYPE safeship_operator_leader gauge",
        f"safeship_operator_leader {1 if operator.elector.is_leader() else 0}",
        "# HELP safeship_operator_releases Releases this instance knows (watched).",
        "# TYPE safeship_operator_releases gauge",
        f"safeship_operator_releases {len(operator.releases)}",
    ]
    for name, value in sorted(operator.stats.items()):
        lines += [f"# TYPE safeship_operator_{name}_total counter", f"safeship_operator_{name}_total {value}"]
    return "\n".join(lines) + "\n"
