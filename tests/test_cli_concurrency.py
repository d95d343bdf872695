"""Readers never see 'database is locked' while the manager writes thousands of events/s."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from evicctl.store.database import Store


class BusyWriter:
    """Commits batches of events (and context updates) as fast as a manager's ticks would."""

    def __init__(self, path, events_per_batch: int = 200) -> None:
        self.store = Store.open(path)
        self.events_per_batch = events_per_batch
        self.events = 0
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> BusyWriter:
        self.t0 = time.monotonic()
        self._thread.start()
        return self

    def _run(self) -> None:
        k = 0
        try:
            while not self._stop.is_set():
                batch = self.store.batch()
                for j in range(self.events_per_batch):
                    cid = f"ctx-{(k * 7 + j) % 40:05d}"
                    batch.event(kind="move", context_id=cid, from_tier="cpu", to_tier="disk", reason="capacity")
                    batch.upsert("contexts", {"id": cid, "hits": k, "freq": 1.0 / (j + 1)})
                batch.sample(tier="cpu", used_bytes=k, capacity_bytes=1 << 30, hits=k, misses=k // 3)
                self.store.flush(batch)
                self.events += self.events_per_batch
                k += 1
                time.sleep(0.002)
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)

    @property
    def rate_per_s(self) -> float:
        return self.events / max(1e-9, time.monotonic() - self.t0)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.store.close()


@pytest.fixture
def busy_db(tmp_path, make_fixture_db):
    return make_fixture_db(tmp_path / "busy.db", 40, seed=2, now=time.time(), manager="none").path


READS = (
    ("ls", "-o", "json"),
    ("ls", "--sort", "hits", "--limit", "10"),
    ("history", "-o", "jsonl", "--limit", "500"),
    ("history", "ctx-00003", "-o", "csv"),
    ("tiers", "-o", "json"),
    ("show", "ctx-00001", "-o", "json"),
)


def test_reads_in_process_while_a_writer_commits_thousands_of_events_per_second(run_cli, busy_db):
    runs = 0
    with BusyWriter(busy_db) as writer:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            for args in READS:
                result = run_cli(*args, "--db", busy_db)
                assert result.exit_code == 0, (args, result.stderr)
                assert "locked" not in result.stderr
                runs += 1
            json.loads(run_cli("ls", "-o", "json", "--db", busy_db).stdout)  # complete, parseable
        rate = writer.rate_per_s
    assert not writer.errors, writer.errors
    assert rate > 1000, f"writer managed only {rate:.0f} events/s"
    assert runs >= len(READS)


def test_cli_processes_while_a_writer_commits(busy_db):
    with BusyWriter(busy_db) as writer:
        procs = [
            subprocess.Popen([sys.executable, "-m", "evicctl.cli", *args, "--db", str(busy_db)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for args in READS
        ]
        outputs = [p.communicate(timeout=120) for p in procs]
        rate = writer.rate_per_s
    assert not writer.errors
    for p, (_out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
        assert "locked" not in err and "Traceback" not in err
    assert rate > 1000


def test_history_follow_keeps_up_with_a_busy_writer(busy_db):
    proc = subprocess.Popen(
        [sys.executable, "-m", "evicctl.cli", "history", "--follow", "-o", "jsonl", "--limit", "1", "--db", str(busy_db)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        start = json.loads(proc.stdout.readline())["id"]
        with BusyWriter(busy_db, events_per_batch=100) as writer:
            time.sleep(1.5)
        written = writer.events
        ids = []
        while len(ids) < written:
            ids.append(json.loads(proc.stdout.readline())["id"])
        assert ids == list(range(start + 1, start + 1 + written))  # every event, in order, once
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert "locked" not in proc.stderr.read()


def test_pin_round_trip_while_the_writer_is_busy(run_cli, busy_db, manager_thread):
    manager_thread(busy_db)
    with BusyWriter(busy_db):
        for _ in range(5):
            result = run_cli("pin", "ctx-00002", "--tier", "cpu", "--db", busy_db)
            assert result.exit_code == 0, result.stderr
