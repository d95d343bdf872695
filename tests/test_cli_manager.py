"""The CLI against the real Manager (its control thread, tiers and placer) on real files."""

from __future__ import annotations

import json
import time

import pytest
import torch

from evicctl.config import ManagerConfig, TierConfig
from evicctl.control import current_actor
from evicctl.manager.kv import KV
from evicctl.manager.manager import Manager

LAYERS, HEADS, TOKENS, HEAD_DIM = 2, 2, 64, 32
KV_BYTES = 2 * LAYERS * HEADS * TOKENS * HEAD_DIM * 4  # fp32


def _kv(seed: int) -> KV:
    g = torch.Generator().manual_seed(seed)
    keys = [torch.randn(1, HEADS, TOKENS, HEAD_DIM, generator=g) for _ in range(LAYERS)]
    values = [torch.randn(1, HEADS, TOKENS, HEAD_DIM, generator=g) for _ in range(LAYERS)]
    return KV.full(keys, values)


def _wait(predicate, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.fixture
def manager(tmp_path):
    config = ManagerConfig(
        db_path=tmp_path / "evicctl.db",
        cache_dir=tmp_path / "cache",
        tiers=(TierConfig("cpu", capacity_bytes=4 * KV_BYTES), TierConfig("disk", capacity_bytes=16 * KV_BYTES)),
        codecs=("none", "int8", "knorm@0.5"),
        tick_s=0.02,
    )
    m = Manager(config, probe=False).start()
    for i in range(6):
        m.store(f"doc-{i}", _kv(i), label=f"document {i}", tenant="acme" if i % 2 else "default")
    m.flush()
    yield m
    m.close()


def _ls(run_cli, db) -> dict:
    result = run_cli("ls", "--db", db, "-o", "json")
    assert result.exit_code == 0, result.stderr
    return {r["id"]: r for r in json.loads(result.stdout)}


def test_read_commands_see_the_managers_state(run_cli, manager):
    db = manager.config.db_path
    rows = _wait(lambda: (r := _ls(run_cli, db)) and len(r) == 6 and r)
    assert {r["tier"] for r in rows.values()} <= {"cpu", "disk", "dropped"}
    assert all(r["raw_bytes"] == KV_BYTES for r in rows.values())
    # an admission may overflow a tier until the control thread's re-plan relieves it
    tiers = _wait(lambda: (t := json.loads(run_cli("tiers", "--db", db, "-o", "json").stdout))
                  and all(x["used_bytes"] <= x["capacity_bytes"] for x in t) and t)  # fmt: skip
    assert [t["name"] for t in tiers] == ["cpu", "disk"]
    detail = json.loads(run_cli("show", "doc-0", "--db", db, "-o", "json").stdout)
    assert detail["cost_model"] == "manager"
    assert sum(o["chosen"] for o in detail["options"]) == 1
    assert all(o["predicted_ttft_s"] is not None for o in detail["options"])
    admits = json.loads(run_cli("history", "--db", db, "-o", "json", "--kind", "admit").stdout)
    assert {e["context_id"] for e in admits} == {f"doc-{i}" for i in range(6)}


def test_mutations_round_trip_through_the_manager(run_cli, manager):
    db = manager.config.db_path
    pinned = run_cli("pin", "doc-0", "--tier", "disk", "--db", db)
    assert pinned.exit_code == 0, pinned.stderr
    assert pinned.stdout.startswith("command ") and "done" in pinned.stdout
    assert _wait(lambda: _ls(run_cli, db)["doc-0"]["pin_tier"] == "disk")

    dry = run_cli("evict", "doc-1", "--dry-run", "--db", db, "-o", "json")
    assert dry.exit_code == 0, dry.stderr
    assert json.loads(dry.stdout)["message"].startswith("dry run")

    evicted = run_cli("evict", "doc-1", "--yes", "--db", db)
    assert evicted.exit_code == 0, evicted.stderr
    assert _wait(lambda: _ls(run_cli, db)["doc-1"]["tier"] == "dropped")

    audit = json.loads(run_cli("history", "--db", db, "-o", "json", "--kind", "command").stdout)
    assert [e["reason"].split(":")[0] for e in audit] == ["pin done", "evict done", "evict done"]
    assert {e["actor"] for e in audit} == {current_actor()}


def test_a_pin_that_cannot_fit_is_refused_with_exit_5(run_cli, manager):
    db = manager.config.db_path
    codes = [run_cli("pin", f"doc-{i}", "--tier", "cpu", "--codec", "none", "--db", db) for i in range(6)]
    # the cpu tier holds four uncompressed KVs: the fifth pin cannot fit
    assert [c.exit_code for c in codes[:4]] == [0, 0, 0, 0], [c.stderr for c in codes]
    refused = codes[4]
    assert refused.exit_code == 5
    assert refused.stderr.startswith("evicctl: command ") and "refused" in refused.stderr


def test_after_the_manager_stops_mutations_exit_4(run_cli, manager):
    db = manager.config.db_path
    manager.close()
    result = run_cli("unpin", "doc-0", "--db", db)
    assert result.exit_code == 4
    assert "no manager running (stopped" in result.stderr
