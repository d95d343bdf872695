"""Store: migrations, permissions, WAL readers, batched writes, retention, errors."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
import time

import pytest

from evicctl.errors import StoreError
from evicctl.store.database import MIGRATIONS, REQUIRED_TABLES, SCHEMA_VERSION, Store


def _ctx(i: int, **extra) -> dict:
    return {"id": f"c{i}", "tokens": 100 + i, "raw_bytes": 1000 * (i + 1), "created_at": 1.0, "last_access_at": 2.0, **extra}


def test_migrations_from_empty_create_every_table_and_record_versions(db_path):
    with Store.open(db_path) as store:
        tables = set(store.db.table_names())
        assert set(REQUIRED_TABLES) <= tables
        assert store.schema_version() == SCHEMA_VERSION == MIGRATIONS[-1][0]
        rows = store.query("SELECT version, name FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in rows] == [m[0] for m in MIGRATIONS]
        indexes = {r["name"] for r in store.query("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"events_command", "samples_ts", "events_ts"} <= indexes
        assert store.query("PRAGMA journal_mode")[0][0] == "wal"


def test_migrations_reapplied_are_a_no_op_and_keep_data(db_path):
    with Store.open(db_path) as store:
        batch = store.batch()
        batch.upsert("contexts", _ctx(1))
        store.flush(batch)
    with Store.open(db_path) as store:
        assert store.migrate() == []
        assert store.query("SELECT COUNT(*) AS n FROM schema_migrations")[0]["n"] == len(MIGRATIONS)
        assert store.query("SELECT id FROM contexts")[0]["id"] == "c1"


def test_partial_migration_state_applies_only_the_missing_ones(db_path):
    """A database left at version 1 (an older evicctl) gets migration 2 and keeps its rows."""
    with Store.open(db_path) as store, store.transaction() as conn:
        conn.execute("DROP INDEX events_command")
        conn.execute("DELETE FROM schema_migrations WHERE version > 1")
        conn.execute("PRAGMA user_version = 1")
    with Store.open(db_path) as store:
        assert store.schema_version() == SCHEMA_VERSION
        names = {r["name"] for r in store.query("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "events_command" in names


def test_new_database_is_private_0600_in_a_0700_directory(db_path):
    with Store.open(db_path) as store:
        store.flush(store.batch())
        assert stat.S_IMODE(os.stat(db_path.parent).st_mode) == 0o700
        for suffix in ("", "-wal", "-shm"):
            f = db_path.with_name(db_path.name + suffix)
            if f.exists():
                assert stat.S_IMODE(os.stat(f).st_mode) == 0o600, f


def test_new_database_is_0600_even_with_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        path = tmp_path / "new" / "e.db"
        Store.open(path).close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700


def test_existing_directory_permissions_are_left_alone(tmp_path):
    os.chmod(tmp_path, 0o755)
    Store.open(tmp_path / "e.db").close()
    assert stat.S_IMODE(os.stat(tmp_path).st_mode) == 0o755


def test_readonly_open_of_a_missing_file_says_how_to_get_one(db_path):
    with pytest.raises(StoreError, match="no database at .*evicctl demo.*--db"):
        Store.open(db_path, readonly=True)
    assert not db_path.exists()


def test_writer_with_create_false_does_not_create(db_path):
    with pytest.raises(StoreError, match="no database at"):
        Store.open(db_path, create=False)
    assert not db_path.exists()


def test_readonly_store_cannot_write(db_path):
    Store.open(db_path).close()
    with Store.open(db_path, readonly=True) as reader, pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader.conn.execute("INSERT INTO commands (created_at, actor, verb) VALUES (1, 'x', 'pin')")


def test_corrupt_file_is_a_store_error(tmp_path):
    path = tmp_path / "bad.db"
    path.write_bytes(b"this is not sqlite at all" * 200)
    for readonly in (True, False):
        with pytest.raises(StoreError, match="corrupt or not an evicctl database"):
            Store.open(path, readonly=readonly)


def test_foreign_sqlite_file_is_not_an_evicctl_database(tmp_path):
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE x (a)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="not an evicctl database"):
        Store.open(path, readonly=True)


def test_batch_flush_writes_all_tables_in_one_transaction_and_returns_event_ids(db_path):
    with Store.open(db_path) as store:
        batch = store.batch()
        batch.upsert("tiers", {"name": "cpu", "backend": "cpu", "rank": 0, "capacity_bytes": 10, "updated_at": 1.0})
        for i in range(3):
            batch.upsert("contexts", _ctx(i))
            batch.upsert("placements", {"context_id": f"c{i}", "tier": "cpu", "codec": "none", "stored_bytes": 5, "since": 1.0})
            batch.event(kind="admit", context_id=f"c{i}", to_tier="cpu")
        batch.upsert("profiles", {"context_id": "c0", "codec": "int8", "quality": 0.9, "n_queries": 3, "measured_at": 1.0})
        before = store.conn.total_changes
        ids = store.flush(batch)
        assert ids == [1, 2, 3]
        assert store.conn.total_changes - before >= 11
        more = store.batch()
        more.event(kind="move", context_id="c1")
        more.event(kind="move", context_id="c2", actor="alice")
        assert store.flush(more) == [4, 5]
        ev = store.query("SELECT id, actor, ts FROM events ORDER BY id")
        assert [e["actor"] for e in ev] == ["policy"] * 4 + ["alice"]
        assert all(e["ts"] > 1e9 for e in ev)
        assert store.query("SELECT metric FROM profiles")[0]["metric"] == "teacher-forced"


def test_partial_upsert_updates_only_the_named_columns(db_path):
    with Store.open(db_path) as store:
        b = store.batch()
        b.upsert("contexts", _ctx(1, label="doc", hits=1))
        store.flush(b)
        b = store.batch()
        b.upsert("contexts", {"id": "c1", "hits": 7})
        b.upsert("contexts", {"id": "c1", "freq": 0.5})  # merges with the previous one
        store.flush(b)
        row = store.query("SELECT label, hits, freq, tokens FROM contexts WHERE id = 'c1'")[0]
        assert (row["label"], row["hits"], row["freq"], row["tokens"]) == ("doc", 7, 0.5, 101)


def test_batch_is_atomic_when_one_row_fails(db_path):
    with Store.open(db_path) as store:
        b = store.batch()
        b.upsert("contexts", _ctx(1))
        b.event(kind="admit", context_id="c1")
        # a placement for a context that does not exist violates the foreign key
        b.upsert("placements", {"context_id": "ghost", "tier": "cpu", "codec": "none", "stored_bytes": 1, "since": 1.0})
        with pytest.raises(sqlite3.IntegrityError):
            store.flush(b)
        assert store.query("SELECT COUNT(*) AS n FROM contexts")[0]["n"] == 0
        assert store.query("SELECT COUNT(*) AS n FROM events")[0]["n"] == 0
        # the store is usable afterwards (the failed transaction was rolled back)
        b = store.batch()
        b.upsert("contexts", _ctx(2))
        store.flush(b)
        assert store.query("SELECT COUNT(*) AS n FROM contexts")[0]["n"] == 1


def test_delete_after_upsert_in_one_batch_deletes(db_path):
    with Store.open(db_path) as store:
        b = store.batch()
        b.upsert("contexts", _ctx(1))
        b.upsert("placements", {"context_id": "c1", "tier": "cpu", "codec": "none", "stored_bytes": 1, "since": 1.0})
        store.flush(b)
        b = store.batch()
        b.upsert("placements", {"context_id": "c1", "tier": "disk"})
        b.delete("placements", "c1")
        store.flush(b)
        assert store.query("SELECT COUNT(*) AS n FROM placements")[0]["n"] == 0


def test_unknown_table_or_column_is_rejected_before_any_sql(db_path):
    with Store.open(db_path) as store:
        b = store.batch()
        with pytest.raises(ValueError, match="cannot be upserted"):
            b.upsert("sqlite_master", {"name": "x"})
        b.upsert("contexts", {"id": "c1", "hits; DROP TABLE events": 1})
        with pytest.raises(ValueError, match="has no column"):
            store.flush(b)
        assert "events" in store.db.table_names()


def test_samples_retention_by_age_and_by_rows(db_path):
    with Store.open(db_path, samples_retention_s=60.0, samples_max_rows=100) as store:
        now = time.time()
        b = store.batch()
        for k in range(50):
            b.sample(ts=now - 3600 + k, tier="cpu", used_bytes=k, capacity_bytes=100, hits=k, misses=0)
        for k in range(150):
            b.sample(ts=now - 30 + k * 0.1, tier="cpu", used_bytes=k, capacity_bytes=100, hits=k, misses=0)
        store.flush(b)
        rows = store.query("SELECT COUNT(*) AS n, MIN(ts) AS t0, MIN(used_bytes) AS u0 FROM samples")[0]
        assert rows["n"] == 100  # the hour-old ones by age, then the oldest recent ones by count
        assert rows["t0"] >= now - 60
        assert rows["u0"] == 50


def test_data_version_moves_when_another_connection_commits(db_path):
    with Store.open(db_path) as writer, Store.open(db_path, readonly=True) as reader:
        v0 = reader.data_version()
        assert reader.data_version() == v0
        b = writer.batch()
        b.event(kind="x")
        writer.flush(b)
        assert reader.data_version() != v0


def test_reader_is_not_blocked_by_an_open_write_transaction(db_path):
    """WAL: a reader sees the last commit while the writer holds its write lock."""
    with Store.open(db_path) as writer, Store.open(db_path, readonly=True) as reader:
        b = writer.batch()
        b.event(kind="committed")
        writer.flush(b)
        with writer.transaction() as conn:
            conn.execute("INSERT INTO events (ts, kind, actor) VALUES (1, 'uncommitted', 'policy')")
            t0 = time.monotonic()
            kinds = [r["kind"] for r in reader.query("SELECT kind FROM events")]
            assert time.monotonic() - t0 < 0.5
        assert kinds == ["committed"]


def test_locked_database_is_one_clear_store_error(tmp_path):
    """A rollback-journal database held exclusively by another process: locked, not a hang."""
    path = tmp_path / "locked.db"
    Store.open(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA journal_mode = DELETE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        t0 = time.monotonic()
        with pytest.raises(StoreError, match="locked"):
            Store.open(path, readonly=True, busy_timeout_ms=200)
        assert time.monotonic() - t0 < 5
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_transactions_from_two_threads_do_not_interleave(db_path):
    with Store.open(db_path) as store:
        errors = []

        def work(tag: str) -> None:
            try:
                for k in range(50):
                    b = store.batch()
                    b.event(kind=tag, reason=str(k))
                    b.event(kind=tag, reason=str(k))
                    ids = store.flush(b)
                    assert ids[1] == ids[0] + 1
            except Exception as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(t,)) for t in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert store.query("SELECT COUNT(*) AS n FROM events")[0]["n"] == 200
