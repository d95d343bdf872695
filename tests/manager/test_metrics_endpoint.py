"""/metrics of a real manager (real cpu and disk tiers, a real store), scraped over HTTP and
checked against `evicctl tiers -o json` and the store at the same moment."""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import sys
import time

import pytest
from manager_helpers import make_kv
from metrics_helpers import is_created, metrics_manager, scrape, value

from evicctl.entry import CHECKOUT_ROOT
from evicctl.store.database import Store

CONTEXTS = 8
QUIET = dict(replan_s=3600.0)  # no timer re-plan between the scrape and the CLI's read


@pytest.fixture
def busy_manager(tmp_path, run_cli):
    """8 contexts from 2 tenants through 2+4 contexts of room, every one looked up, one
    operator evict to drop and one to disk, one lookup of an unknown id; then idle until its state is written."""
    manager = metrics_manager(tmp_path, **QUIET)
    try:
        for i in range(CONTEXTS):
            manager.store(f"c{i}", make_kv(i), prefill_s=2.0, tenant=f"t{i % 2}")
        manager.tick()  # the pressure re-plan runs now, not whenever the control thread wakes
        for cid in [f"c{i}" for i in range(CONTEXTS)] + ["unknown"]:
            hit = manager.lookup(cid)
            manager.report_prefill(8, hit.kv.kept_tokens if hit else 0, 0.01)
        on_cpu = next(c for c in manager.context_ids() if manager.placement(c).tier == "cpu")
        done = run_cli("evict", on_cpu, "--to", "drop", "--yes", "--db", manager.config.db_path)
        assert done.exit_code == 0, done.stderr
        # a demotion for certain: whether the placer itself evicts depends on when the
        # control thread relieves an admission's overflow
        on_cpu = next(c for c in manager.context_ids() if manager.placement(c).tier == "cpu")
        done = run_cli("evict", on_cpu, "--to", "disk", "--yes", "--db", manager.config.db_path)
        assert done.exit_code == 0, done.stderr
        manager.tick()  # writes the state now (the control thread's ticks find nothing left to do)
        yield manager
    finally:
        manager.close()


def _store_rows(db_path, sql: str, params=()):
    with Store.open(db_path, readonly=True) as store:
        return [dict(r) for r in store.query(sql, params)]


def test_scrape_matches_evicctl_tiers_and_the_store(busy_manager, run_cli):
    families = scrape(busy_manager.metrics_url)
    tiers = json.loads(run_cli("tiers", "--db", busy_manager.config.db_path, "-o", "json").stdout)
    db = busy_manager.config.db_path
    for t in tiers:
        name = t["name"]
        assert value(families, "evicctl_tier_capacity_bytes", tier=name) == t["capacity_bytes"]
        assert value(families, "evicctl_tier_used_bytes", tier=name) == t["used_bytes"]
        assert value(families, "evicctl_contexts", tier=name) == t["contexts"]
        assert value(families, "evicctl_tier_hits_total", tier=name) == t["hits"]
        assert value(families, "evicctl_tier_read_bandwidth_bytes_per_second", tier=name) == pytest.approx(t["read_bps"])
    assert sum(t["used_bytes"] for t in tiers) > 0
    misses = _store_rows(db, "SELECT SUM(misses) AS n FROM contexts")[0]["n"]
    assert value(families, "evicctl_misses_total") == misses > 0
    assert value(families, "evicctl_lookups_total", result="hit") == sum(t["hits"] for t in tiers) > 0
    assert value(families, "evicctl_lookups_total", result="miss") == misses
    assert value(families, "evicctl_lookups_total", result="new") == 1
    dropped = _store_rows(db, "SELECT COUNT(*) AS n FROM placements WHERE tier = 'dropped'")[0]["n"]
    assert value(families, "evicctl_contexts", tier="dropped") == dropped > 0
    assert value(families, "evicctl_manager_heartbeat_age_seconds") < busy_manager.config.heartbeat_timeout_s


def test_moves_and_lifetimes_match_the_events(busy_manager):
    families = scrape(busy_manager.metrics_url)
    db = busy_manager.config.db_path
    for row in _store_rows(db, "SELECT kind, COUNT(*) AS n FROM events WHERE kind IN ('admit', 'move', "
                               "'compress', 'evict', 'drop') GROUP BY kind"):  # fmt: skip
        assert value(families, "evicctl_moves_total", kind=row["kind"]) == row["n"], row["kind"]
    evicted = _store_rows(db, "SELECT from_tier, kind, COUNT(*) AS n, SUM(lifetime_s) AS life, SUM(idle_s) AS idle,"
                              " SUM(hits) AS hits, SUM(from_bytes) AS nbytes FROM events"
                              " WHERE lifetime_s IS NOT NULL GROUP BY from_tier, kind")  # fmt: skip
    assert {r["kind"] for r in evicted} >= {"evict", "drop"}
    for r in evicted:
        labels = dict(tier=r["from_tier"], kind=r["kind"])
        assert value(families, "evicctl_evictions_total", **labels) == r["n"]
        assert value(families, "evicctl_eviction_lifetime_seconds_count", **labels) == r["n"]
        assert value(families, "evicctl_eviction_lifetime_seconds_sum", **labels) == pytest.approx(r["life"])
        assert value(families, "evicctl_eviction_idle_seconds_sum", **labels) == pytest.approx(r["idle"])
        assert value(families, "evicctl_eviction_hits_sum", **labels) == r["hits"]
        assert value(families, "evicctl_eviction_bytes_sum", **labels) == r["nbytes"] > 0
    assert value(families, "evicctl_commands_total", verb="evict", status="done") == 2
    assert value(families, "evicctl_ttft_seconds_count") == CONTEXTS + 1  # every lookup, closed by its prefill
    assert value(families, "evicctl_placer_seconds_count") >= 1


def test_show_and_tiers_report_the_lifetimes(busy_manager, run_cli):
    db = busy_manager.config.db_path
    time.sleep(0.2)
    rows = _store_rows(db, "SELECT context_id, from_tier, lifetime_s, idle_s FROM events WHERE lifetime_s IS NOT NULL")
    shown = json.loads(run_cli("show", rows[0]["context_id"], "--db", db, "-o", "json").stdout)
    assert shown["lifetimes"] and set(shown["lifetimes"][0]) >= {"kind", "from_tier", "lifetime_s", "age_s",
                                                                 "idle_s", "hits", "from_bytes"}  # fmt: skip
    table = run_cli("show", rows[0]["context_id"], "--db", db).stdout
    assert "Evictions" in table and "LIFETIME" in table
    tiers = {t["name"]: t for t in json.loads(run_cli("tiers", "--db", db, "-o", "json").stdout)}
    for tier in {r["from_tier"] for r in rows}:
        mine = [r for r in rows if r["from_tier"] == tier]
        assert tiers[tier]["evictions"] == len(mine)
        assert tiers[tier]["median_lifetime_s"] == pytest.approx(statistics.median(r["lifetime_s"] for r in mine))
        assert tiers[tier]["median_idle_s"] == pytest.approx(statistics.median(r["idle_s"] for r in mine))
    assert "LIFETIME p50" in run_cli("tiers", "--db", db).stdout


def test_every_served_metric_is_documented(busy_manager):
    docs = (CHECKOUT_ROOT / "docs" / "metrics.md").read_text()
    families = scrape(busy_manager.metrics_url)
    suffix = {"counter": "_total", "histogram": "_bucket"}  # as the docs' tables name them
    served = [f.name + suffix.get(f.type, "") for f in families.values() if not is_created(f.name, families)]
    undocumented = sorted(n for n in served if f"`{n}`" not in docs)
    assert not undocumented, f"served but not in docs/metrics.md: {undocumented}"


def test_metrics_are_off_by_default_and_prometheus_is_not_imported(tmp_path):
    code = (
        "import sys; from pathlib import Path\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "from manager_helpers import make_config, make_kv\n"
        "from evicctl.manager.manager import Manager\n"
        "with Manager(make_config(Path(sys.argv[1])), probe=False) as m:\n"
        "    m.store('a', make_kv(0), prefill_s=2.0); m.lookup('a')\n"
        "    assert m.metrics_url is None\n"
        "assert 'prometheus_client' not in sys.modules, 'metrics off must not import prometheus_client'\n"
    )
    done = subprocess.run([sys.executable, "-P", "-c", code, str(tmp_path), str(CHECKOUT_ROOT / "tests" / "manager")],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


def test_a_busy_port_is_a_usage_error_naming_it(tmp_path):
    from evicctl.manager.metrics import MetricsServerError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsServerError, match=f"127.0.0.1:{port}"):
            metrics_manager(tmp_path, metrics_port=port)


def test_tenant_labels_are_bounded():
    from evicctl.manager.metrics import OTHER, TenantLabels

    labels = TenantLabels(limit=2)
    assert [labels(t) for t in ("a", "b", "c", "a", None)] == ["a", "b", OTHER, "a", OTHER]
