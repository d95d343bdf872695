"""Fixture databases for tests and benchmarks: real SQLite files, deterministic from a seed.

Importable without pytest (benchmarks use it): `make_fixture_db(path, n_contexts, seed)`.
The clock is fixed (`FIXTURE_NOW`) so snapshots and renders are reproducible; pass
`now=time.time()` for a manager that looks alive to readers using the real clock.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

from evicctl.store.database import Store

FIXTURE_NOW = 1_764_410_400.0  # 2025-11-29 10:00:00 UTC
# SmolLM2-135M: 30 layers, 3 KV heads of 64; fp16 values -> 23,040 bytes per token
KV_SHAPE = {"layers": 30, "kv_heads": 3, "head_dim": 64, "dtype_bytes": 2}
BYTES_PER_TOKEN = 2 * 30 * 3 * 64 * 2
CODECS = ("none", "int8", "int4", "snapkv@0.5", "keydiff@0.5", "knorm@0.5", "snapkv@0.25+int8")
TENANTS = ("default", "acme", "globex")
TOPICS = ("Normans", "Amazon_rainforest", "Computational_complexity", "Steam_engine", "Oxygen",
          "Victoria_and_Albert_Museum", "Huguenot", "Immune_system", "Geology", "Kenya")
ALPHA = 2.0
QUERY_TOKENS = 32


@dataclass(frozen=True)
class FixtureInfo:
    path: Path
    context_ids: tuple[str, ...]
    tiers: tuple[str, ...]
    now: float
    events: int
    pinned: tuple[str, ...]
    dropped: tuple[str, ...]


def _size_fraction(codec: str) -> float:
    keep = 1.0 - float(codec.split("@")[1].split("+")[0]) if "@" in codec else 1.0
    bits = 8 if codec.endswith("int8") else 4 if codec.endswith("int4") else 16
    per_value = 1.0 if bits == 16 else (bits / 8 + 4 / 32) / 2
    return keep * per_value


def _tier_specs(with_gpu: bool) -> list[dict]:
    specs = [
        {"name": "cpu", "backend": "cpu", "capacity_bytes": 256 << 20, "read_bps": 8e9, "write_bps": 6e9},
        {"name": "disk", "backend": "disk", "capacity_bytes": 2 << 30, "read_bps": 1.2e9, "write_bps": 0.8e9},
    ]
    if with_gpu:
        specs.insert(0, {"name": "gpu", "backend": "cuda", "capacity_bytes": 64 << 20, "read_bps": 2e12, "write_bps": 2e12})
    return specs


def make_fixture_db(
    path: Path | str,
    n_contexts: int = 50,
    seed: int = 0,
    *,
    now: float = FIXTURE_NOW,
    manager: str = "alive",  # alive | stopped | stale | none
    with_gpu: bool = True,
    events_per_context: int = 3,
    sample_seconds: int = 120,
    capacity_scale: float = 1.0,  # tier capacities x this (e.g. n_contexts / 50 for big fixtures)
    cost_model: dict | None = None,  # CostModel.to_dict() stored as the manager's: TTFTs independent of defaults
) -> FixtureInfo:
    """Create (or extend) a populated evicctl database at `path` and return what it holds."""
    rng = random.Random(seed)
    path = Path(path)
    store = Store.open(path)
    try:
        specs = [{**t, "capacity_bytes": int(t["capacity_bytes"] * capacity_scale)} for t in _tier_specs(with_gpu)]
        rank_of = {s["name"]: i for i, s in enumerate(specs)}
        rows = [_context(rng, i, now) for i in range(n_contexts)]
        placements = _place(rng, rows, specs, now)
        with store.transaction() as conn:
            _write_manager(conn, manager, now, cost_model)
            _write_tiers(conn, specs, placements, rank_of, now)
            _write_contexts(conn, rows, placements)
            _write_profiles(conn, rng, rows, now)
            n_events = _write_events(conn, rng, rows, placements, events_per_context, now)
            _write_samples(conn, specs, placements, sample_seconds, now)
            _write_commands(conn, rows, now)
    finally:
        store.close()
    return FixtureInfo(
        path,
        tuple(r["id"] for r in rows),
        tuple(s["name"] for s in specs),
        now,
        n_events,
        tuple(r["id"] for r in rows if r["pin_tier"] or r["pin_codec"]),
        tuple(cid for cid, p in placements.items() if p["tier"] == "dropped"),
    )


def _context(rng: random.Random, i: int, now: float) -> dict:
    tokens = rng.randrange(512, 4097)
    topic = TOPICS[i % len(TOPICS)]
    freq = 1.0 / (i + 1) ** 1.1  # Zipf popularity: context 0 is the hottest
    pinned = i % 17 == 5
    return {
        "id": f"ctx-{i:05d}",
        "label": f"squad:{topic}" if i % 4 else f"hotpot:{topic}",
        "tenant": TENANTS[i % len(TENANTS)],
        "tokens": tokens,
        "raw_bytes": tokens * BYTES_PER_TOKEN,
        "created_at": now - 3600 + rng.random() * 600,
        "last_access_at": now - rng.random() * 900,
        "hits": int(freq * 400) + rng.randrange(0, 3),
        "misses": 1 + rng.randrange(0, 2),
        "freq": round(freq, 6),
        "pin_tier": "cpu" if pinned else None,
        "pin_codec": "int8" if i % 17 == 5 and i % 2 else None,
        "quality_floor": 0.8 if i % 23 == 7 else None,
    }


def _place(rng: random.Random, rows: list[dict], specs: list[dict], now: float) -> dict[str, dict]:
    """Hottest first into the fastest tier with room; the coldest tenth is dropped."""
    free = {s["name"]: s["capacity_bytes"] for s in specs}
    out = {}
    for i, row in enumerate(rows):
        codec = row["pin_codec"] or CODECS[rng.randrange(len(CODECS))]
        stored = int(math.ceil(row["raw_bytes"] * _size_fraction(codec)))
        tier = "dropped"
        if i < len(rows) * 0.9 or len(rows) < 10:
            tier = next((s["name"] for s in specs if free[s["name"]] >= stored), "dropped")
        if tier == "dropped":
            codec, stored = "none", 0
        else:
            free[tier] -= stored
        out[row["id"]] = {"context_id": row["id"], "tier": tier, "codec": codec, "stored_bytes": stored,
                          "since": now - rng.random() * 600}
    return out


def _write_manager(conn, manager: str, now: float, cost_model: dict | None = None) -> None:
    if manager == "none":
        return
    config = {"alpha": ALPHA, "codecs": list(CODECS), "query_tokens": QUERY_TOKENS, "kv_shape": KV_SHAPE,
              "heartbeat_timeout_s": 5.0, "tick_s": 0.05}
    if cost_model is not None:
        config["cost_model"] = cost_model
    heartbeat = now - 1.0 if manager != "stale" else now - 3600.0
    stopped = now - 1.0 if manager == "stopped" else None
    conn.execute(
        "INSERT OR REPLACE INTO manager (id, pid, host, started_at, heartbeat_at, stopped_at, version, config_json)"
        " VALUES (1, 4242, 'fixture-host', ?, ?, ?, '0.1.0', ?)",
        (now - 7200.0, heartbeat, stopped, json.dumps(config)),
    )


def _write_tiers(conn, specs, placements, rank_of, now) -> None:
    used = {s["name"]: 0 for s in specs}
    for p in placements.values():
        if p["tier"] in used:
            used[p["tier"]] += p["stored_bytes"]
    conn.executemany(
        "INSERT OR REPLACE INTO tiers (name, backend, rank, capacity_bytes, used_bytes, read_bps, write_bps, hits, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(s["name"], s["backend"], rank_of[s["name"]], s["capacity_bytes"], used[s["name"]], s["read_bps"],
          s["write_bps"], 100 * (3 - rank_of[s["name"]]), now) for s in specs],
    )


def _utility(row: dict, placement: dict) -> float:
    ttft_s = 0.05 + placement["stored_bytes"] / 2e9 if placement["tier"] != "dropped" else 1.8 * row["tokens"] / 1024
    quality = 1.0 if placement["codec"] == "none" else 0.8
    return row["freq"] * (ALPHA * quality - ttft_s)


def _write_contexts(conn, rows, placements) -> None:
    cols = ("id", "label", "tenant", "tokens", "raw_bytes", "created_at", "last_access_at", "hits", "misses",
            "freq", "utility", "pin_tier", "pin_codec", "quality_floor")
    conn.executemany(
        f"INSERT OR REPLACE INTO contexts ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
        ([*(r[c] for c in cols[:10]), round(_utility(r, placements[r["id"]]), 6), r["pin_tier"], r["pin_codec"],
          r["quality_floor"]] for r in rows),
    )
    pcols = ("context_id", "tier", "codec", "stored_bytes", "since")
    conn.executemany(
        f"INSERT OR REPLACE INTO placements ({', '.join(pcols)}) VALUES (?, ?, ?, ?, ?)",
        (tuple(p[c] for c in pcols) for p in placements.values()),
    )


def _write_profiles(conn, rng, rows, now) -> None:
    def gen():
        for r in rows:
            for codec in CODECS[1:]:
                q = round(0.99 - 0.02 * rng.random() if codec == "int8" else 0.95 - 0.4 * rng.random(), 4)
                yield (r["id"], codec, "teacher-forced", q, 0.05, q, None, 8, now - 1800)

    conn.executemany(
        "INSERT OR REPLACE INTO profiles (context_id, codec, metric, quality, quality_sd, raw_mean, f1, n_queries,"
        " measured_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        gen(),
    )


def _write_events(conn, rng, rows, placements, per_context, now) -> int:
    def gen():
        for r in rows:
            p = placements[r["id"]]
            t = r["created_at"]
            yield (t, r["id"], "admit", None, p["tier"], None, p["codec"], p["stored_bytes"], None, 0.5, "admit", "policy")
            for k in range(per_context - 1):
                t += rng.random() * 60
                kind = ("move", "compress", "hit")[k % 3]
                yield (t, r["id"], kind, "cpu", p["tier"], "none", p["codec"], p["stored_bytes"], 0.4, 0.5,
                       "capacity" if kind != "hit" else None, "policy")

    before = conn.total_changes
    conn.executemany(
        "INSERT INTO events (ts, context_id, kind, from_tier, to_tier, from_codec, to_codec, bytes, utility_before,"
        " utility_after, reason, actor) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        gen(),
    )
    return conn.total_changes - before


def _write_samples(conn, specs, placements, seconds, now) -> None:
    used = {s["name"]: sum(p["stored_bytes"] for p in placements.values() if p["tier"] == s["name"]) for s in specs}

    def gen():
        for k in range(seconds):
            ts = now - seconds + k + 1
            for rank, s in enumerate(specs):
                fill = used[s["name"]] * (0.5 + 0.5 * (k + 1) / seconds)
                # cumulative counters: faster tiers serve more
                yield (ts, s["name"], int(fill), s["capacity_bytes"], (3 - rank) * k, k // 2)

    conn.executemany(
        "INSERT INTO samples (ts, tier, used_bytes, capacity_bytes, hits, misses) VALUES (?, ?, ?, ?, ?, ?)", gen()
    )


def _write_commands(conn, rows, now) -> None:
    if not rows:
        return
    cur = conn.execute(
        "INSERT INTO commands (created_at, actor, verb, context_id, args_json, status, result, finished_at)"
        " VALUES (?, 'operator', 'pin', ?, '{\"tier\": \"cpu\"}', 'done', '{\"message\": \"pinned\"}', ?)",
        (now - 300, rows[0]["id"], now - 299.9),
    )
    conn.execute(
        "INSERT INTO events (ts, context_id, kind, to_tier, reason, actor, command_id)"
        " VALUES (?, ?, 'command', 'cpu', 'pin done: pinned', 'operator', ?)",
        (now - 299.9, rows[0]["id"], cur.lastrowid),
    )
