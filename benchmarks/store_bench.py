"""Store, CLI and control-channel throughput and latency (issue: foundation).

    .venv/bin/python benchmarks/store_bench.py [--contexts 100000] [--round-trips 200]

1. events/s through the manager's batched tick (`Store.flush`), against one transaction
   per event in the same run (goal >= 50,000/s);
2. `evicctl ls -o json` over 100,000 contexts, the real CLI in a subprocess (goal <= 1 s),
   against building the same JSON from Python objects in-process;
3. command round trip pin -> done, p50/p99, while another process writes events
   (goal p99 <= 250 ms), against the same with an idle writer.
4. `Manager.store()` of a new context into a manager holding --contexts contexts (goal p99
   <= 5 ms): incremental admission with the control thread re-planning in the background,
   against the full re-plan inside every store() in the same run; wall time and the calling
   thread's CPU time, and whether the placement after the background re-plan is a full
   re-plan's. `--only admission` runs this section alone.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from evicctl.store.database import Store  # noqa: E402

EVICCTL = [sys.executable, "-m", "evicctl.cli"]


# ---- 1. batched events ---------------------------------------------------------------------
def _tick(store: Store, k: int, events: int) -> None:
    """One manager tick: events, the contexts they touch, a placement change, a sample."""
    batch = store.batch()
    for j in range(events):
        cid = f"ctx-{(k * events + j) % 5000:05d}"
        batch.event(kind="move", context_id=cid, from_tier="cpu", to_tier="disk", from_codec="none",
                    to_codec="int8", bytes=1 << 20, utility_before=0.5, utility_after=0.4, reason="capacity")
        if j % 10 == 0:
            batch.upsert("contexts", {"id": cid, "hits": k, "freq": 0.5, "last_access_at": time.time()})
    batch.sample(tier="cpu", used_bytes=k, capacity_bytes=1 << 30, hits=k, misses=k)
    store.flush(batch)


def bench_events(tmp: Path, total: int = 200_000, per_tick: int = 2000, baseline_n: int = 3000) -> dict:
    path = tmp / "events.db"
    with Store.open(path) as store:
        seed = store.batch()
        for i in range(5000):
            seed.upsert("contexts", {"id": f"ctx-{i:05d}", "tokens": 1024, "raw_bytes": 1 << 24,
                                     "created_at": 0.0, "last_access_at": 0.0})
        store.flush(seed)
        t0, c0 = time.perf_counter(), time.process_time()
        for k in range(total // per_tick):
            _tick(store, k, per_tick)
        batched_s, batched_cpu_s = time.perf_counter() - t0, time.process_time() - c0
        # baseline: what a naive writer does, one transaction (one commit) per event
        t0, c0 = time.perf_counter(), time.process_time()
        for j in range(baseline_n):
            with store.transaction() as conn:
                conn.execute(
                    "INSERT INTO events (ts, context_id, kind, from_tier, to_tier, reason, actor)"
                    " VALUES (?, ?, 'move', 'cpu', 'disk', 'capacity', 'policy')",
                    (time.time(), f"ctx-{j % 5000:05d}"),
                )
        single_s, single_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    return {"batched_eps": total / batched_s, "single_eps": baseline_n / single_s, "per_tick": per_tick,
            "batched_cpu_eps": total / batched_cpu_s, "single_cpu_eps": baseline_n / single_cpu_s}


# ---- 2. ls -o json over 100k contexts -------------------------------------------------------
def bench_ls(tmp: Path, contexts: int, runs: int = 5) -> dict:
    from evicctl.store.synthetic import make_fixture_db

    path = tmp / "ls.db"
    t0 = time.perf_counter()
    make_fixture_db(path, contexts, seed=0, events_per_context=1, sample_seconds=60, capacity_scale=contexts / 50)
    build_s = time.perf_counter() - t0
    cmd = [*EVICCTL, "ls", "-o", "json", "--db", str(path)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert len(json.loads(out)) == contexts
    walls, cpus = [], []
    for _ in range(runs):
        wall_s, cpu_s = _wall_cpu(cmd)
        walls.append(wall_s)
        cpus.append(cpu_s)
    startup = min(_wall_cpu([*EVICCTL, "ls", "--db", str(tmp / "absent.db")], check=False) for _ in range(3))
    # baseline: the same JSON built from Python objects (read_contexts + json.dumps), in-process
    from evicctl.snapshot.read import CONTEXT_FIELDS, read_contexts

    base = []
    with Store.open(path, readonly=True) as store:
        for _ in range(3):
            t0, c0 = time.perf_counter(), time.process_time()
            rows, _ = read_contexts(store)
            text = json.dumps([{f: getattr(r, f) for f in CONTEXT_FIELDS} for r in rows])
            base.append((time.perf_counter() - t0, time.process_time() - c0))
    assert len(text) > 0
    return {"contexts": contexts, "build_s": build_s, "cli_s": statistics.median(walls), "cli_min_s": min(walls),
            "cli_cpu_s": statistics.median(cpus), "startup_s": startup[0], "startup_cpu_s": startup[1],
            "python_json_s": statistics.median(b[0] for b in base),
            "python_json_cpu_s": statistics.median(b[1] for b in base), "bytes": len(out)}


def _wall_cpu(cmd: list[str], check: bool = True) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system) of a child process."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=check)
    wall_s = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall_s, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


# ---- 3. command round trip while a writer is busy ----------------------------------------
def run_writer(db: str, seconds: float, events_per_s: int) -> None:
    """A separate process standing in for a busy manager tick (role: writer)."""
    ticks_per_s = 20
    with Store.open(db) as store:
        end = time.monotonic() + seconds
        k = 0
        while time.monotonic() < end:
            t0 = time.monotonic()
            _tick(store, k, events_per_s // ticks_per_s)
            k += 1
            time.sleep(max(0.0, 1 / ticks_per_s - (time.monotonic() - t0)))


def run_manager(db: str, seconds: float, tick_s: float) -> None:
    """The control loop as the manager runs it: heartbeat + poll every tick (role: manager)."""
    from evicctl.control import ControlServer

    with Store.open(db) as store:
        server = ControlServer(store, "bench", {"heartbeat_timeout_s": 5.0, "tick_s": tick_s})

        def handle(command) -> dict:
            batch = store.batch()
            batch.upsert("contexts", {"id": command.context_id, "pin_tier": command.args.get("tier")})
            batch.event(kind="pin", context_id=command.context_id, to_tier=command.args.get("tier"),
                        reason="operator", actor=command.actor, command_id=command.id)
            return {"message": "pinned", "event_ids": store.flush(batch)}

        end = time.monotonic() + seconds
        beat = 0.0
        while time.monotonic() < end:
            if time.monotonic() - beat > 0.5:
                server.heartbeat()
                beat = time.monotonic()
            server.poll(handle)
            time.sleep(tick_s)
        server.stop()


def _spawn(role: str, db: Path, seconds: float, extra: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--role", role, "--db", str(db), "--seconds", str(seconds), *extra])


def _round_trips(db: Path, n: int) -> list[float]:
    from evicctl.control import ControlClient

    out = []
    with ControlClient(db) as client:
        deadline = time.monotonic() + 30
        while not client.manager_alive().alive:
            if time.monotonic() > deadline:
                raise RuntimeError("bench manager did not start")
            time.sleep(0.05)
        for i in range(n):
            t0 = time.perf_counter()
            outcome = client.wait(client.submit("pin", f"ctx-{i % 100:05d}", {"tier": "cpu"}), timeout_s=10)
            out.append(time.perf_counter() - t0)
            assert outcome.status == "done", outcome
            time.sleep(0.01)
    return out


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def bench_round_trip(tmp: Path, n: int, writer_eps: int, tick_s: float = 0.05) -> dict:
    from evicctl.store.synthetic import make_fixture_db

    results = {}
    for label, eps in (("idle", 0), ("busy", writer_eps)):
        db = tmp / f"rt-{label}.db"
        make_fixture_db(db, 200, seed=1, manager="none")
        seconds = 20 + n * 0.1
        procs = [_spawn("manager", db, seconds, ["--tick-s", str(tick_s)])]
        if eps:
            procs.append(_spawn("writer", db, seconds, ["--events-per-s", str(eps)]))
        try:
            lat = _round_trips(db, n)
            if eps:
                with Store.open(db, readonly=True) as store:
                    written = store.query("SELECT COUNT(*) AS n FROM events WHERE kind = 'move'")[0]["n"]
                results["writer_events"] = written
        finally:
            for p in procs:
                p.terminate()
                p.wait(timeout=10)
        results[label] = {"p50": _percentile(lat, 0.5), "p99": _percentile(lat, 0.99), "max": max(lat)}
    # end to end through the real CLI (process start included), against the idle manager's db
    db = tmp / "rt-cli.db"
    make_fixture_db(db, 50, seed=1, manager="none")
    procs = [_spawn("manager", db, 60, ["--tick-s", str(tick_s)]), _spawn("writer", db, 60, ["--events-per-s", str(writer_eps)])]
    try:
        time.sleep(1.5)
        walls = [_wall_cpu([*EVICCTL, "pin", "ctx-00001", "--tier", "cpu", "--db", str(db)])[0] for _ in range(5)]
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)
    results["cli_s"] = statistics.median(walls)
    results["tick_s"] = tick_s
    return results


# ---- 4. Manager.store() at --contexts contexts ------------------------------------------
ADMIT_SHAPE = (2, 2, 16, 2)  # layers, kv heads, head dim, fp16: small KV, many contexts
ADMIT_WINDOW = 4  # window queries per head (snapkv's scorer reads them)


def _admit_kv(tokens: int, seed: int):
    import torch

    from evicctl.manager.kv import KV

    layers, heads, dim, _ = ADMIT_SHAPE
    g = torch.Generator().manual_seed(seed)
    keys = [torch.randn(1, heads, tokens, dim, generator=g).half() for _ in range(layers)]
    queries = torch.randn(layers, heads, ADMIT_WINDOW, dim, generator=g).half()
    return KV.full(keys, [k.clone() for k in keys], queries)


def seeded_manager(root: Path, contexts: int, seed: int = 0):
    """A manager holding `contexts` contexts (the default codec menu, profiled), placed by one
    cold plan: cpu holds 5% of their raw bytes, a slower in-memory tier 30%, the rest dropped.
    Tiers are in memory and every context of one size shares one encoded copy per codec, so
    100,000 contexts seed in seconds; the manager sees ordinary contexts."""
    import numpy as np

    from evicctl.config import DEFAULT_CODECS, ManagerConfig
    from evicctl.manager.codecs.codec import get_codec
    from evicctl.manager.kv import raw_kv_bytes
    from evicctl.manager.manager import Manager
    from evicctl.manager.placer.place import place
    from evicctl.manager.placer.pricing import codec_sizes, price_problem
    from evicctl.manager.state import ContextState, tier_key
    from evicctl.manager.tiers.tier import CpuTier, Entry

    rng = np.random.default_rng(seed)
    layers, heads, dim, dtype_bytes = ADMIT_SHAPE
    shape = (layers, heads, dim, dtype_bytes, layers * heads * ADMIT_WINDOW * dim)
    token_choices = (16, 32, 64, 128)
    kvs = {t: _admit_kv(t, t) for t in token_choices}
    sizes = {t: codec_sizes(DEFAULT_CODECS, t, shape, raw_kv_bytes(t, *shape[:4])) for t in token_choices}
    tokens = rng.choice(token_choices, contexts).tolist()
    total = sum(sizes[t]["none"] for t in tokens)
    fast = CpuTier(capacity_bytes=int(total * 0.05), name="cpu", rank=0, pin=False)
    slow = CpuTier(capacity_bytes=int(total * 0.3), name="slow", rank=1, pin=False)
    fast.read_bps, slow.read_bps = 8e9, 1e9
    config = ManagerConfig(db_path=root / "evicctl.db", cache_dir=root / "cache")  # a timer re-plan every 2 s
    m = Manager(config, probe=False, tiers=[fast, slow])
    m.rt.kv_shape = dict(zip(("layers", "kv_heads", "head_dim", "dtype_bytes", "window_numel"), shape, strict=True))
    profiles = [{c: (float(q), 0.02, "teacher-forced") for c, q in zip(DEFAULT_CODECS[1:], rng.uniform(0.8, 1.0, len(DEFAULT_CODECS) - 1), strict=True)}
                for _ in range(64)]  # fmt: skip
    rates = 10.0 / np.arange(1, contexts + 1) ** 1.1  # Zipf-like popularity
    rng.shuffle(rates)
    now = time.time()
    states = []
    for i, t in enumerate(tokens):
        ctx = ContextState(f"ctx-{i:06d}", t, raw_kv_bytes(t, *shape[:4]), created_at=now, shape=shape)
        ctx.set_sizes(dict(sizes[t]))
        ctx.profiles = dict(profiles[i % len(profiles)])
        ctx.miss_s = 0.05 + t * 1e-3
        states.append(ctx)
        m.rt.freq.set(ctx.id, float(rates[i]), now)
    problem = price_problem(states, m.rt.freq.rates([s.id for s in states], now), codecs=m.codec_names, tiers=m.tiers,
                            cost_model=m._pricing_model(), alpha=config.alpha, query_tokens=32.0,
                            floor_of=m.quality_floor_of)  # fmt: skip
    plan = place(problem)
    encoded = {}
    for i, ctx in enumerate(states):
        tier_name, codec = plan.option_of(i)
        if codec is not None:
            stored = encoded.get((ctx.tokens, codec))
            if stored is None:
                stored = encoded[(ctx.tokens, codec)] = get_codec(codec).encode(kvs[ctx.tokens])
            tier, key = m.rt.tier_by_name[tier_name], tier_key(ctx.id, codec)
            tier._held[key], tier._entries[key] = stored, Entry(stored.nbytes)  # shared, not copied
            ctx.tier, ctx.codec, ctx.key, ctx.stored_bytes, ctx.since = tier_name, codec, key, stored.nbytes, now
        m.rt.contexts[ctx.id] = ctx
    m.rt.recount_placed()
    m.rt.dirty.update(m.rt.contexts)
    return m, kvs


def _timed_stores(m, kvs, prefix: str, n: int, gap_s: float) -> tuple[list[float], list[float]]:
    """Wall and calling-thread CPU seconds of n store() calls of new contexts, gap_s apart."""
    walls, cpus = [], []
    for j in range(n):
        kv = kvs[(16, 32, 64, 128)[j % 4]]
        w, c = time.perf_counter(), time.thread_time()
        m.store(f"{prefix}-{j:05d}", kv, prefill_s=0.1)
        cpus.append(time.thread_time() - c)
        walls.append(time.perf_counter() - w)
        time.sleep(gap_s)
    return walls, cpus


def bench_admission(tmp: Path, contexts: int, stores: int, baseline_stores: int, gap_s: float) -> dict:
    import gc

    t0 = time.perf_counter()
    m, kvs = seeded_manager(tmp / "admission", contexts)
    m.tick()  # the first plan (after a start: cold pricing caches) and its state write
    first_plan_s = time.perf_counter() - t0
    out = {"contexts": contexts, "seed_and_first_tick_s": first_plan_s}
    try:
        m.rt.replan_needed = True
        t0 = time.perf_counter()
        m.tick()
        out["replan_tick_s"] = time.perf_counter() - t0
        m.admit_incrementally = False  # baseline: every store() re-plans everyone
        out["full"] = _timed_stores(m, kvs, "full", baseline_stores, 0.0)
        m.admit_incrementally = True
        m.rt.replan_needed = True
        m.tick()
        plans = []
        plan = m.plan
        m.plan = lambda **kw: plans.append(time.perf_counter()) or plan(**kw)
        collected, started = [], []

        def on_gc(phase, info) -> None:  # full collections stop every thread: count and time them
            if phase == "start":
                started.append(time.perf_counter())
            elif started:
                collected.append((info["generation"], time.perf_counter() - started.pop()))

        gc.callbacks.append(on_gc)
        m.start()
        out["incremental"] = _timed_stores(m, kvs, "inc", stores, gap_s)
        gc.collect()
        gc.freeze()  # what a process holding 100,000 long-lived contexts can do: full collections skip them
        out["incremental_frozen"] = _timed_stores(m, kvs, "frozen", stores, gap_s)
        gc.unfreeze()
        m.stop()
        out["background_plans"] = len(plans)
        admitted = [m.rt.contexts[f"{k}-{j:05d}"].tier for k in ("inc", "frozen") for j in range(stores)]
        out["admitted_to"] = {t: admitted.count(t) for t in sorted(set(admitted))}
        gc.callbacks.remove(on_gc)
        out["gc_full"] = sum(1 for g, _ in collected if g == 2)
        out["gc_max_s"] = max((d for _, d in collected), default=0.0)
        m.rt.replan_needed = True
        m.tick()  # the background re-plan after the last admission
        after = plan()
        out["replan_moves_after"] = len(after)
        ids = after.problem.context_ids.tolist()
        out["equal_to_full_replan"] = all(
            after.option_of(i) == (m.rt.contexts[cid].tier, m.rt.contexts[cid].codec if m.rt.contexts[cid].stored else None)
            for i, cid in enumerate(ids)
        )  # fmt: skip
        placed = dict(m.rt.placed_bytes)
        m.rt.recount_placed()
        out["placed_count_exact"] = placed == m.rt.placed_bytes
    finally:
        m.close()
    return out


def _pct(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q * 100))


def admission_table(ad: dict):
    from rich.table import Table

    from evicctl.config import DEFAULT_CODECS

    table = Table(title=f"Manager.store() of a new context, {ad['contexts']:,} contexts held "
                        f"({len(DEFAULT_CODECS)}-codec menu, 2 tiers)")
    for col in ("store() path", "calls", "wall p50 ms", "wall p99 ms", "CPU p50 ms", "CPU p99 ms", "goal"):
        table.add_column(col, justify="right" if col != "store() path" else "left")
    for name, key, goal in (("full re-plan inside store() (before, same run)", "full", ""),
                            ("incremental admission, background re-plans", "incremental", "p99 <= 5 ms"),
                            ("  same, gc.freeze() after start (full collections skip the contexts)",
                             "incremental_frozen", "")):  # fmt: skip
        walls, cpus = ad[key]
        table.add_row(name, str(len(walls)), f"{_pct(walls, 0.5) * 1e3:.2f}", f"{_pct(walls, 0.99) * 1e3:.2f}",
                      f"{_pct(cpus, 0.5) * 1e3:.2f}", f"{_pct(cpus, 0.99) * 1e3:.2f}", goal)  # fmt: skip
    full, inc = _pct(ad["full"][0], 0.99), _pct(ad["incremental"][0], 0.99)
    table.add_row("ratio (full / incremental), wall p99", "", "", f"{full / inc:.0f}x", "", "", "")
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", type=int, default=100_000)
    ap.add_argument("--round-trips", type=int, default=200)
    ap.add_argument("--writer-events-per-s", type=int, default=10_000)
    ap.add_argument("--role", choices=("writer", "manager"))
    ap.add_argument("--db")
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--events-per-s", type=int, default=10_000)
    ap.add_argument("--tick-s", type=float, default=0.05)
    ap.add_argument("--only", choices=("admission",), help="run one section alone")
    ap.add_argument("--stores", type=int, default=300, help="incremental store() calls timed (section 4)")
    ap.add_argument("--baseline-stores", type=int, default=10, help="full re-plan store() calls timed (section 4)")
    ap.add_argument("--store-gap-ms", type=float, default=20.0, help="pause between timed store() calls")
    args = ap.parse_args()
    if args.role == "writer":
        return run_writer(args.db, args.seconds, args.events_per_s)
    if args.role == "manager":
        return run_manager(args.db, args.seconds, args.tick_s)

    from rich.console import Console
    from rich.table import Table

    tmp = Path(tempfile.mkdtemp(prefix="evicctl-bench-"))
    if args.only == "admission":
        try:
            ad = bench_admission(tmp, args.contexts, args.stores, args.baseline_stores, args.store_gap_ms / 1e3)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        console = Console(width=160)
        console.print(admission_table(ad))
        console.print(
            f"seed + first plan {ad['seed_and_first_tick_s']:.1f} s; a re-plan tick {ad['replan_tick_s']:.2f} s; "
            f"{ad['background_plans']} background plans and {ad['gc_full']} full garbage collections (longest "
            f"collection {ad['gc_max_s'] * 1e3:.0f} ms) during the "
            f"incremental stores ({args.store_gap_ms:g} ms apart); after the last background re-plan a full re-plan "
            f"moves {ad['replan_moves_after']} contexts, placement equal to it: {ad['equal_to_full_replan']}; "
            f"placed-bytes count exact: {ad['placed_count_exact']}; the stored contexts' tiers then: {ad['admitted_to']}"
        )
        return
    try:
        ev = bench_events(tmp)
        ls = bench_ls(tmp, args.contexts)
        rt = bench_round_trip(tmp, args.round_trips, args.writer_events_per_s)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    table = Table(title="evicctl store / CLI / control channel")
    for col in ("measure", "result", "goal", "baseline (same run)", "ratio"):
        table.add_column(col, justify="right" if col != "measure" else "left")
    table.add_row(f"events/s, batched tick ({ev['per_tick']:,} events/flush), wall", f"{ev['batched_eps']:,.0f}",
                  ">= 50,000", f"{ev['single_eps']:,.0f} (1 txn/event)", f"{ev['batched_eps'] / ev['single_eps']:.0f}x")
    table.add_row("  same, per CPU second of the writer", f"{ev['batched_cpu_eps']:,.0f}", "",
                  f"{ev['single_cpu_eps']:,.0f}", f"{ev['batched_cpu_eps'] / ev['single_cpu_eps']:.0f}x")
    table.add_row(f"evicctl ls -o json, {ls['contexts']:,} contexts (subprocess, median wall)", f"{ls['cli_s']:.2f} s",
                  "<= 1 s", f"{ls['python_json_s']:.2f} s (Python objects + json.dumps, in-process)",
                  f"{ls['python_json_s'] / ls['cli_s']:.2f}x")
    table.add_row("  same, CPU seconds (user + sys)", f"{ls['cli_cpu_s']:.2f} s", "",
                  f"{ls['python_json_cpu_s']:.2f} s", f"{ls['python_json_cpu_s'] / ls['cli_cpu_s']:.2f}x")
    table.add_row("  of which interpreter + CLI start (wall / CPU)", f"{ls['startup_s']:.2f} / {ls['startup_cpu_s']:.2f} s",
                  "", "", "")
    table.add_row(f"pin -> done p50, writer {args.writer_events_per_s:,} ev/s", f"{rt['busy']['p50'] * 1e3:.0f} ms", "",
                  f"{rt['idle']['p50'] * 1e3:.0f} ms (idle writer)", f"{rt['busy']['p50'] / rt['idle']['p50']:.2f}x")
    table.add_row(f"pin -> done p99, writer {args.writer_events_per_s:,} ev/s", f"{rt['busy']['p99'] * 1e3:.0f} ms",
                  "<= 250 ms", f"{rt['idle']['p99'] * 1e3:.0f} ms (idle writer)", f"{rt['busy']['p99'] / rt['idle']['p99']:.2f}x")
    table.add_row("evicctl pin end to end (subprocess, busy writer, median)", f"{rt['cli_s']:.2f} s", "", "", "")
    console = Console()
    console.print(table)
    console.print(f"manager tick {rt['tick_s'] * 1e3:.0f} ms; {args.round_trips} round trips; busy writer wrote "
                  f"{rt.get('writer_events', 0):,} events during them; fixture build {ls['build_s']:.1f} s; "
                  f"ls output {ls['bytes'] / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
