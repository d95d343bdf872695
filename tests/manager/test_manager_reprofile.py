"""Re-profiling: online quality against the stored profile, and the manager's heartbeat cadence."""

from __future__ import annotations

import threading
import time

import pytest
from manager_helpers import KV_BYTES, make_config, make_kv

from evicctl.control import ControlClient
from evicctl.errors import NoSuchContextError, UnknownNameError, UsageError
from evicctl.manager.manager import HEARTBEATS_PER_TIMEOUT, Manager, heartbeat_every_s
from evicctl.manager.placer.place import place
from evicctl.manager.reprofile import MIN_SAMPLES, OnlineQuality


def reprofile_events(m: Manager, context_id: str) -> list[dict]:
    rows = m.rt.store.query("SELECT * FROM events WHERE kind = 'reprofile' AND context_id = ? ORDER BY id", (context_id,))
    return [dict(r) for r in rows]


# --------------------------------------------------------------------------- OnlineQuality


def test_online_mean_trips_once_after_enough_samples():
    oq = OnlineQuality(drop=0.3)
    # One terrible answer is noise: nothing trips before MIN_SAMPLES measurements.
    for _ in range(MIN_SAMPLES - 1):
        assert oq.record("a", "int4", 0.1, profile_quality=0.9) is None
    assert not oq.needs_reprofile("a")
    shortfall = oq.record("a", "int4", 0.1, profile_quality=0.9)
    assert shortfall == pytest.approx(0.8) and oq.needs_reprofile("a")
    assert oq.record("a", "int4", 0.1, profile_quality=0.9) is None  # already stale: no second trip
    oq.profiled("a", "int4")  # a fresh profile clears it and starts the mean over
    assert not oq.needs_reprofile("a")
    assert oq.record("a", "int4", 0.85, profile_quality=0.9) is None
    assert oq.estimate("a").samples == 1 and oq.estimate("a").quality == pytest.approx(0.85)


def test_online_mean_is_an_ewma_and_restarts_on_another_codec():
    oq = OnlineQuality(drop=0.3, weight=0.5, min_samples=1)
    oq.record("a", "int8", 1.0, profile_quality=1.0)
    oq.record("a", "int8", 0.6, profile_quality=1.0)
    assert oq.estimate("a").quality == pytest.approx(0.8)  # 1.0 + 0.5 * (0.6 - 1.0)
    assert not oq.needs_reprofile("a")  # 0.8 is within 0.3 of 1.0
    oq.record("a", "int4", 0.5, profile_quality=None)  # recompressed: a new mean, no profile to compare
    assert oq.estimate("a").codec == "int4" and oq.estimate("a").quality == 0.5
    assert not oq.needs_reprofile("a")
    with pytest.raises(ValueError):
        OnlineQuality(drop=0.0)


def test_candidates_costliest_first():
    oq = OnlineQuality(drop=0.2, min_samples=1)
    oq.record("rare-bad", "int4", 0.1, profile_quality=0.9)  # shortfall 0.8
    oq.record("busy-bad", "int4", 0.5, profile_quality=0.9)  # shortfall 0.4
    oq.record("fine", "int4", 0.85, profile_quality=0.9)
    assert oq.candidates({"rare-bad": 0.1, "busy-bad": 1.0}) == ["busy-bad", "rare-bad"]
    assert oq.candidates({}) == ["rare-bad", "busy-bad"]  # no rates known: the larger drop first


# --------------------------------------------------------------------------- the Manager's API


def test_manager_flags_a_quality_drop_with_an_event(tmp_path):
    config = make_config(tmp_path, cpu_bytes=8 * KV_BYTES, reprofile_drop=0.3)
    with Manager(config, probe=False) as m:
        m.store("doc", make_kv(1))
        m.store("other", make_kv(2))
        m.record_profile("doc", "int8", 0.95, 0.01, 8)
        assert not m.needs_reprofile("doc") and m.reprofile_candidates() == []
        # Served at int8, the answers come out much worse than the profile said.
        results = [m.record_online_quality("doc", "int8", 0.4) for _ in range(MIN_SAMPLES)]
        assert results == [False] * (MIN_SAMPLES - 1) + [True]
        assert m.needs_reprofile("doc") and not m.needs_reprofile("other")
        assert m.reprofile_candidates() == ["doc"]
        m.record_online_quality("doc", "int8", 0.3)  # still stale: no second event
        m.flush()
        (event,) = reprofile_events(m, "doc")
        assert (event["reason"], event["from_codec"], event["actor"]) == ("quality-drop", "int8", "policy")
        assert event["from_tier"] == m.placement("doc").tier
        # A new profile of that codec: no longer a candidate.
        m.record_profile("doc", "int8", 0.5, 0.05, 8)
        assert not m.needs_reprofile("doc") and m.reprofile_candidates() == []
        # The uncompressed KV is its own reference (quality 1): answers at 0.9 are fine.
        for _ in range(MIN_SAMPLES + 2):
            m.record_online_quality("other", "none", 0.9)
        assert not m.needs_reprofile("other")


def test_online_quality_within_the_drop_or_without_a_profile_does_not_trip(tmp_path):
    with Manager(make_config(tmp_path), probe=False) as m:
        m.store("doc", make_kv(1))
        m.record_profile("doc", "int4", 0.9, 0.02, 8)
        for q in (0.7, 0.65, 0.7, 0.62):  # 0.2-0.28 below the profile: within reprofile_drop 0.3
            assert not m.record_online_quality("doc", "int4", q)
        for _ in range(5):  # never profiled at knorm@0.5: nothing to compare with
            assert not m.record_online_quality("doc", "knorm@0.5", 0.1)
        assert not reprofile_events(m, "doc")


def test_online_quality_rejects_bad_input(tmp_path):
    with Manager(make_config(tmp_path), probe=False) as m:
        m.store("doc", make_kv(1))
        with pytest.raises(NoSuchContextError):
            m.record_online_quality("nobody", "int8", 0.5)
        with pytest.raises(NoSuchContextError):
            m.needs_reprofile("nobody")
        with pytest.raises(UsageError):
            m.record_online_quality("doc", "int8", 1.5)
        with pytest.raises(UnknownNameError):
            m.record_online_quality("doc", "zstd", 0.5)


# --------------------------------------------------------------------------- heartbeat cadence


def test_heartbeat_period_fits_the_cli_timeout(tmp_path):
    default = make_config(tmp_path)
    assert heartbeat_every_s(default) * HEARTBEATS_PER_TIMEOUT <= default.heartbeat_timeout_s
    tight = make_config(tmp_path, heartbeat_timeout_s=0.4)
    assert heartbeat_every_s(tight) == pytest.approx(0.1)
    with pytest.raises(UsageError, match="tick_s"):
        heartbeat_every_s(make_config(tmp_path, heartbeat_timeout_s=0.1, tick_s=0.05))
    with pytest.raises(UsageError):
        Manager(make_config(tmp_path, heartbeat_timeout_s=0.0), probe=False)


def test_a_long_plan_keeps_the_manager_alive_for_the_cli(tmp_path):
    """Moves that take longer than the CLI's timeout altogether still heartbeat as they go."""
    timeout_s = 0.4
    config = make_config(tmp_path, cpu_bytes=8 * KV_BYTES, disk_bytes=16 * KV_BYTES, heartbeat_timeout_s=timeout_s)
    m = Manager(config, probe=False)  # not started: this test drives the plan itself
    try:
        for i in range(6):
            m.store(f"c{i}", make_kv(i))
        disk = m.tier_named("disk")
        slow_put = disk.put

        def put(*args, **kwargs):
            time.sleep(0.15)  # a slow device: 6 moves take ~0.9 s, over twice the timeout
            return slow_put(*args, **kwargs)

        disk.put = put
        plan = place(m.problem(overrides={f"c{i}": {"force_tier": "disk"} for i in range(6)}))
        assert len(plan) == 6
        m.heartbeat_if_due()
        seen_dead = []
        done = threading.Event()

        def watch():
            with ControlClient(config.db_path) as client:
                while not done.is_set():
                    if not client.manager_alive().alive:
                        seen_dead.append(time.time())
                    time.sleep(0.02)

        watcher = threading.Thread(target=watch)
        watcher.start()
        started = time.time()
        try:
            m.execute(plan)
        finally:
            done.set()
            watcher.join()
        assert time.time() - started > 2 * timeout_s
        assert {m.placement(f"c{i}").tier for i in range(6)} == {"disk"}
        assert not seen_dead
    finally:
        m.close()
