"""Scale: a manager's state at 10,000 and 100,000 contexts, its time to recover from kill -9
there, and its memory.

Building the state. `Manager.store` plans every stored context on each store (and the control
thread plans again when a store overflows the cpu tier), so storing N contexts one by one costs
O(N^2): 10,000 take minutes on 2 cores, 100,000 would take hours. So:

- `build`: N contexts stored through `Manager.store` in a manager whose only tier is the disk
  tier (no overflow, no demotions), then closed: every context has a verified file on disk.
  The serving manager then starts on it with the cpu tier added (the restart path adopts them).
- `clone`: for 100,000, a built state of `template` contexts is copied with plain sqlite3 and
  file copies (ctx-k's rows and file become ctx-(k + j*template)'s), so the manager that starts
  on it adopts and verifies 100,000 real files; only their contents repeat.

Modes (run as `python -P faults_scale.py MODE ...`): `restart ROOT N` times one restart on
what a killed manager left and prints it as JSON; `serve ROOT N SECONDS` starts a manager on
a built state and replays lookups (and stores of new contexts) for SECONDS, printing RSS.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(
    0, str(Path(__file__).resolve().parent)
)  # benchmarks/ (never the checkout root: -P)

from faults_common import Figure, committed_state, integrity_ok, make_config, make_kv  # noqa: E402

HERE = Path(__file__).resolve()


def scale_config(root: Path, contexts: int):
    """The serving manager: cpu holds a tenth, disk twice the contexts; slow re-plans."""
    return make_config(root, cpu_contexts=contexts // 10, disk_contexts=contexts * 2, replan_s=5.0,
                       rebalance_min_residence_s=30.0)  # fmt: skip


def build(root: Path, contexts: int, *, progress: bool = True) -> float:
    """Store ctx-0 .. ctx-(contexts-1) through Manager.store, disk tier only; returns seconds.
    fsync is skipped while building: the build is not what is measured."""
    from evicctl.manager.manager import Manager

    config = scale_config(root, contexts)
    disk_only = dataclasses.replace(
        config, tiers=tuple(t for t in config.tiers if t.name == "disk")
    )
    real_fsync, os.fsync = os.fsync, lambda fd: None
    t0 = time.perf_counter()
    try:
        with Manager(disk_only, probe=False) as manager:
            for n in range(contexts):
                manager.store(f"ctx-{n}", make_kv(n))
                if progress and (n + 1) % 1000 == 0:  # stderr: the log, never a protocol line
                    print(
                        f"[build] {n + 1:,} stored, {time.perf_counter() - t0:.0f} s",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        os.fsync = real_fsync
    os.sync()
    return time.perf_counter() - t0


def clone(root: Path, template: int, contexts: int) -> float:
    """Grow a built state of `template` contexts to `contexts`; returns seconds."""
    t0 = time.perf_counter()
    conn = sqlite3.connect(root / "evicctl.db", timeout=30)
    try:
        tables = {}
        for table, key in (("contexts", "id"), ("placements", "context_id")):
            cols = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
            rows = {r[cols.index(key)]: list(r) for r in conn.execute(f"SELECT * FROM {table}")}
            tables[table] = (cols, cols.index(key), rows)
        loc_i = tables["placements"][0].index("location")
        with conn:
            for n in range(template, contexts):
                src, new = f"ctx-{n % template}", f"ctx-{n}"
                for table, (cols, key_i, rows) in tables.items():
                    row = list(rows[src])
                    row[key_i] = new
                    if table == "placements":
                        old = Path(row[loc_i])
                        target = old.with_name(new + old.name[len(src) :])  # ctx-5.none.safetensors
                        shutil.copy(old, target)
                        row[loc_i] = str(target)
                    marks = ", ".join("?" * len(cols))
                    conn.execute(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks})", row)
    finally:
        conn.close()
    os.sync()
    return time.perf_counter() - t0


def restart_probe(root: Path, contexts: int) -> dict:
    """One restart on what is there: seconds to a constructed manager (recovery done) and to
    its first hit on a disk copy; which contexts are on disk afterwards (written to a file)."""
    import psutil

    from evicctl.manager.manager import Manager

    t0 = time.perf_counter()
    manager = Manager(scale_config(root, contexts), probe=False)
    restart_s = time.perf_counter() - t0
    try:
        ids = manager.context_ids()
        on_disk = sorted(
            c for c in ids if (p := manager.placement(c)) is not None and p.tier == "disk"
        )
        manager.start()
        hit = manager.lookup(on_disk[len(on_disk) // 2], device="cpu") if on_disk else None
        served_s = time.perf_counter() - t0
        (root / "on_disk.json").write_text(json.dumps(on_disk))
        rss = psutil.Process().memory_info().rss
    finally:
        manager.close()
    return {"restart_s": restart_s, "served_s": served_s, "known": len(ids), "on_disk": len(on_disk),
            "hit": hit is not None and hit.tier == "disk", "rss_bytes": rss}  # fmt: skip


def serve(root: Path, contexts: int, seconds: float) -> None:
    """A manager on a built state, replaying Zipf-like lookups and a few new stores; prints
    one JSON line when ready and one at the end (RSS, lookups and stores with their times)."""
    import psutil

    from evicctl.manager.manager import Manager
    from evicctl.manager.placer.place import DROPPED_TIER

    proc = psutil.Process()
    t0 = time.perf_counter()
    with Manager(scale_config(root, contexts), probe=False) as manager:
        ready_s = time.perf_counter() - t0
        ids = manager.context_ids()
        stored = sum(
            1 for c in ids if (p := manager.placement(c)) is not None and p.tier != DROPPED_TIER
        )
        print(json.dumps({"ready_s": ready_s, "rss_bytes": proc.memory_info().rss, "known": len(ids),
                          "stored": stored}), flush=True)  # fmt: skip
        rng, lookups, hits, stores, store_s, peak = random.Random(0), 0, 0, 0, [], 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            n = int(contexts * rng.random() ** 3)
            lookups += 1
            hits += manager.lookup(f"ctx-{n}", device="cpu") is not None
            if lookups % 200 == 0:  # a new context now and then: what a store costs at this size
                t = time.perf_counter()
                manager.store(f"new-{stores}", make_kv(stores))
                store_s.append(time.perf_counter() - t)
                stores += 1
                peak = max(peak, proc.memory_info().rss)
            time.sleep(0.002)
        rss = proc.memory_info().rss
    print(json.dumps({"rss_bytes": rss, "peak_rss_bytes": max(peak, rss), "lookups": lookups, "hits": hits,
                      "stores": stores, "store_s": store_s}), flush=True)  # fmt: skip


def _json_line(proc: subprocess.Popen) -> dict:
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"process {proc.args[3]} ended before answering (exit {proc.wait()})")
    return json.loads(line)


def recovery_at_scale(
    root: Path, contexts: int, kills: int = 3, seed: int = 0
) -> tuple[Figure, list[str]]:
    """kill -9 of a manager serving a built state of `contexts`, `kills` times, each at a random
    moment of its replay; after each, one timed restart checked against what was committed."""
    figure = Figure(
        f"kill -9 at {contexts:,} contexts", "SIGKILL at a random moment 1-4 s into a replay"
    )
    problems: list[str] = []
    rng = random.Random(seed)
    db = root / "evicctl.db"
    notes = []
    for i in range(kills):
        server = subprocess.Popen([sys.executable, "-P", str(HERE), "serve", str(root), str(contexts), "3600"],
                                  stdout=subprocess.PIPE, text=True)  # fmt: skip
        _json_line(server)
        time.sleep(rng.uniform(1.0, 4.0))
        os.kill(server.pid, signal.SIGKILL)
        server.wait()
        figure.count += 1
        if not integrity_ok(db):
            problems.append(f"kill {i}: integrity_check failed after the kill")
        before = committed_state(db)
        want_disk = {c for c, p in before["placements"].items() if p["tier"] == "disk"}
        t0 = time.perf_counter()
        probe = subprocess.Popen([sys.executable, "-P", str(HERE), "restart", str(root), str(contexts)],
                                 stdout=subprocess.PIPE, text=True)  # fmt: skip
        got = _json_line(probe)
        process_s = time.perf_counter() - t0
        probe.wait()
        on_disk = set(json.loads((root / "on_disk.json").read_text()))
        missing = want_disk - on_disk
        if missing:
            problems.append(
                f"kill {i}: {len(missing)} committed disk copies not adopted, e.g. {sorted(missing)[:3]}"
            )
        if not got["hit"]:
            problems.append(f"kill {i}: the first lookup of a disk copy after the restart missed")
        if not integrity_ok(db):
            problems.append(f"kill {i}: integrity_check failed after the restart")
        figure.lost += len(missing)
        figure.recovery_s.append(got["served_s"])
        notes.append(f"{got['known']:,} known, {got['on_disk']:,} on disk: recovered in {got['restart_s']:.1f} s, "
                     f"first disk hit at {got['served_s']:.1f} s, process start to hit {process_s:.1f} s")  # fmt: skip
    figure.notes += notes[-1:] + [
        f"integrity_check ok {2 * kills - sum('integrity' in p for p in problems)} of {2 * kills}"
    ]
    return figure, problems


def rss_at_scale(
    root: Path, contexts: int, template: int = 1000, seconds: float = 60.0
) -> tuple[Figure, list[str]]:
    """RSS of a manager serving `contexts` (built from `template` stored ones, cloned)."""
    figure = Figure(f"memory at {contexts:,} contexts", f"{template:,} stored, cloned to {contexts:,}; "
                    f"restart, then {seconds:.0f} s of replay")  # fmt: skip
    problems: list[str] = []
    build_s = build(root, template, progress=False)
    clone_s = clone(root, template, contexts)
    server = subprocess.Popen([sys.executable, "-P", str(HERE), "serve", str(root), str(contexts), str(seconds)],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    ready = _json_line(server)
    done = _json_line(server)
    server.wait()
    figure.count = contexts
    figure.recovery_s.append(ready["ready_s"])
    store_s = sorted(done["store_s"]) or [0.0]
    if ready["known"] != contexts or ready["stored"] != contexts:
        problems.append(
            f"after the restart {ready['known']:,} contexts known, {ready['stored']:,} stored; want {contexts:,}"
        )
    if done["hits"] < done["lookups"]:
        problems.append(f"{done['lookups'] - done['hits']} of {done['lookups']} lookups missed")
    figure.lost = done["lookups"] - done["hits"] + contexts - ready["stored"]
    mib = 2**20
    figure.notes += [f"manager RSS {ready['rss_bytes'] / mib:.0f} MiB after the restart, {done['rss_bytes'] / mib:.0f} MiB "
                     f"after the replay (peak seen {done['peak_rss_bytes'] / mib:.0f} MiB)",
                     f"replay: {done['lookups']:,} lookups, {done['hits']:,} hits; {done['stores']} new stores, "
                     f"each {store_s[len(store_s) // 2] * 1e3:.0f} ms (p50)",
                     f"state built in {build_s:.0f} s + cloned in {clone_s:.0f} s"]  # fmt: skip
    return figure, problems


if __name__ == "__main__":
    if sys.argv[1] == "restart":
        print(json.dumps(restart_probe(Path(sys.argv[2]), int(sys.argv[3]))), flush=True)
    elif sys.argv[1] == "serve":
        serve(Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
