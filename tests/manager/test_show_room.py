"""`evicctl show` says why a context is not on a faster tier that has room for it (real
manager, SQLite file, cpu and disk tiers; the CLI in-process)."""

from __future__ import annotations

import json

from manager_helpers import KV_BYTES, make_config, make_kv

from evicctl.manager.manager import Manager


def test_show_says_why_a_context_is_not_on_a_faster_tier_with_room(tmp_path, run_cli):
    config = make_config(tmp_path, cpu_bytes=3 * KV_BYTES, disk_bytes=8 * KV_BYTES, replan_s=3600.0)
    m = Manager(config, probe=False)  # no control thread: nothing re-plans behind the test's back
    try:
        for i in range(3):
            m.store(f"c{i}", make_kv(i), prefill_s=0.5)
        assert [m.placement(f"c{i}").tier for i in range(3)] == ["cpu"] * 3
        m.execute(m.plan(overrides={"c2": {"force_tier": "disk"}}))  # the operator moves it down
        m.execute(m.plan(overrides={"c0": {"force_tier": "dropped"}}))  # and drops another
        assert [m.placement(f"c{i}").tier for i in range(3)] == ["dropped", "cpu", "disk"]
    finally:
        m.close()
    notes = {}
    for cid in ("c0", "c1", "c2"):
        result = run_cli("show", cid, "--db", config.db_path, "-o", "json")
        assert result.exit_code == 0, result.stderr
        notes[cid] = json.loads(result.stdout)["room_note"]
    assert notes["c1"] is None  # on the fastest tier
    assert notes["c2"].startswith("cpu has 0.1 MiB free") and "moved here" in notes["c2"]
    assert "once it has stayed 30 s" in notes["c2"]  # a rebalance waits out its residence time
    assert "dropped: no copy is left" in notes["c0"]
    text = run_cli("show", "c2", "--db", config.db_path)
    assert text.exit_code == 0 and f"why here  {notes['c2']}" in text.stdout
