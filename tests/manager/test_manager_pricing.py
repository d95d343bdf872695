"""What an operator is shown is what the manager decided with, on a real manager run (real
SQLite file, real cpu and disk tiers, random KV): `evicctl show`'s chosen option carries the
utility the placer stored, and the dashboard's disk row measures the folder the manager writes."""

from __future__ import annotations

import json

from manager_helpers import KV_BYTES, make_config, make_kv

from evicctl.manager.description import ManagerDescription
from evicctl.manager.manager import Manager, disk_dir_of
from evicctl.store.database import Store
from evicctl.telemetry import TelemetryReader
from evicctl.tui.query import ViewQuery
from evicctl.tui.source import DashboardSource

QUALITY = {"int8": 0.99, "int4": 0.93, "knorm@0.5": 0.7, "knorm@0.5+int8": 0.69}


def busy_run(m: Manager, contexts: int = 8) -> None:
    """Admissions past both tiers' capacity (compress, demote, drop), profiles, hits and misses,
    measured prefills and engine timings (so the cost model and the query length move)."""
    for i in range(contexts):
        busy_step(m, i)
    m.tick()  # the profiles' re-plan


def busy_step(m: Manager, i: int) -> None:
    m.store(f"c{i}", make_kv(i), prefill_s=0.4 + 0.1 * i if i % 2 else None)
    for codec, q in QUALITY.items():
        m.record_profile(f"c{i}", codec, q - 0.01 * (i % 3), 0.01, 8, "teacher-forced")
    for j in range(i % 3 + 1):
        m.lookup(f"c{j}")
    m.report_prefill(12 + i, 64, 0.02 + 0.001 * i)
    m.tick()


def shown_chosen_utilities(run_cli, db, ids) -> dict[str, float]:
    out = {}
    for cid in ids:
        result = run_cli("show", cid, "--db", db, "-o", "json")
        assert result.exit_code == 0, result.stderr
        chosen = [o for o in json.loads(result.stdout)["options"] if o["chosen"]]
        assert len(chosen) == 1, (cid, chosen)
        out[cid] = chosen[0]["utility"]
    return out


def stored_utilities(db) -> dict[str, float]:
    with Store.open(db, readonly=True) as store:
        return {r["id"]: r["utility"] for r in store.query("SELECT id, utility FROM contexts")}


def test_show_prints_the_utility_the_placer_stored_for_every_context(tmp_path, run_cli):
    config = make_config(tmp_path, cpu_bytes=2 * KV_BYTES, disk_bytes=3 * KV_BYTES, replan_s=3600.0)
    with Manager(config, probe=True) as m:  # probed bandwidths: disk may measure faster than cpu (the clamp)
        busy_run(m)
        # the probed bandwidths vary with the machine's load, and with them how many contexts
        # fit before one is dropped: admit more until every kind of option is in play
        for i in range(8, 24):
            if "dropped" in {m.placement(c).tier for c in m.context_ids()}:
                break
            busy_step(m, i)
        m.tick()
        quiet = stored_utilities(config.db_path)
        placed = {c: m.placement(c).tier for c in m.context_ids()}
    assert {"cpu", "disk", "dropped"} <= set(placed.values()), placed  # every kind of option is checked
    stored = stored_utilities(config.db_path)
    assert stored == quiet and set(stored) == set(placed)  # closing re-planned nothing
    assert all(u is not None for u in stored.values())
    assert shown_chosen_utilities(run_cli, config.db_path, stored) == stored


def test_show_agrees_while_the_manager_runs(tmp_path, run_cli):
    config = make_config(tmp_path, cpu_bytes=2 * KV_BYTES, disk_bytes=3 * KV_BYTES, replan_s=3600.0)
    with Manager(config, probe=False) as m:
        busy_run(m, contexts=6)
        m.tick()  # quiesced: the last plan's figures and rows are written
        stored = stored_utilities(config.db_path)
        assert shown_chosen_utilities(run_cli, config.db_path, stored) == stored


def test_the_dashboard_measures_the_disk_folder_the_manager_writes(tmp_path):
    config = make_config(tmp_path, cpu_bytes=KV_BYTES // 4)  # too small: the KV goes to disk
    source = DashboardSource(config.db_path, telemetry=TelemetryReader(), follow_manager_disk=True)
    with Manager(config, probe=False) as m:
        assert m.store("doc", make_kv(1)).tier == "disk"
        m.tick()
        frame = source.read(ViewQuery())
        description = ManagerDescription.from_json(m.config_json())
    source.close()
    assert frame.error is None and frame.telemetry.disk is not None
    assert frame.telemetry.disk.path == str(disk_dir_of(config)) == description.disk_dir
    assert list(disk_dir_of(config).glob("doc.*"))  # the copy the manager wrote is in that folder
    assert frame.telemetry.disk.path != str(config.cache_dir)  # not the shared cache folder
