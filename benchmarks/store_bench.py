"""Store, CLI and control-channel throughput and latency (issue: foundation).

    .venv/bin/python benchmarks/store_bench.py [--contexts 100000] [--round-trips 200]

1. events/s through the manager's batched tick (`Store.flush`), against one transaction
   per event in the same run (goal >= 50,000/s);
2. `evicctl ls -o json` over 100,000 contexts, the real CLI in a subprocess (goal <= 1 s),
   against building the same JSON from Python objects in-process;
3. command round trip pin -> done, p50/p99, while another process writes events
   (goal p99 <= 250 ms), against the same with an idle writer.
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
    from fixtures import make_fixture_db

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
    from fixtures import make_fixture_db

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
    args = ap.parse_args()
    if args.role == "writer":
        return run_writer(args.db, args.seconds, args.events_per_s)
    if args.role == "manager":
        return run_manager(args.db, args.seconds, args.tick_s)

    from rich.console import Console
    from rich.table import Table

    tmp = Path(tempfile.mkdtemp(prefix="evicctl-bench-"))
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
