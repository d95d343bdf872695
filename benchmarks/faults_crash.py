"""kill -9 of a real manager process, then a restart checked against the harness's own ledger.

One cycle: start faults_worker.py (a Manager under load), kill it with SIGKILL at a random
moment or let it kill itself at a named step, read what the database committed (plain
sqlite3), restart a Manager on the same files in this process and check:

- PRAGMA integrity_check is ok, before and after the restart;
- every context whose committed placement was on disk is still there (same codec and
  checksum) and its copy decodes to *that* context's tensors (recomputed from its seed);
  copies in the cpu tier are gone by design and must each have a recovery event;
- no orphan context file and no temp file is left in the disk folder;
- pins equal what the committed rows and the last answered pin/unpin commands say;
- the restart is recorded (manager row: new pid, started after the kill) and no command is
  left pending or running forever.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ (never the checkout root: -P)

import contextlib

from faults_common import (  # noqa: E402
    Figure,
    committed_state,
    disk_leftovers,
    integrity_ok,
    make_config,
    n_of,
    pin_mismatches,
    same_context,
)
from faults_worker import POINTS  # noqa: E402

WORKER = Path(__file__).resolve().parent / "faults_worker.py"
READY_TIMEOUT_S = 60.0
POINT_TIMEOUT_S = 6.0  # a named point not reached by then: the parent kills at that moment
RANDOM_KILL_S = (0.05, 2.0)  # after the worker is ready


class Worker:
    """A worker process and the ledger lines it printed (read on a thread: never blocks it)."""

    def __init__(self, root: Path, start: int, seed: int, point: str | None, nth: int) -> None:
        cmd = [sys.executable, "-P", str(WORKER), str(root), "--start", str(start), "--seed", str(seed)]
        if point:
            cmd += ["--point", point, "--nth", str(nth)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[dict] = []
        self.ready = threading.Event()
        self.stderr = ""
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            self.lines.append(record)
            if "ready" in record:
                self.ready.set()

    def _read_err(self) -> None:
        self.stderr = self.proc.stderr.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def died_at(self) -> str | None:
        return next((r["dying"] for r in self.lines if "dying" in r), None)


class CrashHarness:
    def __init__(self, root: Path, seed: int = 0) -> None:
        self.root, self.rng = root, random.Random(seed)
        self.config = make_config(root)
        self.disk_dir = Path(self.config.tiers[1].path)
        self.figure = Figure("kill -9 of the manager process", "SIGKILL at random moments and at named steps")
        self.by_point: dict[str, int] = {}
        self.problems: list[str] = []
        self.dropped_by_design = 0
        self.orphans_cleaned = 0
        self.ops = {"stored": 0, "cmd": 0, "profiled": 0}

    # ---- one cycle ------------------------------------------------------------------------
    def cycle(self, i: int) -> None:
        point = POINTS[i % (len(POINTS) + 1) - 1] if i % (len(POINTS) + 1) else None
        start = 1 + max((n_of(c) for c in self._known()), default=-1)
        worker = Worker(self.root, start, self.rng.randrange(1 << 30), point, self.rng.randint(1, 4))
        if not worker.ready.wait(READY_TIMEOUT_S):
            worker.kill()
            raise RuntimeError(f"worker never became ready: {worker.stderr[-2000:]}")
        wait_s = POINT_TIMEOUT_S if point else self.rng.uniform(*RANDOM_KILL_S)
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.proc.wait(timeout=wait_s)
        worker.kill()
        killed_at = time.time()
        time.sleep(0.05)  # the reader thread drains the pipe
        where = worker.died_at() or "random"
        if worker.proc.returncode != -signal.SIGKILL:
            self.problems.append(f"cycle {i}: worker exited {worker.proc.returncode}: {worker.stderr[-800:]}")
        self.by_point[where] = self.by_point.get(where, 0) + 1
        for key in self.ops:
            self.ops[key] += sum(1 for r in worker.lines if key in r)
        self.check_restart(i, killed_at)
        self.figure.count += 1

    def _known(self) -> list[str]:
        db = self.config.db_path
        return list(committed_state(db)["pins"]) if Path(db).exists() else []

    # ---- the checks ---------------------------------------------------------------------
    def check_restart(self, i: int, killed_at: float) -> None:
        from evicctl.manager.manager import Manager

        db = Path(self.config.db_path)
        if not integrity_ok(db):
            self.fail(i, "integrity_check failed after the kill")
        before = committed_state(db)
        t0 = time.perf_counter()
        manager = Manager(self.config, probe=False)
        self.figure.recovery_s.append(time.perf_counter() - t0)
        try:
            self.orphans_cleaned += manager.orphans_deleted
            self._check_copies(i, manager, before)
            self._check_pins(i, manager, before)
            manager.tick()  # the control loop's first tick: leftover commands get answered
        finally:
            manager.close()
        self._check_files(i)
        self._check_recorded(i, killed_at, before)
        if not integrity_ok(db):
            self.fail(i, "integrity_check failed after the restart")

    def _check_copies(self, i: int, manager, before: dict) -> None:
        for cid, row in before["placements"].items():
            if row["tier"] == "cpu":
                self.dropped_by_design += 1
                continue
            if row["tier"] != "disk":
                continue
            now = manager.placement(cid)
            if now is None or (now.tier, now.codec, now.checksum) != ("disk", row["codec"], row["checksum"]):
                self.fail(i, f"{cid}: on disk/{row['codec']} at the kill, {now} after the restart", lost=1)
                continue
            hit = manager.lookup(cid, device="cpu")
            if hit is None or not same_context(hit.kv, n_of(cid)):
                self.fail(i, f"{cid}: its disk copy does not hold its own tensors after the restart", lost=1)

    def _check_pins(self, i: int, manager, before: dict) -> None:
        after = {cid: (p.tier, p.codec) for cid, p in _pins_of(manager).items()}
        for cid, pin in before["pins"].items():
            if after.get(cid) != pin:
                self.fail(i, f"{cid}: pin {pin} at the kill, {after.get(cid)} after the restart", lost=1)
        for problem in pin_mismatches(before["commands"], before["pins"]):
            self.fail(i, problem, lost=1)

    def _check_files(self, i: int) -> None:
        state = committed_state(Path(self.config.db_path))
        locations = {r["location"] for r in state["placements"].values() if r["tier"] == "disk"}
        orphans, temps = disk_leftovers(self.disk_dir, locations)
        if orphans or temps:
            self.fail(i, f"left in the disk folder: orphans {orphans[:3]}, temps {temps[:3]}")
        missing = [loc for loc in locations if not Path(loc).exists()]
        if missing:
            self.fail(i, f"placements pointing at missing files: {missing[:3]}", lost=len(missing))

    def _check_recorded(self, i: int, killed_at: float, before: dict) -> None:
        from faults_common import open_ro

        conn = open_ro(Path(self.config.db_path))
        try:
            row = conn.execute("SELECT pid, started_at FROM manager WHERE id = 1").fetchone()
            recovered = conn.execute(
                "SELECT COUNT(*) FROM events WHERE reason = 'recovery' AND ts >= ?", (killed_at,)
            ).fetchone()[0]
            stuck = conn.execute("SELECT id, status FROM commands WHERE status IN ('pending', 'running')").fetchall()
            restarts = conn.execute("SELECT COUNT(*) FROM events WHERE kind = 'restart' AND ts >= ?", (killed_at,)).fetchone()[0]
        finally:
            conn.close()
        if restarts < 1:
            self.fail(i, "no restart event after the kill")
        if row is None or row["pid"] != os.getpid() or row["started_at"] < killed_at:
            self.fail(i, f"restart not recorded in the manager row: {dict(row) if row else None}")
        placed = sum(1 for r in before["placements"].values() if r["tier"] in ("cpu", "disk"))
        if recovered < placed:
            self.fail(i, f"{placed} placed contexts at the kill, only {recovered} recovery events")
        if stuck:
            self.fail(i, f"commands left unanswered after the restart: {[tuple(r) for r in stuck][:5]}", lost=len(stuck))

    def fail(self, i: int, message: str, lost: int = 0) -> None:
        self.figure.lost += lost
        self.problems.append(f"cycle {i}: {message}")

    def run(self, crashes: int) -> Figure:
        for i in range(crashes):
            self.cycle(i)
        points = ", ".join(f"{k} {v}" for k, v in sorted(self.by_point.items()))
        self.figure.notes += [
            f"kill points: {points}",
            f"acknowledged before the kills: {self.ops['stored']} stores, {self.ops['cmd']} commands, "
            f"{self.ops['profiled']} profile writes",
            f"cpu copies dropped by design at restart: {self.dropped_by_design}; orphan files cleaned: {self.orphans_cleaned}",
        ]
        return self.figure


def _pins_of(manager) -> dict:
    """Each context's pin as the restarted manager holds it, read through its public state."""
    from types import SimpleNamespace

    out = {}
    with manager.state_lock:
        for cid in manager.context_ids():
            ctx = manager.context(cid)
            out[cid] = SimpleNamespace(tier=ctx.pin_tier, codec=ctx.pin_codec)
    return out


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        h = CrashHarness(Path(tmp), seed=int(sys.argv[2]) if len(sys.argv) > 2 else 0)
        fig = h.run(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
        print(fig.to_json())
        print("\n".join(h.problems[:30]))
