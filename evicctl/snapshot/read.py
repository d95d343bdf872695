"""The immutable read model shared by the CLI and the dashboard.

One `read_snapshot` call reads inside one read transaction, so every part of a snapshot
comes from the same instant. Sorting, filtering and paging happen in SQL: with 100,000
contexts only the rows asked for cross into Python.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from evicctl.errors import NoSuchContextError, UnknownNameError
from evicctl.manager.description import ManagerDescription
from evicctl.store.database import Store

HIT_RATE_WINDOW_S = 60.0
HISTORY_POINTS = 60


@dataclass(frozen=True, slots=True)
class ManagerInfo:
    pid: int
    host: str
    version: str
    started_at: float
    heartbeat_at: float
    stopped_at: float | None
    alive: bool
    description: ManagerDescription = field(hash=False, compare=False)


@dataclass(frozen=True, slots=True)
class TierRow:
    name: str
    backend: str
    rank: int
    capacity_bytes: int
    used_bytes: int
    read_bps: float
    write_bps: float
    hits: int
    hit_rate_1m: float | None  # this tier's hits / all lookups over the last minute
    occupancy_history: tuple[float, ...]  # used/capacity of the last samples, oldest first
    contexts: int = 0  # contexts placed on this tier

    @property
    def used_fraction(self) -> float:
        return self.used_bytes / self.capacity_bytes if self.capacity_bytes else 0.0


@dataclass(frozen=True, slots=True)
class ContextRow:
    id: str
    label: str | None
    tenant: str
    tokens: int
    raw_bytes: int
    tier: str | None  # None: known but not placed yet; "dropped": recomputed on next use
    codec: str | None
    stored_bytes: int | None
    compression_ratio: float | None  # raw_bytes / stored_bytes
    quality: float | None  # profiled quality of the current codec
    utility: float | None
    freq: float
    hits: int
    misses: int
    last_access_at: float
    pin_tier: str | None
    pin_codec: str | None
    quality_floor: float | None
    created_at: float = 0.0


@dataclass(frozen=True, slots=True)
class EventRow:
    id: int
    ts: float
    context_id: str | None
    kind: str
    from_tier: str | None
    to_tier: str | None
    from_codec: str | None
    to_codec: str | None
    bytes: int | None
    utility_before: float | None
    utility_after: float | None
    reason: str | None
    actor: str
    command_id: int | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    taken_at: float
    manager: ManagerInfo | None
    tiers: tuple[TierRow, ...]
    contexts: tuple[ContextRow, ...]
    contexts_total: int  # matching the filter, before limit/offset
    events: tuple[EventRow, ...]  # newest first
    misses_total: int


EVENT_COLUMNS = tuple(EventRow.__dataclass_fields__)
CONTEXT_FIELDS = tuple(f for f in ContextRow.__dataclass_fields__ if f != "created_at")

# Sort keys -> SQL expression; the only way a sort reaches SQL (a whitelist).
SORT_KEYS: dict[str, str] = {
    "utility": "c.utility",
    "size": "p.stored_bytes",
    "raw": "c.raw_bytes",
    "ratio": "(CAST(c.raw_bytes AS REAL) / NULLIF(p.stored_bytes, 0))",
    "quality": "__quality__",
    "freq": "c.freq",
    "hits": "c.hits",
    "misses": "c.misses",
    # age = time since last access: a larger age is an older access
    "age": "(-c.last_access_at)",
    "last_access": "c.last_access_at",
    "created": "c.created_at",
    "tokens": "c.tokens",
    "id": "c.id",
    "label": "c.label",
    "tenant": "c.tenant",
    "tier": "(SELECT t.rank FROM tiers t WHERE t.name = p.tier)",
    "codec": "p.codec",
    "pinned": "(c.pin_tier IS NOT NULL OR c.pin_codec IS NOT NULL)",
}
SORT_CHOICES = ("utility", "size", "hits", "age", "quality")  # the CLI contract's list; all keys work

# Quality of the placed codec: the placer's metric (a primary-key lookup in the join),
# else the newest other metric; `none` is the reference, so exact.
_QUALITY_SQL = (
    "CASE WHEN p.codec = 'none' THEN (CASE WHEN p.tier != 'dropped' THEN 1.0 END)"
    " ELSE COALESCE(q.quality, (SELECT q2.quality FROM profiles q2 WHERE q2.context_id = c.id"
    " AND q2.codec = p.codec ORDER BY q2.measured_at DESC LIMIT 1)) END"
)
# (name, SQL) in ContextRow's field order: one definition for tuples, CSV and SQL-side JSON.
_CONTEXT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "c.id"),
    ("label", "c.label"),
    ("tenant", "c.tenant"),
    ("tokens", "c.tokens"),
    ("raw_bytes", "c.raw_bytes"),
    ("tier", "p.tier"),
    ("codec", "p.codec"),
    ("stored_bytes", "p.stored_bytes"),
    ("compression_ratio", "CAST(c.raw_bytes AS REAL) / NULLIF(p.stored_bytes, 0)"),
    ("quality", _QUALITY_SQL),
    ("utility", "c.utility"),
    ("freq", "c.freq"),
    ("hits", "c.hits"),
    ("misses", "c.misses"),
    ("last_access_at", "c.last_access_at"),
    ("pin_tier", "c.pin_tier"),
    ("pin_codec", "c.pin_codec"),
    ("quality_floor", "c.quality_floor"),
    ("created_at", "c.created_at"),
)
_CONTEXT_FROM = (
    " FROM contexts c LEFT JOIN placements p ON p.context_id = c.id"
    " LEFT JOIN profiles q ON q.context_id = c.id AND q.codec = p.codec AND q.metric = 'teacher-forced'"
)
SORT_KEYS["quality"] = _QUALITY_SQL
_CONTEXT_SELECT = "SELECT " + ", ".join(f"{sql} AS {name}" for name, sql in _CONTEXT_COLUMNS) + _CONTEXT_FROM
# SQLite renders the JSON itself: for 100,000 rows this is several times faster than
# building Python objects and calling json.dumps (`evicctl ls -o json`, goal <= 1 s).
_CONTEXT_SELECT_JSON = (
    "SELECT json_object("
    + ", ".join(f"'{name}', {sql}" for name, sql in _CONTEXT_COLUMNS if name in CONTEXT_FIELDS)
    + ") AS row_json"
    + _CONTEXT_FROM
)


@dataclass(frozen=True, slots=True)
class ContextFilter:
    """Filters for the contexts list; `search` accepts `tier:X tenant:X codec:X pinned` and substrings."""

    tier: str | None = None
    tenant: str | None = None
    codec: str | None = None
    pinned: bool | None = None
    text: tuple[str, ...] = ()

    @classmethod
    def parse(cls, *, tier=None, tenant=None, search: str | None = None) -> ContextFilter:
        codec, pinned, text = None, None, []
        for term in (search or "").split():
            key, sep, value = term.partition(":")
            if sep and key == "tier" and value:
                tier = value
            elif sep and key == "tenant" and value:
                tenant = value
            elif sep and key == "codec" and value:
                codec = value
            elif term == "pinned":
                pinned = True
            else:
                text.append(term.lower())
        return cls(tier, tenant, codec, pinned, tuple(text))

    def where(self) -> tuple[str, list[Any]]:
        clauses, params = [], []
        if self.tier is not None:
            clauses.append("p.tier = ?")
            params.append(self.tier)
        if self.tenant is not None:
            clauses.append("c.tenant = ?")
            params.append(self.tenant)
        if self.codec is not None:
            clauses.append("p.codec = ?")
            params.append(self.codec)
        if self.pinned:
            clauses.append("(c.pin_tier IS NOT NULL OR c.pin_codec IS NOT NULL)")
        for term in self.text:
            clauses.append(
                "(instr(lower(c.id), ?) > 0 OR instr(lower(COALESCE(c.label, '')), ?) > 0"
                " OR instr(lower(c.tenant), ?) > 0)"
            )
            params += [term, term, term]
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def read_snapshot(
    store: Store,
    *,
    sort: str = "utility",
    descending: bool = True,
    tier: str | None = None,
    tenant: str | None = None,
    search: str | None = None,
    limit: int | None = None,
    offset: int = 0,
    events_limit: int = 50,
    now: float | None = None,
) -> Snapshot:
    """One consistent picture of the store (see the module docstring)."""
    now = time.time() if now is None else now
    filt = ContextFilter.parse(tier=tier, tenant=tenant, search=search)
    with store.read():
        manager = read_manager(store, now=now)
        tiers = read_tiers(store, now=now)
        contexts, total = _read_contexts(store, filt, sort, descending, limit, offset)
        events = _rows_to_events(
            store.query(f"SELECT {', '.join(EVENT_COLUMNS)} FROM events ORDER BY id DESC LIMIT ?", (events_limit,))
        )
        misses = store.query("SELECT COALESCE(SUM(misses), 0) AS n FROM contexts")[0]["n"]
    return Snapshot(now, manager, tiers, contexts, total, events, int(misses))


def read_manager(store: Store, *, now: float | None = None) -> ManagerInfo | None:
    rows = store.query(
        "SELECT pid, host, version, started_at, heartbeat_at, stopped_at, config_json FROM manager WHERE id = 1"
    )
    if not rows:
        return None
    r = rows[0]
    description = ManagerDescription.from_json(r["config_json"])
    now = time.time() if now is None else now
    alive = r["stopped_at"] is None and now - r["heartbeat_at"] <= description.heartbeat_timeout_s
    return ManagerInfo(
        r["pid"], r["host"], r["version"], r["started_at"], r["heartbeat_at"], r["stopped_at"], alive, description
    )


def read_tiers(store: Store, *, now: float | None = None, history_points: int = HISTORY_POINTS) -> tuple[TierRow, ...]:
    now = time.time() if now is None else now
    rows = store.query(
        "SELECT name, backend, rank, capacity_bytes, used_bytes, read_bps, write_bps, hits FROM tiers ORDER BY rank, name"
    )
    placed = {
        r["tier"]: r["n"] for r in store.query("SELECT tier, COUNT(*) AS n FROM placements GROUP BY tier")
    }
    deltas = {r["name"]: _sample_delta(store, r["name"], now - HIT_RATE_WINDOW_S) for r in rows}
    misses_delta = next((d[1] for d in deltas.values() if d is not None), 0)
    lookups = sum(d[0] for d in deltas.values() if d is not None) + misses_delta
    out = []
    for r in rows:
        delta = deltas[r["name"]]
        hit_rate = delta[0] / lookups if delta is not None and lookups > 0 else None
        hist = store.query(
            "SELECT used_bytes, capacity_bytes FROM samples WHERE tier = ? ORDER BY ts DESC LIMIT ?",
            (r["name"], history_points),
        )
        occupancy = tuple(h["used_bytes"] / h["capacity_bytes"] if h["capacity_bytes"] else 0.0 for h in reversed(hist))
        out.append(
            TierRow(
                r["name"], r["backend"], r["rank"], r["capacity_bytes"], r["used_bytes"], r["read_bps"],
                r["write_bps"], r["hits"], hit_rate, occupancy, int(placed.get(r["name"], 0)),
            )
        )
    return tuple(out)


def _sample_delta(store: Store, tier: str, since: float) -> tuple[int, int] | None:
    """(hits, misses) gained over the window, from the cumulative counters in `samples`."""
    last = store.query("SELECT hits, misses FROM samples WHERE tier = ? ORDER BY ts DESC LIMIT 1", (tier,))
    if not last:
        return None
    # The baseline is the last sample before the window, else the first inside it.
    base = store.query(
        "SELECT hits, misses FROM samples WHERE tier = ? AND ts <= ? ORDER BY ts DESC LIMIT 1", (tier, since)
    ) or store.query("SELECT hits, misses FROM samples WHERE tier = ? ORDER BY ts LIMIT 1", (tier,))
    return max(0, last[0]["hits"] - base[0]["hits"]), max(0, last[0]["misses"] - base[0]["misses"])


def _context_query(filt: ContextFilter, sort: str, descending: bool, limit, offset) -> tuple[str, list[Any]]:
    """WHERE + ORDER BY + LIMIT for the contexts list; values as parameters only."""
    expr = SORT_KEYS.get(sort)
    if expr is None:
        raise UnknownNameError("sort key", sort, tuple(SORT_KEYS))
    where, params = filt.where()
    direction = "DESC" if descending else "ASC"
    # NULLs last whichever the direction; the id breaks ties so pages are stable.
    order = f" ORDER BY ({expr}) IS NULL, ({expr}) {direction}, c.id ASC"
    return where + order + " LIMIT ? OFFSET ?", params + [-1 if limit is None else int(limit), int(offset)]


def read_contexts(
    store: Store,
    *,
    sort: str = "utility",
    descending: bool = True,
    tier: str | None = None,
    tenant: str | None = None,
    search: str | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> tuple[tuple[ContextRow, ...], int]:
    """One page of the contexts list and the number of contexts matching the filter."""
    filt = ContextFilter.parse(tier=tier, tenant=tenant, search=search)
    with store.read():
        return _read_contexts(store, filt, sort, descending, limit, offset)


def _read_contexts(store, filt, sort, descending, limit, offset) -> tuple[tuple[ContextRow, ...], int]:
    tail, params = _context_query(filt, sort, descending, limit, offset)
    with store.lock:
        rows = store.conn.execute(_CONTEXT_SELECT + tail, params).fetchall()
    total = len(rows) if limit is None and offset == 0 else count_contexts(store, filt)
    return tuple(ContextRow(*r) for r in rows), int(total)


def count_contexts(store: Store, filt: ContextFilter) -> int:
    where, params = filt.where()
    joins = _CONTEXT_FROM if where else " FROM contexts c"
    return int(store.query(f"SELECT COUNT(*) AS n{joins}{where}", params)[0]["n"])


def iter_contexts(
    store: Store,
    *,
    sort: str = "utility",
    descending: bool = True,
    tier: str | None = None,
    tenant: str | None = None,
    search: str | None = None,
    limit: int | None = None,
    offset: int = 0,
    as_json: bool = False,
    chunk: int = 5000,
):
    """Stream the contexts list: tuples in CONTEXT_FIELDS order, or JSON object strings.

    For large outputs (`evicctl ls -o json|jsonl|csv`): nothing but the current chunk
    lives in Python. Runs inside one read transaction, so the stream is consistent.
    """
    filt = ContextFilter.parse(tier=tier, tenant=tenant, search=search)
    tail, params = _context_query(filt, sort, descending, limit, offset)
    select = _CONTEXT_SELECT_JSON if as_json else _CONTEXT_SELECT
    with store.read():
        cur = store.conn.execute(select + tail, params)
        while rows := cur.fetchmany(chunk):
            if as_json:
                yield from (r[0] for r in rows)
            else:
                yield from (r[: len(CONTEXT_FIELDS)] for r in rows)


def iter_contexts_json_chunks(store: Store, *, chunk: int = 5000, **query):
    """Like iter_contexts(as_json=True), a list of JSON object strings per chunk (fewer writes)."""
    filt = ContextFilter.parse(tier=query.pop("tier", None), tenant=query.pop("tenant", None),
                               search=query.pop("search", None))
    tail, params = _context_query(filt, query.pop("sort", "utility"), query.pop("descending", True),
                                  query.pop("limit", None), query.pop("offset", 0))
    if query:
        raise TypeError(f"unexpected arguments: {', '.join(query)}")
    with store.read():
        cur = store.conn.execute(_CONTEXT_SELECT_JSON + tail, params)
        while rows := cur.fetchmany(chunk):
            yield [r[0] for r in rows]


def _rows_to_events(rows) -> tuple[EventRow, ...]:
    return tuple(EventRow(*r) for r in rows)


def read_context_row(store: Store, context_id: str) -> ContextRow:
    with store.lock:
        row = store.conn.execute(_CONTEXT_SELECT + " WHERE c.id = ?", (context_id,)).fetchone()
    if row is None:
        raise NoSuchContextError(context_id)
    return ContextRow(*row)


def read_events(
    store: Store,
    *,
    context_id: str | None = None,
    since: float | None = None,
    kind: str | None = None,
    actor: str | None = None,
    after_id: int | None = None,
    command_id: int | None = None,
    ids: tuple[int, ...] | None = None,
    limit: int | None = None,
) -> tuple[EventRow, ...]:
    """Events in chronological order (ascending id).

    With `after_id` the first `limit` events after it (a follower catching up page by
    page); otherwise the latest `limit` events.
    """
    clauses, params = [], []
    for column, value in (("context_id", context_id), ("kind", kind), ("actor", actor), ("command_id", command_id)):
        if value is not None:
            clauses.append(f"{column} = ?")  # column names from the fixed tuple above
            params.append(value)
    if since is not None:
        clauses.append("ts >= ?")
        params.append(since)
    if after_id is not None:
        clauses.append("id > ?")
        params.append(after_id)
    if ids is not None:
        clauses.append(f"id IN ({', '.join('?' * len(ids))})" if ids else "0")
        params += list(ids)
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    lim = -1 if limit is None else int(limit)
    newest_first = after_id is None and limit is not None
    order = "DESC" if newest_first else "ASC"
    rows = store.query(
        f"SELECT {', '.join(EVENT_COLUMNS)} FROM events{where} ORDER BY id {order} LIMIT ?", params + [lim]
    )
    events = _rows_to_events(rows)
    return tuple(reversed(events)) if newest_first else events


def last_event_id(store: Store) -> int:
    return int(store.query("SELECT COALESCE(MAX(id), 0) AS n FROM events")[0]["n"])


__all__ = [  # a context in detail: snapshot.detail.read_context
    "ContextFilter",
    "ContextRow",
    "count_contexts",
    "iter_contexts",
    "iter_contexts_json_chunks",
    "EventRow",
    "ManagerInfo",
    "Snapshot",
    "TierRow",
    "last_event_id",
    "read_context_row",
    "read_contexts",
    "read_events",
    "read_manager",
    "read_snapshot",
    "read_tiers",
]
