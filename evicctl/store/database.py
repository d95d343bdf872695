"""The SQLite store: numbered migrations, WAL, batched tick writes, read-only readers.

The manager is the only writer of placement state (DESIGN §4). The CLI and the dashboard
open the file read-only (a `mode=ro` URI: in WAL mode a reader never blocks the writer,
nor waits for it) and write only rows in `commands`, through a writable connection that
never creates the file.

No SQL here is built from user strings: values are always parameters, and table and
column names come only from the fixed whitelists below (the schema's own columns).
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evicctl.errors import StoreError
from evicctl.store.connect import (  # noqa: F401 (translate_error is part of this module's API)
    NO_DB_HINT,
    READER_BUSY_TIMEOUT_MS,
    WRITER_BUSY_TIMEOUT_MS,
    connect_readonly,
    connect_writer,
    translate_error,
)

if TYPE_CHECKING:  # sqlite_utils pulls in click and pluggy: ~0.25 s, loaded on first use
    import sqlite_utils

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "store.sqlite_schema.sql"

# Numbered migrations, applied in order, each in one transaction with its record in
# `schema_migrations` and PRAGMA user_version. Append only; never edit a shipped one.
MIGRATIONS: tuple[tuple[int, str, str | None], ...] = (
    (1, "schema", None),  # None: the statements of SCHEMA_FILE
    (
        2,
        "indexes for audit and retention",
        # The CLI lists the events a command caused; retention deletes old samples by time.
        # Partial: policy events (the bulk) carry no command and cost the index nothing.
        "CREATE INDEX IF NOT EXISTS events_command ON events (command_id) WHERE command_id IS NOT NULL;\n"
        "CREATE INDEX IF NOT EXISTS samples_ts ON samples (ts);\n"
        # Covering: `ls` reads the placed codec's quality for every context from the index alone.
        "CREATE INDEX IF NOT EXISTS profiles_quality ON profiles (context_id, codec, metric, quality);\n",
    ),
    (
        3,
        "cache-lifetime columns on events",
        # Set on evict, drop and lost events (the copy leaving from_tier): seconds on that tier,
        # since the context was first stored, since its last access; its hits; the copy's bytes
        # (`bytes` is the new copy's, 0 for a drop). `evicctl tiers` takes medians per tier
        # from the latest evictions: the partial index serves exactly those rows.
        "ALTER TABLE events ADD COLUMN lifetime_s REAL;\n"
        "ALTER TABLE events ADD COLUMN age_s REAL;\n"
        "ALTER TABLE events ADD COLUMN idle_s REAL;\n"
        "ALTER TABLE events ADD COLUMN hits INTEGER;\n"
        "ALTER TABLE events ADD COLUMN from_bytes INTEGER;\n"
        "CREATE INDEX IF NOT EXISTS events_lifetimes ON events (from_tier, id) WHERE lifetime_s IS NOT NULL;\n",
    ),
    (
        4,
        "the pricing inputs of each context's utility",
        # `evicctl show` reprices a context's options as the placer did (pricing.price_options):
        # it needs the access rate the last plan priced it at (freq keeps decaying after) and
        # its measured full prefill, which the placer prefers to the cost model's estimate.
        "ALTER TABLE contexts ADD COLUMN priced_freq REAL;\n"
        "ALTER TABLE contexts ADD COLUMN miss_s REAL;\n",
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]
_ADD_COLUMN = re.compile(r"\s*ALTER\s+TABLE\s+(\w+)\s+ADD\s+COLUMN\s+(\w+)", re.IGNORECASE)

# Primary keys of the tables a batch may upsert or delete: the whitelist of table names.
PRIMARY_KEYS: dict[str, tuple[str, ...]] = {
    "manager": ("id",),
    "tiers": ("name",),
    "contexts": ("id",),
    "placements": ("context_id",),
    "profiles": ("context_id", "codec", "metric"),
}
# Parents before children: upserts run in this order, deletes in the reverse.
_UPSERT_ORDER = ("manager", "tiers", "contexts", "placements", "profiles")
_PK_DEFAULTS = {"profiles": {"metric": "teacher-forced"}}
REQUIRED_TABLES = ("manager", "tiers", "contexts", "placements", "profiles", "events", "commands", "samples")



def _split_statements(script: str) -> list[str]:
    """Split a SQL script into statements (comment-aware), to run them in one transaction.

    executescript() would COMMIT first, so a migration could be half applied.
    """
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            if current.strip():
                statements.append(current.strip())
            current = ""
    if current.strip() and not all(
        ln.strip().startswith("--") or not ln.strip() for ln in current.splitlines()
    ):
        raise ValueError(f"incomplete SQL statement at the end of a migration: {current[:80]!r}")
    return statements


def _migration_sql(sql: str | None) -> str:
    return SCHEMA_FILE.read_text() if sql is None else sql


class Batch:
    """One tick's writes, applied together by `Store.flush` in one transaction.

    Upserts of the same row merge (later values win per column); a delete drops the
    pending upsert of that row. Partial rows update only the columns they name.
    """

    __slots__ = ("_rows", "_deletes", "events", "samples")

    def __init__(self) -> None:
        self._rows: dict[str, dict[tuple, dict[str, Any]]] = {}
        self._deletes: dict[str, dict[tuple, None]] = {}
        self.events: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []

    def upsert(self, table: str, row: Mapping[str, Any]) -> None:
        key = _pk_of(table, row)
        pending = self._rows.setdefault(table, {})
        merged = pending.get(key)
        if merged is None:
            pending[key] = {**_PK_DEFAULTS.get(table, {}), **row}
        else:
            merged.update(row)

    def delete(self, table: str, pk: Any) -> None:
        key = pk if isinstance(pk, tuple) else (pk,)
        if len(key) != len(_pks(table)):
            raise ValueError(f"{table}: primary key is {_pks(table)}; got {pk!r}")
        self._rows.get(table, {}).pop(key, None)
        self._deletes.setdefault(table, {})[key] = None

    def event(self, **columns: Any) -> None:
        columns.setdefault("ts", time.time())
        columns.setdefault("actor", "policy")
        self.events.append(columns)

    def followed_by(self, newer: Batch) -> Batch:
        """One batch with this one's writes, then `newer`'s: what a flush that failed (and so
        wrote nothing) and the writes collected since amount to together."""
        merged = Batch()
        for source in (self, newer):
            for table, keys in source._deletes.items():
                for key in keys:
                    merged.delete(table, key)
            for table, rows in source._rows.items():
                for row in rows.values():
                    merged.upsert(table, row)
            merged.events += source.events
            merged.samples += source.samples
        return merged

    def sample(self, **columns: Any) -> None:
        columns.setdefault("ts", time.time())
        self.samples.append(columns)

    def __len__(self) -> int:
        rows = sum(len(r) for r in self._rows.values()) + sum(len(d) for d in self._deletes.values())
        return rows + len(self.events) + len(self.samples)


def _pks(table: str) -> tuple[str, ...]:
    try:
        return PRIMARY_KEYS[table]
    except KeyError:
        raise ValueError(f"table {table!r} cannot be upserted; valid: {', '.join(PRIMARY_KEYS)}") from None


def _pk_of(table: str, row: Mapping[str, Any]) -> tuple:
    defaults = _PK_DEFAULTS.get(table, {})
    try:
        return tuple(row[c] if c in row else defaults[c] for c in _pks(table))
    except KeyError as exc:
        raise ValueError(f"{table} row lacks primary key column {exc.args[0]!r}") from None


class Store:
    """An open evicctl database. Use `Store.open`; thread-safe for one writer object."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        *,
        readonly: bool,
        samples_retention_s: float,
        samples_max_rows: int,
    ) -> None:
        self.path, self.readonly = path, readonly
        self.samples_retention_s, self.samples_max_rows = samples_retention_s, samples_max_rows
        self._conn = conn
        self._db: sqlite_utils.Database | None = None
        # The manager writes from its control thread and the engine thread: one lock per
        # connection keeps their transactions from interleaving.
        self.lock = threading.RLock()
        self._depth = 0
        self._columns: dict[str, tuple[str, ...]] = {}

    # ---- opening -------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        path: Path | str,
        *,
        readonly: bool = False,
        create: bool = True,
        busy_timeout_ms: int | None = None,
        samples_retention_s: float = 3600.0,
        samples_max_rows: int = 200_000,
    ) -> Store:
        path = Path(path).expanduser()
        try:
            if readonly:
                conn = connect_readonly(path, busy_timeout_ms or READER_BUSY_TIMEOUT_MS)
            else:
                conn = connect_writer(path, create, busy_timeout_ms or WRITER_BUSY_TIMEOUT_MS)
        except sqlite3.Error as exc:
            raise translate_error(exc, path) from exc
        store = cls(
            conn,
            path,
            readonly=readonly,
            samples_retention_s=samples_retention_s,
            samples_max_rows=samples_max_rows,
        )
        try:
            if readonly:
                store._check_schema()
            else:
                store.migrate()
        except sqlite3.Error as exc:
            conn.close()
            raise translate_error(exc, path) from exc
        except StoreError:
            conn.close()
            raise
        return store

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self.lock:
            self._conn.close()

    @property
    def conn(self) -> sqlite3.Connection:
        return self._conn

    @property
    def db(self) -> sqlite_utils.Database:
        """The sqlite_utils view of the same connection (loaded on first use)."""
        if self._db is None:
            import sqlite_utils

            self._db = sqlite_utils.Database(self._conn, execute_plugins=False)
        return self._db

    # ---- schema --------------------------------------------------------------------
    def schema_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def migrate(self) -> list[int]:
        """Apply pending migrations, each in one transaction; returns the versions applied."""
        applied: list[int] = []
        if self.schema_version() >= SCHEMA_VERSION:
            return applied  # the common case: no write lock taken at all
        with self.transaction():
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
            )
        for version, name, sql in MIGRATIONS:
            with self.transaction():
                # Re-checked inside the write lock: two processes may migrate at once.
                done = self._conn.execute(
                    "SELECT 1 FROM schema_migrations WHERE version = ?", (version,)
                ).fetchone()
                if done:
                    continue
                for statement in _split_statements(_migration_sql(sql)):
                    if not self._column_exists(statement):
                        self._conn.execute(statement)
                self._conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (version, name, time.time()),
                )
                # PRAGMA takes no parameters; `version` is an int from MIGRATIONS above.
                self._conn.execute(f"PRAGMA user_version = {int(version)}")
                applied.append(version)
        self._columns.clear()
        return applied

    def _column_exists(self, statement: str) -> bool:
        """Whether `statement` adds a column the table already has. SQLite has no ADD COLUMN IF
        NOT EXISTS, and a re-run over a half-migrated file (migrations recorded, schema not)
        must not fail on it, as CREATE ... IF NOT EXISTS does not."""
        match = _ADD_COLUMN.match(statement)
        if match is None:
            return False
        table, column = match.groups()
        # table_info takes no parameter; the name comes from our own migration text
        return any(r[1] == column for r in self._conn.execute(f"PRAGMA table_info({table})"))

    def _check_schema(self) -> None:
        names = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        missing = [t for t in REQUIRED_TABLES if t not in names]
        if missing:
            raise StoreError(
                f"database {self.path} is not an evicctl database (no table {missing[0]}); {NO_DB_HINT}"
            )

    def columns(self, table: str) -> tuple[str, ...]:
        """The table's column names, from the schema: the whitelist for batch rows."""
        cols = self._columns.get(table)
        if cols is None:
            if table not in REQUIRED_TABLES:
                raise ValueError(f"unknown table {table!r}")
            # table_info cannot take a parameter; `table` is checked against the whitelist.
            cols = tuple(r[1] for r in self._conn.execute(f"PRAGMA table_info({table})"))
            self._columns[table] = cols
        return cols

    # ---- transactions --------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error). Nested calls join the outer one."""
        with self.lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self._conn
                finally:
                    self._depth -= 1
                return
            self._conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self._conn
            except BaseException:
                self._depth = 0
                self._conn.execute("ROLLBACK")
                raise
            self._depth = 0
            self._conn.execute("COMMIT")

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every query inside sees the same snapshot of the database."""
        with self.lock:
            if self._depth:
                yield self._conn
                return
            self._conn.execute("BEGIN")
            self._depth = 1
            try:
                yield self._conn
            finally:
                self._depth = 0
                self._conn.execute("COMMIT")

    def data_version(self) -> int:
        """Changes whenever another connection commits: a cheap poll for new data."""
        with self.lock:
            return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    def query(self, sql: str, params: tuple | list = ()) -> list[sqlite3.Row]:
        """Run a fixed SELECT with parameters; rows index by column name."""
        with self.lock:
            cur = self._conn.execute(sql, params)
            cur.row_factory = sqlite3.Row
            return cur.fetchall()

    # ---- batched tick writes -------------------------------------------------------
    def batch(self) -> Batch:
        return Batch()

    def flush(self, batch: Batch) -> list[int]:
        """Write a batch in ONE transaction (executemany per table and column set).

        Returns the ids of the new events, in the order they were added.
        """
        with self.transaction() as conn:
            for table in reversed(_UPSERT_ORDER):
                keys = list(batch._deletes.get(table, ()))
                if keys:
                    where = " AND ".join(f"{c} = ?" for c in _pks(table))
                    conn.executemany(f"DELETE FROM {table} WHERE {where}", keys)
            for table in _UPSERT_ORDER:
                rows = batch._rows.get(table)
                if rows:
                    self._upsert_many(table, rows.values())
            event_ids = self._insert_events(batch.events)
            if batch.samples:
                self._insert_full("samples", batch.samples)
                self._apply_retention()
        return event_ids

    def _upsert_many(self, table: str, rows: Any) -> None:
        groups: dict[tuple[str, ...], list[tuple]] = {}
        for row in rows:
            cols = tuple(row)
            groups.setdefault(cols, []).append(tuple(row[c] for c in cols))
        pk = _pks(table)
        required = self._required_columns(table)
        for cols, values in groups.items():
            self._check_columns(table, cols)
            updates = [c for c in cols if c not in pk]
            if not required <= set(cols):
                # A partial row: SQLite checks NOT NULL on the would-be INSERT before it
                # resolves the conflict, so update the existing row instead (none: no-op).
                if updates:
                    sets = ", ".join(f"{c} = ?" for c in updates)
                    where = " AND ".join(f"{c} = ?" for c in pk)
                    index = {c: i for i, c in enumerate(cols)}
                    order = [index[c] for c in (*updates, *pk)]
                    self._conn.executemany(
                        f"UPDATE {table} SET {sets} WHERE {where}", [tuple(v[i] for i in order) for v in values]
                    )
                continue
            action = (
                "DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in updates)
                if updates
                else "DO NOTHING"
            )
            sql = (
                f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
                f"ON CONFLICT ({', '.join(pk)}) {action}"
            )
            self._conn.executemany(sql, values)

    def _required_columns(self, table: str) -> set[str]:
        """NOT NULL columns without a default: a row lacking one cannot be inserted."""
        key = f"required:{table}"
        cached = self._columns.get(key)
        if cached is None:
            self.columns(table)  # checks the table name against the whitelist
            info = self._conn.execute(f"PRAGMA table_info({table})").fetchall()
            cached = tuple(r[1] for r in info if r[3] and r[4] is None and not (r[5] and r[2].upper() == "INTEGER"))
            self._columns[key] = cached
        return set(cached)

    def _check_columns(self, table: str, cols: tuple[str, ...]) -> None:
        known = self.columns(table)
        unknown = [c for c in cols if c not in known]
        if unknown:
            raise ValueError(f"{table} has no column {unknown[0]!r}; columns: {', '.join(known)}")

    def _insert_full(self, table: str, rows: list[dict[str, Any]]) -> None:
        cols = tuple(c for c in self.columns(table) if c != "id")
        known = frozenset(cols)
        for row in rows:
            if not row.keys() <= known:
                self._check_columns(table, tuple(row))
        sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        # map(row.get, cols) keeps the per-row work in C: this is the batched tick's hot path
        # (tens of thousands of events a second); positional parameters bind faster than named.
        self._conn.executemany(sql, [tuple(map(r.get, cols)) for r in rows])

    def _insert_events(self, events: list[dict[str, Any]]) -> list[int]:
        if not events:
            return []
        # AUTOINCREMENT ids are handed out in order inside our write transaction, so the
        # new ids are the range after the sequence value read before the insert.
        before = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        first = (before[0] if before else 0) + 1
        self._insert_full("events", events)
        last = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()[0]
        if last - first + 1 != len(events):  # cannot happen under the write lock; be loud if it does
            raise StoreError(f"event ids not contiguous: {first}..{last} for {len(events)} events")
        return list(range(first, last + 1))

    def _apply_retention(self) -> None:
        """Samples are bounded by age and by row count, so a long run stays small."""
        self._conn.execute("DELETE FROM samples WHERE ts < ?", (time.time() - self.samples_retention_s,))
        self._conn.execute(
            "DELETE FROM samples WHERE rowid <= (SELECT MAX(rowid) FROM samples) - ?",
            (self.samples_max_rows,),
        )


