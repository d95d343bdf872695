"""Cache-lifetime telemetry from the store: what evict, drop and lost events recorded about
the copy that left (migration 3's columns), for `evicctl show` and `evicctl tiers`.

A database no manager has migrated to version 3 yet has no such columns: every reader here
then returns nothing instead of failing, since `show` and `tiers` open the store read-only.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from evicctl.store.database import Store

SUMMARY_WINDOW = 1000  # `tiers` takes medians over each tier's latest evictions, this many at most
LIFETIME_COLUMNS = ("lifetime_s", "age_s", "idle_s", "hits", "from_bytes")


@dataclass(frozen=True, slots=True)
class LifetimeRow:
    """One copy that left a tier."""

    event_id: int
    ts: float
    kind: str  # evict | drop | lost
    from_tier: str
    to_tier: str | None
    lifetime_s: float  # on from_tier, since the copy was written there
    age_s: float | None  # since the context was first stored
    idle_s: float | None  # since its last access
    hits: int | None
    from_bytes: int | None


@dataclass(frozen=True, slots=True)
class TierLifetimes:
    """Medians over a tier's latest evictions (at most SUMMARY_WINDOW)."""

    evictions: int
    median_lifetime_s: float | None
    median_idle_s: float | None


def has_lifetimes(store: Store) -> bool:
    return "lifetime_s" in store.columns("events")


def read_lifetimes(store: Store, context_id: str, *, limit: int = 20) -> tuple[LifetimeRow, ...]:
    """The context's latest evictions, oldest first."""
    if not has_lifetimes(store):
        return ()
    rows = store.query(
        "SELECT id, ts, kind, from_tier, to_tier, lifetime_s, age_s, idle_s, hits, from_bytes FROM events"
        " WHERE context_id = ? AND lifetime_s IS NOT NULL ORDER BY id DESC LIMIT ?",
        (context_id, int(limit)),
    )
    return tuple(LifetimeRow(*r) for r in reversed(rows))


def tier_lifetimes(store: Store, tiers: list[str]) -> dict[str, TierLifetimes]:
    """Median lifetime and idle-at-eviction of each tier's latest evictions (events_lifetimes index)."""
    if not has_lifetimes(store):
        return {}
    out = {}
    for tier in tiers:
        rows = store.query(
            "SELECT lifetime_s, idle_s FROM events WHERE from_tier = ? AND lifetime_s IS NOT NULL"
            " ORDER BY id DESC LIMIT ?",
            (tier, SUMMARY_WINDOW),
        )
        idle = [r["idle_s"] for r in rows if r["idle_s"] is not None]
        out[tier] = TierLifetimes(
            evictions=len(rows),
            median_lifetime_s=statistics.median(r["lifetime_s"] for r in rows) if rows else None,
            median_idle_s=statistics.median(idle) if idle else None,
        )
    return out
