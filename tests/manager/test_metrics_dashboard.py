"""docs/grafana/evicctl.json loads as a Grafana dashboard and draws only metrics the manager serves."""

from __future__ import annotations

import json
import re

import pytest
from manager_helpers import make_kv
from metrics_helpers import metrics_manager, sample_names, scrape

from evicctl.entry import CHECKOUT_ROOT

DASHBOARD = CHECKOUT_ROOT / "docs" / "grafana" / "evicctl.json"
PANEL_TYPES = {"timeseries", "stat", "gauge", "bargauge", "table", "heatmap", "row", "text"}
GRID_COLUMNS = 24
METRIC = re.compile(r"\bevicctl_[a-z0-9_]+")
# what the issue asks the dashboard to draw, by the series that carries it
REQUIRED = {
    "tier occupancy": "evicctl_tier_used_bytes",
    "hit rate": "evicctl_lookups_total",
    "TTFT": "evicctl_ttft_seconds_bucket",
    "moves": "evicctl_moves_total",
    "lifetimes": "evicctl_eviction_lifetime_seconds_bucket",
}


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> set[str]:
    """Series names a real manager's /metrics serves (families listed even before a sample)."""
    with metrics_manager(tmp_path_factory.mktemp("dash")) as manager:
        manager.store("a", make_kv(0), prefill_s=2.0)
        return sample_names(scrape(manager.metrics_url))


def _exprs(dashboard: dict) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_top_level_is_a_dashboard_with_a_datasource_variable(dashboard):
    assert isinstance(dashboard["title"], str) and dashboard["title"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dashboard["uid"])
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert METRIC.search(variables["instance"]["definition"])


def test_panels_have_unique_ids_and_tile_the_grid_without_overlap(dashboard):
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels) >= 10
    cells = set()
    for p in panels:
        assert p["type"] in PANEL_TYPES, p["type"]
        assert p["title"]
        g = p["gridPos"]
        assert all(isinstance(g[k], int) for k in "xywh") and g["w"] > 0 and g["h"] > 0
        assert g["x"] + g["w"] <= GRID_COLUMNS, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"{p['title']} overlaps another panel"
        cells |= mine


def test_every_target_queries_the_datasource_variable_with_unique_ref_ids(dashboard):
    for p in dashboard["panels"]:
        if p["type"] in ("row", "text"):
            continue
        assert p["datasource"]["uid"] == "${datasource}"
        refs = [t["refId"] for t in p["targets"]]
        assert p["targets"] and len(set(refs)) == len(refs), p["title"]
        for t in p["targets"]:
            assert METRIC.search(t["expr"]), t["expr"]
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]


def test_every_query_names_a_served_metric(dashboard, served):
    used = {name for expr in _exprs(dashboard) for name in METRIC.findall(expr)}
    assert used and not used - served, f"not served: {sorted(used - served)}"


def test_it_draws_what_operators_asked_for(dashboard):
    used = {name for expr in _exprs(dashboard) for name in METRIC.findall(expr)}
    missing = {what: name for what, name in REQUIRED.items() if name not in used}
    assert not missing, missing
