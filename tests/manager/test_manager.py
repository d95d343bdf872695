"""The Manager end to end: real SQLite file, real DiskTier files in tmp_path, random KV tensors."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from manager_helpers import KV_BYTES, make_config, make_kv

from evicctl.control import ControlClient
from evicctl.errors import EXIT_REFUSED, NoSuchContextError, RefusedError
from evicctl.manager.manager import Manager, disk_dir_of


def events(manager: Manager, **where) -> list[dict]:
    sql = "SELECT * FROM events" + (" WHERE " + " AND ".join(f"{k} = ?" for k in where) if where else "") + " ORDER BY id"
    return [dict(r) for r in manager.rt.store.query(sql, tuple(where.values()))]


def flip_byte(path: str, offset: int) -> None:
    data = bytearray(Path(path).read_bytes())
    data[offset] ^= 0xFF
    Path(path).write_bytes(bytes(data))


def profile_all(manager: Manager, context_id: str, quality: dict[str, float]) -> None:
    for codec, q in quality.items():
        manager.record_profile(context_id, codec, q, 0.01, 8, "teacher-forced")


def test_store_lookup_round_trip(tmp_path):
    with Manager(make_config(tmp_path), probe=False) as m:
        kv = make_kv(1)
        placement = m.store("doc", kv, label="a document", prefill_s=1.5)
        assert (placement.tier, placement.codec, placement.stored_bytes) == ("cpu", "none", KV_BYTES)
        hit = m.lookup("doc")
        assert hit is not None and (hit.tier, hit.codec, hit.stored_bytes) == ("cpu", "none", KV_BYTES)
        assert all(torch.equal(a, b) for a, b in zip(hit.kv.keys, kv.keys, strict=True))
        assert hit.kv.tokens == kv.tokens and hit.load_s >= 0 and hit.decode_s >= 0 and hit.freq > 0
        assert m.lookup("nobody") is None
        assert m.known("doc") and not m.known("nobody")
    with Manager(make_config(tmp_path), probe=False) as m:  # the rows the first one wrote
        row = dict(m.rt.store.query("SELECT * FROM contexts WHERE id = 'doc'")[0])
        assert (row["label"], row["hits"], row["tokens"], row["raw_bytes"]) == ("a document", 1, 64, KV_BYTES)
        assert [e["kind"] for e in events(m, context_id="doc")][:1] == ["admit"]
        tiers = {r["name"]: dict(r) for r in m.rt.store.query("SELECT * FROM tiers")}
        assert tiers["cpu"]["capacity_bytes"] == 4 * KV_BYTES and tiers["disk"]["read_bps"] > 0
        assert m.rt.store.query("SELECT COUNT(*) FROM samples")[0][0] >= 2
        config = m.config_json()
        assert config["alpha"] == 2.0 and "cost_model" in config and config["kv_shape"]["layers"] == 2


def test_pressure_compresses_and_demotes_with_events(tmp_path):
    m = Manager(make_config(tmp_path, cpu_bytes=2 * KV_BYTES, disk_bytes=3 * KV_BYTES), probe=False)
    try:
        for i in range(6):
            m.store(f"c{i}", make_kv(i))
            profile_all(m, f"c{i}", {"int8": 0.99, "int4": 0.9, "knorm@0.5": 0.6, "knorm@0.5+int8": 0.59})
            m.tick()
        for tier in m.tiers:
            assert tier.used_bytes <= tier.capacity_bytes, tier
        kinds = {(e["kind"], e["reason"]) for e in events(m)}
        assert ("compress", "capacity") in kinds or ("compress", "utility") in kinds
        assert any(k == "evict" for k, _ in kinds)
        placements = {c: m.placement(c) for c in m.context_ids()}
        assert {p.codec for p in placements.values() if p.tier != "dropped"} - {"none"}  # something compressed
        rows = {r["context_id"]: dict(r) for r in m.rt.store.query("SELECT * FROM placements")}
        assert set(rows) == set(placements)  # exactly one placement row per context
        for cid, p in placements.items():
            assert (rows[cid]["tier"], rows[cid]["codec"]) == (p.tier, p.codec)
            if p.tier != "dropped":
                hit = m.lookup(cid)
                assert hit is not None and hit.kv.keys[0].shape[2] <= 64
                if p.codec == "int8":
                    assert torch.allclose(hit.kv.keys[0], make_kv(int(cid[1:])).keys[0], atol=0.05)
    finally:
        m.close()


def test_restart_adopts_disk_reports_memory_gone_and_cleans_orphans(tmp_path):
    config = make_config(tmp_path, cpu_bytes=1 * KV_BYTES, disk_bytes=8 * KV_BYTES)
    m = Manager(config, probe=False)
    for i in range(3):
        m.store(f"c{i}", make_kv(i))
    m.tick()
    before = {c: m.placement(c) for c in m.context_ids()}
    m.close()
    on_disk = [c for c, p in before.items() if p.tier == "disk"]
    in_memory = [c for c, p in before.items() if p.tier == "cpu"]
    assert len(on_disk) == 2 and len(in_memory) == 1
    orphan = disk_dir_of(config) / "stray.none.safetensors"
    orphan.write_bytes(b"left over by a crashed move")
    m2 = Manager(config, probe=False)  # not started: nothing moves while we look
    try:
        assert len(list(disk_dir_of(config).glob("*.safetensors"))) == 2
        for c in on_disk:
            p = m2.placement(c)
            assert (p.tier, p.checksum) == ("disk", before[c].checksum)
            hit = m2.lookup(c)
            assert hit is not None and torch.equal(hit.kv.values[1], make_kv(int(c[1:])).values[1])
        assert m2.placement(in_memory[0]).tier == "dropped"
        assert m2.lookup(in_memory[0]) is None
        gone = events(m2, context_id=in_memory[0], reason="recovery")
        assert gone and gone[-1]["from_tier"] == "cpu" and gone[-1]["to_tier"] == "dropped"
        assert not orphan.exists() and m2.orphans_deleted == 1
    finally:
        m2.close()


def test_corrupt_file_is_lost_never_served(tmp_path):
    config = make_config(tmp_path, cpu_bytes=0, disk_bytes=8 * KV_BYTES)
    m = Manager(config, probe=False)
    m.store("a", make_kv(1))
    m.store("b", make_kv(2))
    path_a = m.placement("a").location
    m.close()
    flip_byte(path_a, -10)
    with Manager(config, probe=False) as m2:
        assert m2.placement("a").tier == "dropped" and m2.lookup("a") is None
        lost = events(m2, context_id="a", kind="lost")
        assert lost and lost[-1]["reason"] == "lost"
        # Corruption while running: detected on the lookup, which becomes a miss.
        path_b = m2.placement("b").location
        flip_byte(path_b, -3)
        assert m2.lookup("b") is None
        assert m2.placement("b").tier == "dropped"
        m2.tick()
        assert events(m2, context_id="b", kind="lost")
        row = m2.rt.store.query("SELECT misses FROM contexts WHERE id = 'b'")
        assert row[0][0] == 1


def test_operator_commands_through_the_control_channel(tmp_path):
    config = make_config(tmp_path, cpu_bytes=2 * KV_BYTES, disk_bytes=8 * KV_BYTES, quality_floor=0.8)
    with Manager(config, probe=False) as m, ControlClient(config.db_path) as client:
        for i in range(3):
            m.store(f"c{i}", make_kv(i))
            profile_all(m, f"c{i}", {"int8": 0.99, "int4": 0.7, "knorm@0.5": 0.5})
        assert client.manager_alive().alive

        def run(verb, ctx, **args):
            return client.wait(client.submit(verb, ctx, args, actor="alice"), timeout_s=10)

        # evict --dry-run: a plan, nothing changes.
        command_id = client.submit("evict", "c0", {"to": "drop", "dry_run": True}, actor="alice")
        out = client.wait(command_id, timeout_s=10)
        assert out.status == "done" and out.result["plan"][0]["to_tier"] == "dropped"
        assert [e["kind"] for e in events(m, command_id=command_id)] == ["command"]
        assert m.placement("c0").tier != "dropped"
        # pin to cpu, then it holds there.
        out = run("pin", "c1", tier="cpu")
        assert out.status == "done", out.result
        assert m.placement("c1").tier == "cpu"
        pin_events = events(m, context_id="c1", kind="pin")
        assert pin_events[-1]["actor"] == "alice" and pin_events[-1]["command_id"] is not None
        # a pin that cannot fit is refused, with the reason, and maps to exit code 5.
        m.store("big", make_kv(9, tokens=256))  # 4x larger than the whole cpu tier
        out = run("pin", "big", tier="cpu", codec="none")
        assert out.status == "refused" and "cpu" in out.message
        with pytest.raises(RefusedError) as err:
            out.raise_for_status()
        assert err.value.exit_code == EXIT_REFUSED
        # recompress below the floor is refused; within it, done; back to none, refused.
        out = run("recompress", "c1", codec="int4")
        assert out.status == "refused" and "floor" in out.message
        out = run("recompress", "c1", codec="int8")
        assert out.status == "done" and m.placement("c1").codec == "int8"
        out = run("recompress", "c1", codec="none")
        assert out.status == "refused" and "cannot come back" in out.message
        # force overrides the floor for the command; the policy then drops what is below it.
        out = run("recompress", "c2", codec="int4", force=True)
        assert out.status == "done", out.result
        deadline = time.time() + 5
        while time.time() < deadline and m.placement("c2").tier != "dropped":
            time.sleep(0.02)
        assert events(m, context_id="c2", reason="quality-floor")
        # unpin, evict to disk, promote back.
        assert run("unpin", "c1").status == "done"
        out = run("evict", "c1", to="disk")
        assert out.status == "done" and m.placement("c1").tier == "disk", (out, m.placement("c1"))
        assert events(m, context_id="c1", reason="operator")
        out = run("promote", "c1")
        assert out.status == "done", out.result
        assert m.placement("c1").tier == "cpu"
        # unknown context: failed with the error kind the CLI maps to exit code 3.
        out = run("evict", "nobody")
        assert out.status == "failed"
        with pytest.raises(NoSuchContextError):
            out.raise_for_status()
        out = run("evict", "c0", to="drop")
        assert out.status == "done" and m.placement("c0").tier == "dropped" and out.result["event_ids"]


def test_pins_survive_a_restart(tmp_path):
    config = make_config(tmp_path, cpu_bytes=2 * KV_BYTES, disk_bytes=8 * KV_BYTES)
    with Manager(config, probe=False) as m, ControlClient(config.db_path) as client:
        m.store("a", make_kv(1))
        m.store("b", make_kv(2))
        out = client.wait(client.submit("pin", "b", {"tier": "disk"}), timeout_s=10)
        assert out.status == "done" and m.placement("b").tier == "disk"
    with Manager(config, probe=False) as m2:
        deadline = time.time() + 5
        while time.time() < deadline and m2.placement("b").tier != "disk":
            time.sleep(0.05)
        assert m2.placement("b").tier == "disk"
        assert m2.context("b").pin_tier == "disk"
        m2.store("c", make_kv(3))
        m2.store("d", make_kv(4))
        m2.tick()
        assert m2.placement("b").tier == "disk"  # stays pinned while others come and go


def test_record_profile_needs_a_known_context(tmp_path):
    with Manager(make_config(tmp_path), probe=False) as m:
        with pytest.raises(NoSuchContextError):
            m.record_profile("nobody", "int8", 0.9, 0.01, 4)
        m.store("a", make_kv(1))
        m.record_profile("a", "int8", 0.9, 0.01, 4)
        m.report_prefill(20, 64, 0.01)
        assert m.cost_model.n_observations == 1
