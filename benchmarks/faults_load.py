"""Load: operator processes queuing commands against a manager process serving a replay,
with `evicctl history --follow` held open and the WAL's size sampled throughout.

    manager process:  N contexts stored (disk + cpu), then a replay loop of lookups and stores
    operators:        P processes x C mixed commands (pin, unpin, evict, recompress, promote,
                      some on unknown ids) through ControlClient, each submit + wait timed
    reader:           `evicctl history --follow` in a subprocess for the whole run
"""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ (never the checkout root: -P)

from faults_common import MENU, Figure, make_kv  # noqa: E402
from faults_scale import build, scale_config  # noqa: E402

HERE = Path(__file__).resolve()


def serve(root: Path, contexts: int) -> None:
    """The manager process: `contexts` built (faults_scale.build: the build is not what is
    measured), then a manager with the cpu tier added starts on them and replays lookups and
    stores until killed."""
    import psutil

    from evicctl.manager.manager import Manager

    build_s = build(root, contexts)
    t0 = time.perf_counter()
    with Manager(load_config(root, contexts), probe=False) as manager:
        start_s = time.perf_counter() - t0
        print(json.dumps({"ready": build_s, "start_s": start_s, "rss_bytes": psutil.Process().memory_info().rss}),
              flush=True)  # fmt: skip
        rng = random.Random(0)
        while True:  # the replay: Zipf-ish reuse of the stored contexts, some new ones
            n = int(contexts * rng.random() ** 3)
            if manager.lookup(f"ctx-{n}", device="cpu") is None:
                manager.store(f"ctx-{n}", make_kv(n))
            time.sleep(0.002)


def load_config(root: Path, contexts: int):
    return scale_config(root, contexts)


def restart_time(root: Path, contexts: int) -> tuple[float, int, int]:
    """A restart on what the killed manager left: (seconds, contexts known, disk copies adopted)."""
    from evicctl.manager.manager import Manager

    t0 = time.perf_counter()
    manager = Manager(load_config(root, contexts), probe=False)
    seconds = time.perf_counter() - t0
    try:
        ids = manager.context_ids()
        on_disk = sum(1 for c in ids if (p := manager.placement(c)) is not None and p.tier == "disk")
    finally:
        manager.close()
    return seconds, len(ids), on_disk


def operate(db: Path, contexts: int, commands: int, seed: int, deadline: float = float("inf")) -> None:
    """One operator process: `commands` mixed commands, each submitted and waited for; none
    started after `deadline` (wall clock), so a run too slow for its time still reports."""
    from evicctl.control import ControlClient
    from evicctl.errors import EvicctlError

    rng = random.Random(seed)
    latencies_s, outcomes, locked, unanswered = [], {}, 0, 0
    with ControlClient(db) as client:
        for i in range(commands):
            if time.time() > deadline:
                break
            if i and i % 100 == 0:
                print(f"[op{seed}] {i} commands", file=sys.stderr, flush=True)
            verb = rng.choice(("pin", "unpin", "evict", "recompress", "promote"))
            cid = f"ctx-{rng.randrange(contexts)}" if rng.random() > 0.05 else f"nope-{rng.random()}"
            args = {"pin": {"tier": "disk"}, "evict": {"to": "disk"},
                    "recompress": {"codec": rng.choice(MENU[1:]), "force": True}}.get(verb, {})  # fmt: skip
            t0 = time.perf_counter()
            try:
                outcome = client.wait(client.submit(verb, cid, args, actor=f"op{seed}"), timeout_s=60)
                outcomes[outcome.status] = outcomes.get(outcome.status, 0) + 1
            except EvicctlError as exc:
                locked += "locked" in str(exc)
                unanswered += "timed out" in str(exc)
                outcomes["error"] = outcomes.get("error", 0) + 1
            latencies_s.append(time.perf_counter() - t0)
    print(json.dumps({"latencies_s": latencies_s, "outcomes": outcomes, "locked": locked, "unanswered": unanswered}))


def wal_bytes(db: Path) -> int:
    wal = Path(str(db) + "-wal")
    return wal.stat().st_size if wal.exists() else 0


def run_load(root: Path, contexts: int = 10_000, operators: int = 8, commands: int = 1000,
             deadline_s: float = float("inf")) -> tuple[Figure, Figure, list[str]]:  # fmt: skip
    """`deadline_s`: no command is started that long after the operators start (the figure then
    says how many were issued)."""
    figure = Figure("load: concurrent operators", f"{operators} processes x {commands:,} commands, {contexts:,}-context replay")
    wal = Figure("WAL with a long reader", "`evicctl history --follow` open for the whole load run")
    problems: list[str] = []
    db = root / "evicctl.db"
    manager = subprocess.Popen([sys.executable, "-P", str(HERE), "serve", str(root), str(contexts)],
                               stdout=subprocess.PIPE, text=True)  # fmt: skip
    ready = json.loads(manager.stdout.readline())
    follow = subprocess.Popen([sys.executable, "-P", "-m", "evicctl.cli", "history", "--follow", "--db", str(db),
                               "-o", "jsonl"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.time() + deadline_s
    ops = [subprocess.Popen([sys.executable, "-P", str(HERE), "operate", str(db), str(contexts), str(commands), str(k),
                             str(deadline)], stdout=subprocess.PIPE, text=True) for k in range(operators)]  # fmt: skip
    t0, samples = time.monotonic(), []
    while any(p.poll() is None for p in ops):
        samples.append((time.monotonic() - t0, wal_bytes(db)))
        time.sleep(1.0)
    load_s = time.monotonic() - t0
    results = [json.loads(p.stdout.read() or "{}") for p in ops]
    # Lost, as the database sees it: an operator's command row never answered.
    conn = sqlite3.connect(db, timeout=60)
    try:
        rows = dict(conn.execute("SELECT status, COUNT(*) FROM commands WHERE actor LIKE 'op%' GROUP BY status").fetchall())
    finally:
        conn.close()
    follow.kill()
    manager.kill()
    manager.wait()
    follow_err = follow.stderr.read().decode()
    restart_s, known, adopted = restart_time(root, contexts)  # after kill -9 of the loaded manager
    figure.recovery_s.append(restart_s)
    latencies = sorted(x for r in results for x in r.get("latencies_s", []))
    outcomes: dict[str, int] = {}
    for r in results:
        for k, v in r.get("outcomes", {}).items():
            outcomes[k] = outcomes.get(k, 0) + v
    locked = sum(r.get("locked", 0) for r in results)
    unanswered = sum(r.get("unanswered", 0) for r in results)
    pending = rows.get("pending", 0) + rows.get("running", 0)
    figure.count = len(latencies)
    figure.lost = unanswered + pending + (len(latencies) - sum(rows.values()))  # a submit that left no row is lost too
    if len(latencies) < operators * commands:
        figure.injected = (f"{operators} processes x {commands:,} commands, {contexts:,}-context replay; "
                           f"{len(latencies):,} issued before the {deadline_s:.0f} s deadline")  # fmt: skip
    if locked:
        problems.append(f"{locked} 'database is locked' errors surfaced to operators")
    if figure.lost:
        problems.append(f"{figure.lost} commands lost: {unanswered} timed out, {pending} left pending/running, rows {rows}")
    if "Traceback" in follow_err or "locked" in follow_err:
        problems.append(f"history --follow: {follow_err[-300:]}")
    p50, p99 = (latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]) if latencies else (0, 0)
    figure.notes += [f"command latency p50 {p50 * 1e3:.0f} ms, p99 {p99 * 1e3:.0f} ms, max {latencies[-1] * 1e3:.0f} ms"
                     if latencies else "no commands", f"outcomes {outcomes}; rows {rows}; 'database is locked' surfaced: {locked}",
                     f"{len(latencies) / load_s:.1f} commands/s over {load_s:.0f} s",
                     f"{contexts:,} contexts built in {ready['ready']:.0f} s; serving manager started on them in "
                     f"{ready['start_s']:.1f} s, RSS {ready['rss_bytes'] / 2**20:.0f} MiB",
                     f"restart after kill -9: {known:,} contexts known, {adopted:,} disk copies adopted and verified "
                     f"in {restart_s:.1f} s"]  # fmt: skip
    wal.count = len(samples)
    peak = max((b for _, b in samples), default=0)
    last = samples[-1][1] if samples else 0
    wal.notes.append(f"WAL bytes over {samples[-1][0] if samples else 0:.0f} s: peak {peak / 2**20:.1f} MiB, "
                     f"last {last / 2**20:.1f} MiB; by 60 s: {[round(b / 2**20, 1) for t, b in samples[::60]]}")  # fmt: skip
    return figure, wal, problems


def pinned_reader_wal(root: Path, seconds: float = 20.0) -> tuple[Figure, list[str]]:
    """The worst reader: one read transaction held open while the crash worker's workload writes
    (no kills). SQLite cannot checkpoint past an open snapshot: the WAL grows until it closes."""
    figure = Figure("WAL with a reader holding one transaction", f"BEGIN + SELECT held {seconds:.0f} s under load")
    worker = subprocess.Popen([sys.executable, "-P", str(HERE.parent / "faults_worker.py"), str(root), "--seed", "3"],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    worker.stdout.readline()
    db = root / "evicctl.db"
    reader = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM events").fetchone()
    held, t0 = [], time.monotonic()
    while time.monotonic() - t0 < seconds:
        time.sleep(1.0)
        held.append(wal_bytes(db))
    reader.execute("COMMIT")
    reader.close()
    time.sleep(3.0)
    after = wal_bytes(db)
    worker.kill()
    worker.wait()
    figure.count = len(held)
    figure.notes.append(f"WAL while held: {held[0] / 2**20:.2f} -> {held[-1] / 2**20:.2f} MiB; 3 s after release "
                        f"{after / 2**20:.2f} MiB (the file is reused from its start, not shrunk)")  # fmt: skip
    return figure, []


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(Path(sys.argv[2]), int(sys.argv[3]))
    elif sys.argv[1] == "operate":
        operate(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]))
