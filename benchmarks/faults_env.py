"""The environment turning hostile under a running manager: a full or read-only filesystem,
files changed behind its back, the database locked by another writer, the clock jumping back.

Each function returns (Figure, problems). Filesystem limits use a real tmpfs mount (or a
read-only bind mount) when this process may mount; otherwise they are skipped and say so.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ (never the checkout root: -P)

from faults_common import Figure, make_config, make_kv, same_context  # noqa: E402


class TickFailures(logging.Handler):
    """Counts the manager's logged failures (a failed tick is logged, not raised)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> TickFailures:
        logging.getLogger("evicctl").addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("evicctl").removeHandler(self)


@contextlib.contextmanager
def mounted(path: Path, options: str, *, bind: bool = False):
    """A tmpfs (or a read-only bind of `path` onto itself) for the duration; None if not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    if bind:
        cmds = [["mount", "--bind", str(path), str(path)], ["mount", "-o", "remount,bind," + options, str(path)]]
    else:
        cmds = [["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)]]
    done = 0
    for cmd in cmds:
        if subprocess.run(cmd, capture_output=True).returncode != 0:
            break
        done += 1
    try:
        yield path if done == len(cmds) else None
    finally:
        if done and subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            # still busy (a file open in it): detach it now, the kernel frees it when released;
            # a mount left behind would outlive the run and block the test's temp folder
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _store_all(manager, ns, figure: Figure) -> tuple[int, list[str]]:
    """Store contexts ns; returns (refused, problems). A refusal must be a clean exception."""
    refused, problems = 0, []
    for n in ns:
        figure.count += 1
        try:
            manager.store(f"ctx-{n}", make_kv(n))
        except OSError:
            refused += 1  # ENOSPC / EROFS reached the engine: refused, nothing kept
        except Exception as exc:
            problems.append(f"store ctx-{n}: {type(exc).__name__}: {exc}"[:200])
    return refused, problems


def _served_right(manager, ns) -> tuple[int, list[str]]:
    """Lookups of ns: how many hit; a hit carrying another context's tensors is a problem."""
    hits, problems = 0, []
    for n in ns:
        hit = manager.lookup(f"ctx-{n}", device="cpu")
        if hit is not None:
            hits += 1
            if not same_context(hit.kv, n):
                problems.append(f"ctx-{n} served wrong tensors")
    return hits, problems


def _temps(disk_dir: Path) -> list[str]:
    return [p.name for p in disk_dir.glob(".*.tmp")]


def filesystem_full(root: Path, fs_kib: int = 192, contexts: int = 40) -> tuple[Figure, list[str]]:
    """The disk tier on a tmpfs smaller than its configured capacity; stores until it is full."""
    from evicctl.manager.manager import Manager

    figure = Figure("disk tier filesystem full", f"tmpfs of {fs_kib} KiB under a 1000-context disk tier")
    disk_dir = root / "disk"
    with mounted(disk_dir, f"size={fs_kib}k,mode=0700") as fs:
        if fs is None:
            figure.notes.append("skipped: this process may not mount a tmpfs")
            return figure, []
        config = make_config(root, cpu_contexts=2, disk_contexts=1000, disk_path=disk_dir)
        with TickFailures() as failures, Manager(config, probe=False) as manager:
            refused, problems = _store_all(manager, range(contexts), figure)
            time.sleep(0.5)  # ticks run moves into the full filesystem too
            hits, wrong = _served_right(manager, range(contexts))
            problems += wrong
            temps = _temps(disk_dir)
            if temps:
                problems.append(f"temp files left on the full filesystem: {temps[:3]}")
            alive = manager.running
        with Manager(config, probe=False) as again:  # a restart on the full filesystem
            hits_after, wrong = _served_right(again, range(contexts))
            problems += wrong
    if not alive:
        problems.append("the control thread died")
    if failures.messages:  # a write failure is one move's event, never a failed tick
        problems.append(f"{len(failures.messages)} failed ticks: the manager did not contain a write error")
    figure.lost = len(problems)
    figure.notes += [f"{refused} of {contexts} stores refused with OSError (ENOSPC), {hits} served after, "
                     f"{hits_after} after a restart; {len(failures.messages)} failed ticks logged"]  # fmt: skip
    return figure, problems


def readonly_folder(root: Path, contexts: int = 12) -> tuple[Figure, list[str]]:
    """The disk folder remounted read-only (a read-only bind mount: root ignores file modes)."""
    from evicctl.manager.manager import Manager

    figure = Figure("disk folder read-only", "read-only bind mount of the disk folder, mid-run")
    config = make_config(root, cpu_contexts=2, disk_contexts=1000)
    disk_dir = Path(config.tiers[1].path)
    with TickFailures() as failures, Manager(config, probe=False) as manager:
        refused, problems = _store_all(manager, range(contexts), figure)
        with mounted(disk_dir, "ro", bind=True) as fs:
            if fs is None:
                figure.notes.append("skipped: this process may not bind-mount")
                return figure, []
            refused, more = _store_all(manager, range(contexts, 2 * contexts), figure)
            problems += more
            time.sleep(0.5)
            hits, wrong = _served_right(manager, range(2 * contexts))
            problems += wrong
        after, more = _store_all(manager, range(2 * contexts, 2 * contexts + 4), figure)
        problems += more
        if after:
            problems.append(f"{after} stores refused after the folder became writable again")
    if failures.messages:  # a write failure is one move's event, never a failed tick
        problems.append(f"{len(failures.messages)} failed ticks: the manager did not contain a write error")
    figure.lost = len(problems)
    figure.notes.append(f"{refused} of {contexts} stores refused while read-only; {hits} of {2 * contexts} served; "
                        f"{len(failures.messages)} failed ticks logged")  # fmt: skip
    return figure, problems


def tampered_files(root: Path, per_kind: int = 5) -> tuple[Figure, list[str]]:
    """Disk copies truncated, bit-flipped, deleted or replaced by another context's valid file:
    never served, each a miss with a `lost` event; the same again across a restart."""
    from evicctl.manager.manager import Manager

    figure = Figure("disk files changed behind the manager", "truncate, flip one bit, delete, replace with another's file")
    problems: list[str] = []
    kinds = ("truncate", "bitflip", "delete", "replace")
    config = make_config(root, cpu_contexts=0, disk_contexts=1000)
    for phase, base in (("running", 0), ("restart", 1000)):
        ns = range(base, base + 1 + per_kind * len(kinds))  # base itself is the intact donor
        with Manager(config, probe=False) as manager:
            for n in ns:
                manager.store(f"ctx-{n}", make_kv(n))
            donor = Path(manager.placement(f"ctx-{base}").location).read_bytes()
            for i, n in enumerate(ns[1:]):
                _tamper(Path(manager.placement(f"ctx-{n}").location), kinds[i % len(kinds)], donor)
                figure.count += 1
            if phase == "running":
                hits, wrong = _served_right(manager, ns)
        if phase == "restart":
            with Manager(config, probe=False) as again:
                hits, wrong = _served_right(again, ns)
        problems += wrong
        if hits != 1:
            problems.append(f"{phase}: {hits} hits; only the donor is intact")
    figure.lost = len(problems)
    figure.notes.append("every tampered copy a miss and a `lost` event; none served")
    return figure, problems


def _tamper(path: Path, kind: str, donor: bytes) -> None:
    if kind == "truncate":
        os.truncate(path, path.stat().st_size // 2)
    elif kind == "bitflip":
        data = bytearray(path.read_bytes())
        data[len(data) - 7] ^= 0x10  # in the tensor payload, past the header
        path.write_bytes(bytes(data))
    elif kind == "delete":
        path.unlink()
    else:
        path.write_bytes(donor)


def database_locked(root: Path, hold_s: float = 30.0, contexts: int = 20) -> tuple[Figure, list[str]]:
    """Another process holds the database's write lock for hold_s while the engine keeps
    storing and an operator queues a command; afterwards every stored context must be in
    the database and survive a restart."""
    from evicctl.manager.manager import Manager

    figure = Figure("database locked by another writer", f"BEGIN IMMEDIATE held {hold_s:.0f} s by another process")
    problems: list[str] = []
    config = make_config(root, cpu_contexts=0, disk_contexts=1000)
    db = Path(config.db_path)
    with TickFailures() as failures, Manager(config, probe=False) as manager:
        manager.store("ctx-0", make_kv(0))
        locker = subprocess.Popen([sys.executable, "-c", _LOCKER, str(db), str(hold_s)], stdout=subprocess.PIPE, text=True)
        locker.stdout.readline()  # "locked"
        t0 = time.monotonic()
        surfaced = 0
        command: list = []
        threading.Thread(target=_one_command, args=(db, command), daemon=True).start()
        for n in range(1, contexts + 1):
            figure.count += 1
            try:
                manager.store(f"ctx-{n}", make_kv(n))
            except sqlite3.OperationalError:
                surfaced += 1  # "database is locked" reached the engine
            if time.monotonic() - t0 > hold_s:
                break
            time.sleep(hold_s / contexts)
        locker.wait()
        unlocked = time.monotonic()
        while not command and time.monotonic() - unlocked < 30:
            time.sleep(0.05)
        recovery_s = time.monotonic() - unlocked
        time.sleep(0.5)  # a few ticks after the lock is gone
        known = manager.context_ids()
    figure.recovery_s.append(recovery_s)
    stored_rows = _placed_ids(db)
    missing = [c for c in known if c not in stored_rows]
    if missing:
        problems.append(f"{len(missing)} stored contexts have no placement row after the lock: {missing[:3]}")
    with Manager(config, probe=False) as again:
        lost = [c for c in known if again.placement(c) is None or again.placement(c).tier != "disk"]
    if lost:
        problems.append(f"{len(lost)} contexts lost across a restart after the lock: {lost[:3]}")
    if not command or command[0] != "done":
        problems.append(f"a command queued during the lock: {command}")
    figure.lost = len(missing) + len(lost)
    figure.notes.append(f"{surfaced} stores raised 'database is locked' to the engine; "
                        f"{len(failures.messages)} errors logged; command: {command}")  # fmt: skip
    return figure, problems


_LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
"""


def _one_command(db: Path, out: list) -> None:
    from evicctl.control import ControlClient
    from evicctl.errors import EvicctlError

    try:
        with ControlClient(db) as client:
            out.append(client.wait(client.submit("pin", "ctx-0", {"tier": "disk"}), timeout_s=60).status)
    except (EvicctlError, sqlite3.Error) as exc:
        out.append(f"{type(exc).__name__}: {exc}")


def _placed_ids(db: Path) -> set[str]:
    conn = sqlite3.connect(db, timeout=30)
    try:
        return {r[0] for r in conn.execute("SELECT context_id FROM placements WHERE tier != 'dropped'")}
    finally:
        conn.close()


def clock_backwards(root: Path, jump_s: float = 3600.0, hold_s: float = 8.0, contexts: int = 12) -> tuple[Figure, list[str]]:
    """time.time() in the manager's process jumps back an hour mid-run and stays there hold_s
    (longer than the heartbeat timeout): stores, lookups and commands keep working, and a
    reader on the same (jumped) clock must see a heartbeat renewed since the jump."""
    from evicctl.control import ControlClient
    from evicctl.manager.manager import Manager

    figure = Figure("clock jumps backwards", f"time.time() in the manager's process set back {jump_s:.0f} s for {hold_s:.0f} s")
    problems: list[str] = []
    config = make_config(root, cpu_contexts=4, disk_contexts=1000)
    real_time = time.time
    with TickFailures() as failures, Manager(config, probe=False) as manager:
        _store_all(manager, range(contexts), figure)
        time.time = lambda: real_time() - jump_s
        try:
            _, more = _store_all(manager, range(contexts, 2 * contexts), figure)
            problems += more
            hits, wrong = _served_right(manager, range(2 * contexts))
            problems += wrong
            with ControlClient(config.db_path) as client:
                outcome = client.wait(client.submit("pin", "ctx-1", {"tier": "disk"}), timeout_s=10)
            time.sleep(hold_s)
            # A real jump moves every process's clock: a reader on the jumped clock must find a
            # heartbeat renewed since the jump (not one from its "future", which would also keep
            # a dead manager looking alive until the clock caught up).
            heartbeat_age_s = time.time() - _heartbeat_at(Path(config.db_path))
        finally:
            time.time = real_time
    if outcome.status not in ("done", "refused"):
        problems.append(f"a command after the jump: {outcome.status} {outcome.message}")
    if failures.messages:
        problems.append(f"{len(failures.messages)} errors logged: {failures.messages[:2]}")
    if not 0 <= heartbeat_age_s <= config.heartbeat_timeout_s:
        problems.append(f"heartbeat {heartbeat_age_s:.0f} s old to a reader on the same clock: not renewed after the jump")
    figure.lost = len(problems)
    figure.notes.append(f"{hits} of {2 * contexts} served after the jump; heartbeat age seen by a reader "
                        f"{heartbeat_age_s:.0f} s (timeout {config.heartbeat_timeout_s:.0f} s)")  # fmt: skip
    return figure, problems


def _heartbeat_at(db: Path) -> float:
    conn = sqlite3.connect(db, timeout=30)
    try:
        return conn.execute("SELECT heartbeat_at FROM manager WHERE id = 1").fetchone()[0]
    finally:
        conn.close()
