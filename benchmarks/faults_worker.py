"""The process the crash harness kills: a real Manager (cpu + disk tiers) under a synthetic
engine workload (stores, lookups, profile writes) and an operator thread queuing commands
through the same control channel the CLI uses.

    .venv/bin/python -P benchmarks/faults_worker.py ROOT --start N --seed S [--point P --nth K]

Every acknowledged action is one JSON line on stdout, written after the call returned: the
harness's ledger lives in the parent, so a kill loses at most the line of the action it cut.
With --point the worker SIGKILLs itself the K-th time execution reaches that point (a kill -9
at an exact step); without it the parent kills at a random moment.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ (never the checkout root: -P)

from faults_common import MENU, context_id, make_config, make_kv  # noqa: E402

POINTS = ("admit-copied", "copied", "switched", "temp-written", "renamed", "mid-transaction", "command-applied")
UNIVERSE = 40  # contexts the workload cycles through (a dropped one is stored again)
_say_lock = threading.Lock()


def say(**record) -> None:
    with _say_lock:
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()


class Killer:
    """SIGKILL this process the nth time `hit(point)` is called with its point."""

    def __init__(self, point: str | None, nth: int) -> None:
        self.point, self.left = point, nth

    def hit(self, point: str) -> None:
        if point != self.point:
            return
        self.left -= 1
        if self.left <= 0:
            say(dying=point)
            os.kill(os.getpid(), signal.SIGKILL)


def install(killer: Killer, manager) -> None:
    """Hook every kill point: the manager's move stages, the disk tier's rename, the store's
    write transaction and the control channel between applying a command and answering it."""
    import evicctl.control as control
    from evicctl.store.database import Store

    manager.fault = killer.hit  # "admit-copied", "copied", "switched"
    real_replace = os.replace

    def replace(src, dst, *a, **kw):
        if str(src).endswith(".tmp"):
            killer.hit("temp-written")  # durable temp file, not yet renamed
            real_replace(src, dst, *a, **kw)
            killer.hit("renamed")  # final name in place; index and database not yet
            return None
        return real_replace(src, dst, *a, **kw)

    os.replace = replace
    real_upsert = Store._upsert_many

    def upsert(self, table, rows):
        real_upsert(self, table, rows)
        killer.hit("mid-transaction")  # rows written, COMMIT not yet

    Store._upsert_many = upsert
    real_run = control._run_handler

    def run_handler(command, handler):
        outcome = real_run(command, handler)
        killer.hit("command-applied")  # applied, outcome not yet written
        return outcome

    control._run_handler = run_handler


def operator(db: Path, rng: random.Random, known: list[str], stop: threading.Event) -> None:
    """Queue mixed commands and wait for each, as `evicctl pin/evict/...` would."""
    from evicctl.control import ControlClient
    from evicctl.errors import EvicctlError

    verbs = ("pin", "pin", "unpin", "evict", "recompress", "promote")
    with ControlClient(db) as client:
        while not stop.is_set():
            if not known:
                time.sleep(0.02)
                continue
            verb, cid = rng.choice(verbs), rng.choice(known)
            args = {
                "pin": lambda: rng.choice(({"tier": "disk"}, {"codec": rng.choice(MENU)}, {"tier": "cpu", "codec": "int4"})),
                "evict": lambda: {"to": rng.choice(("disk", "drop"))},
                "recompress": lambda: {"codec": rng.choice(MENU[1:]), "force": True},
            }.get(verb, dict)()
            try:
                command_id = client.submit(verb, cid, args, actor="faults")
                outcome = client.wait(command_id, timeout_s=10)
                say(cmd=command_id, verb=verb, ctx=cid, status=outcome.status)
            except EvicctlError as exc:
                say(cmd_error=str(exc))
            time.sleep(rng.uniform(0.005, 0.04))


def workload(manager, rng: random.Random, start: int, known: list[str]) -> None:
    """Stores (new and re-admitted contexts), lookups and profile writes, forever."""
    next_n = start
    while True:
        action = rng.random()
        if action < 0.45:
            n = next_n if next_n < UNIVERSE or rng.random() < 0.05 else rng.randrange(next_n)
            next_n = max(next_n, n + 1)
            placement = manager.store(context_id(n), make_kv(n), prefill_s=rng.uniform(0.05, 2.0))
            if context_id(n) not in known:
                known.append(context_id(n))
            say(stored=context_id(n), n=n, tier=placement.tier, codec=placement.codec)
        elif action < 0.75 and known:
            manager.lookup(rng.choice(known), device="cpu")
        elif known:
            cid = rng.choice(known)
            codec = rng.choice(MENU[1:])
            manager.record_profile(cid, codec, quality=rng.uniform(0.5, 1.0), quality_sd=0.02, n_queries=4)
            say(profiled=cid, codec=codec)
        time.sleep(rng.uniform(0.0, 0.01))


def main() -> None:
    import argparse

    from evicctl.manager.manager import Manager

    ap = argparse.ArgumentParser()
    ap.add_argument("root", type=Path)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--point", choices=POINTS)
    ap.add_argument("--nth", type=int, default=1)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    t0 = time.perf_counter()
    manager = Manager(make_config(a.root), probe=False)  # the restart: recovery runs here
    say(ready=time.perf_counter() - t0, orphans_deleted=manager.orphans_deleted, pid=os.getpid())
    install(Killer(a.point, a.nth), manager)
    manager.start()
    known = [c for c in manager.context_ids()]
    stop = threading.Event()
    threading.Thread(target=operator, args=(a.root / "evicctl.db", random.Random(a.seed + 1), known, stop),
                     daemon=True).start()  # fmt: skip
    workload(manager, rng, a.start, known)


if __name__ == "__main__":
    main()
