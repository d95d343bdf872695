"""Regressions of the manager: self-moves, pins that must take effect, lost copies, churn,
and the per-database disk folder."""

from __future__ import annotations

import dataclasses
import time

from manager_helpers import KV_BYTES, make_config, make_kv

from evicctl.control import ControlClient
from evicctl.manager.manager import Manager, disk_dir_of
from evicctl.manager.placer.place import Move


class OnePlan:
    """Just what MoveExecutor.execute reads of a plan: its moves."""

    def __init__(self, *moves: Move) -> None:
        self.moves = moves

    def iter_moves(self, kinds=None):
        return iter([m for m in self.moves if kinds is None or m.kind in kinds])


def events(manager: Manager, **where) -> list[dict]:
    sql = " AND ".join(f"{k} = ?" for k in where) or "1"
    return [dict(r) for r in manager.rt.store.query(f"SELECT * FROM events WHERE {sql} ORDER BY id", list(where.values()))]


def self_move(context_id: str, tier: str, codec: str) -> Move:
    return Move(context_id, tier, codec, tier, codec, "utility", 1.0, 1.0, "compress", KV_BYTES)


def test_a_move_onto_its_own_copy_is_a_no_op_and_loses_nothing(tmp_path):
    config = make_config(tmp_path, cpu_bytes=2 * KV_BYTES, disk_bytes=8 * KV_BYTES)
    m = Manager(config, probe=False)  # not started: nothing else moves meanwhile
    try:
        for i in range(4):
            m.store(f"c{i}", make_kv(i))
        m.tick()
        where = {c: m.placement(c) for c in m.context_ids()}
        on = {p.tier: c for c, p in where.items()}
        assert set(on) == {"cpu", "disk"}
        plan = OnePlan(*(self_move(c, tier, "none") for tier, c in on.items()))
        assert m.execute(plan) == []  # nothing moved, nothing written
        for tier, c in on.items():
            assert m.placement(c) == where[c]
            hit = m.lookup(c)
            assert hit is not None and hit.tier == tier and hit.codec == "none"
            original = make_kv(int(c[1:]))
            assert (hit.kv.keys[0] == original.keys[0]).all()
        assert not events(m, kind="lost")
    finally:
        m.close()


def test_a_pin_with_a_codec_recompresses_before_it_is_done(tmp_path):
    config = make_config(tmp_path, cpu_bytes=2 * KV_BYTES, disk_bytes=8 * KV_BYTES)
    with Manager(config, probe=False) as m, ControlClient(config.db_path) as client:
        for i in range(4):
            m.store(f"c{i}", make_kv(i))
            m.record_profile(f"c{i}", "int4", 0.9, 0.01, 8)
        deadline = time.time() + 10  # the control thread relieves cpu on its next tick
        while time.time() < deadline and sum(m.placement(c).tier == "disk" for c in m.context_ids()) < 2:
            time.sleep(0.02)
        on_disk = next(c for c in m.context_ids() if m.placement(c).tier == "disk")
        out = client.wait(client.submit("pin", on_disk, {"codec": "int4"}, actor="op"), timeout_s=10)
        assert out.status == "done", out.result
        p = m.placement(on_disk)  # at once, not after some later tick
        assert p.codec == "int4", p
        assert not [mv for mv in out.result["plan"] if (mv["from_tier"], mv["from_codec"]) == (mv["to_tier"], mv["to_codec"])]
        assert m.lookup(on_disk).codec == "int4"
        # A codec the stored copy cannot become is refused, with the reason, and changes nothing.
        out = client.wait(client.submit("pin", on_disk, {"codec": "none"}, actor="op"), timeout_s=10)
        assert out.status == "refused" and "cannot" in out.result["message"]
        assert m.placement(on_disk).codec == "int4" and m.context(on_disk).pin_codec == "int4"


def test_lookup_of_a_vanished_copy_marks_the_context_lost(tmp_path):
    config = make_config(tmp_path, cpu_bytes=2 * KV_BYTES, disk_bytes=8 * KV_BYTES)
    m = Manager(config, probe=False)  # not started: the test sees every write
    try:
        for i in range(3):
            m.store(f"c{i}", make_kv(i))
        c = next(c for c in m.context_ids() if m.placement(c).tier == "disk")
        ctx = m.context(c)
        m.tier_named("disk").delete(ctx.key)  # gone behind the manager's back
        assert m.lookup(c) is None
        assert m.placement(c).tier == "dropped"
        lost = events(m, context_id=c, kind="lost")
        assert len(lost) == 1 and lost[0]["from_tier"] == "disk"
        assert m.context(c).misses == 1
        assert m.lookup(c) is None and len(events(m, context_id=c, kind="lost")) == 1  # once
        m.store(c, make_kv(0))  # stored again: served again
        assert m.lookup(c) is not None
    finally:
        m.close()


def test_a_steady_workload_at_capacity_does_not_churn(tmp_path):
    # replan_s 0: every tick is a timer rebalance. 6 equal contexts, room for 2 on cpu, looked
    # up round robin: their access rates stay within a hair of each other and keep trading ranks.
    config = make_config(tmp_path, cpu_bytes=2 * KV_BYTES, disk_bytes=8 * KV_BYTES, replan_s=0.0,
                         rebalance_min_residence_s=0.0, freq_half_life_s=5.0)  # fmt: skip
    m = Manager(config, probe=False)
    try:
        ids = [f"c{i}" for i in range(6)]
        for i, c in enumerate(ids):
            m.store(c, make_kv(i))
        for _ in range(2):
            for c in ids:
                m.lookup(c)
            m.tick()
        first = max((e["id"] for e in events(m)), default=0)
        for _ in range(8):
            for c in ids:
                assert m.lookup(c) is not None
                m.tick()
            time.sleep(0.01)
        moves = [e for e in events(m) if e["id"] > first and e["kind"] in ("promote", "demote", "move", "compress")]
        assert moves == [], [(e["context_id"], e["kind"], e["from_tier"], e["to_tier"]) for e in moves]
        assert sum(m.placement(c).tier == "cpu" for c in ids) == 2
    finally:
        m.close()


def test_two_databases_sharing_a_cache_dir_keep_their_files(tmp_path):
    a = make_config(tmp_path / "a", cpu_bytes=1, disk_bytes=8 * KV_BYTES)
    b = make_config(tmp_path / "b", cpu_bytes=1, disk_bytes=8 * KV_BYTES)
    shared = tmp_path / "cache"
    a, b = (type(a)(**{**a.__dict__, "cache_dir": shared}) for a in (a, b))
    assert disk_dir_of(a) != disk_dir_of(b) and disk_dir_of(a).parent == shared / "disk"
    with Manager(a, probe=False) as ma:
        ma.store("x", make_kv(1))
        assert ma.placement("x").tier == "disk"
        assert ma.placement("x").location.startswith(str(disk_dir_of(a)))
    with Manager(b, probe=False) as mb:  # deletes its own orphans only
        mb.store("y", make_kv(2))
        assert mb.orphans_deleted == 0
    with Manager(a, probe=False) as ma:
        hit = ma.lookup("x")
        assert hit is not None and hit.tier == "disk"


def test_a_pin_to_a_tier_no_longer_configured_is_kept_refused_and_said(tmp_path):
    """After a restart without the pinned tier, the pin stays in the store (the operator's
    intent returns with the tier), and an event says it is not honoured, naming the tiers."""
    import dataclasses
    import sqlite3

    from evicctl.config import TierConfig

    config = make_config(tmp_path)
    with Manager(config, probe=False) as m:
        m.store("c0", make_kv(0))
    with sqlite3.connect(config.db_path) as db:  # pinned to a gpu tier this machine no longer has
        db.execute("UPDATE contexts SET pin_tier = 'gpu', pin_codec = 'int3-nope' WHERE id = 'c0'")
    smaller = dataclasses.replace(config, tiers=(TierConfig("cpu", capacity_bytes=4 * KV_BYTES),))
    with Manager(smaller, probe=False) as m:
        refused = [e for e in events(m, context_id="c0", kind="pin")]
        assert refused and "pin not honoured" in refused[-1]["reason"]
        assert "'gpu' is not configured (tiers: cpu)" in refused[-1]["reason"] and "int3-nope" in refused[-1]["reason"]
        row = m.rt.store.query("SELECT pin_tier, pin_codec FROM contexts WHERE id = 'c0'")
        assert [dict(r) for r in row] == [{"pin_tier": "gpu", "pin_codec": "int3-nope"}]


def test_heartbeats_continue_after_the_wall_clock_jumps_back(tmp_path, monkeypatch):
    """Heartbeat intervals run on the monotonic clock: set an hour back, the wall clock must
    not silence the heartbeat for an hour (readers would call the manager dead)."""
    config = make_config(tmp_path, heartbeat_timeout_s=0.4)
    m = Manager(config, probe=False)
    try:
        real_time = time.time
        monkeypatch.setattr(time, "time", lambda: real_time() - 3600.0)
        written = []
        for _ in range(4):
            time.sleep(0.15)  # longer than the heartbeat interval (timeout / 4)
            m.heartbeat_if_due()
            written.append(m.rt.store.query("SELECT heartbeat_at FROM manager WHERE id = 1")[0][0])
        assert written[-1] > written[0], written  # renewed, at the jumped clock's time
        assert abs(written[-1] - time.time()) < 5.0
    finally:
        monkeypatch.undo()
        m.close()


def test_the_codec_backend_is_said_where_operators_look(tmp_path, monkeypatch, run_cli):
    """On CUDA without Triton the codecs run 14-38x slower: the description, `evicctl tiers`
    and the dashboard's header say so (here on the CPU: what runs them is said too)."""
    from evicctl.manager.codecs import quant
    from evicctl.tui.render import manager_text

    config = make_config(tmp_path)
    with Manager(config, probe=False) as m:
        assert m.describe().codec_backend == "torch (cpu)"
        out = run_cli("tiers", "--db", str(config.db_path))
        assert "codecs run on: torch (cpu)" in out.stdout
        monkeypatch.setattr(quant, "_kernels_module", lambda: None)
        monkeypatch.setattr(quant, "_KERNELS_MISSING", ["Triton is not installed"])
        assert quant.codec_backend("cuda:0").startswith("torch eager, 14-38x slower (Triton is not installed")
        from evicctl.snapshot.read import read_manager

        info = read_manager(m.rt.store)
        slow = dataclasses.replace(info, description=dataclasses.replace(info.description,
                                   codec_backend=quant.codec_backend("cuda:0")))  # fmt: skip
        assert "codecs: torch eager" in manager_text(slow, time.time()).plain
