"""docs/metrics.md and docs/grafana-dashboard.json name exactly the series the server exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from headscale_core.metrics import Metrics

DOCS = Path(__file__).parent.parent / "docs"


def exported() -> set[str]:
    registry = CollectorRegistry()
    Metrics(registry)
    # prometheus_client names a counter family without its _total suffix
    return {f.name + ("_total" if f.type == "counter" else "") for f in registry.collect()}


def test_metrics_doc_lists_every_series() -> None:
    table = re.findall(r"^\| `(headscale_\w+)` \|", (DOCS / "metrics.md").read_text(), re.MULTILINE)
    assert sorted(table) == sorted(exported())


def test_dashboard_queries_only_exported_series() -> None:
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    names = {name for e in exprs for name in re.findall(r"headscale_\w+", e)}
    # a histogram is queried through its _bucket, _count and _sum series
    used = {name if name in exported() else re.sub(r"_(bucket|count|sum)$", "", name) for name in names}
    assert used <= exported(), used - exported()
    assert exported() <= used, f"not on the dashboard: {exported() - used}"
