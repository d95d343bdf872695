"""Prometheus metrics: the one recorder the manager calls where it already records an event.

Off (ManagerConfig.metrics_port is None, the default) the recorder is `NULL`: every call is
a no-op and prometheus_client is never imported, so an engine that does not ask for metrics
pays one attribute lookup and an empty call per event.

On, `metrics_start.start_metrics` loads metrics_prom (the event counters and histograms) and
metrics_collector (state read at scrape time: tiers, contexts, counters the manager keeps)
and serves both on http://bind:port/metrics from prometheus_client's own server thread. The
names, types and labels are listed in docs/metrics.md.

Cache-lifetime telemetry lives here too, because the store and the histograms must agree:
`lifetime_of` is the one computation of a leaving copy's age, idle time, hits and bytes; the
move executor writes it into the event row and hands it to the recorder.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from evicctl.errors import UsageError

if TYPE_CHECKING:
    from evicctl.manager.state import ContextState

# Event kinds after which a copy is gone from its tier: where lifetimes are recorded.
EVICTION_KINDS = ("evict", "drop", "lost")
MAX_TENANT_LABELS = 32  # tenants beyond this share the label "other" (bounded series)
OTHER = "other"


class MetricsServerError(UsageError):
    """The /metrics server could not listen on the configured address (port in use, bad bind)."""


@dataclass(frozen=True, slots=True)
class Lifetime:
    """A copy leaving its tier: how long it lived there and how much it was used."""

    lifetime_s: float  # on the tier it leaves, since it was written there (placed or recompressed)
    age_s: float  # since the context was first stored
    idle_s: float  # since its last access (hit or miss)
    hits: int  # the context's hits so far
    from_bytes: int  # stored bytes of the copy that leaves

    def columns(self) -> dict:
        """The event row's lifetime columns (migration 3)."""
        return {"lifetime_s": self.lifetime_s, "age_s": self.age_s, "idle_s": self.idle_s, "hits": self.hits,
                "from_bytes": self.from_bytes}  # fmt: skip


def lifetime_of(ctx: ContextState, now: float) -> Lifetime:
    """The lifetime of ctx's current copy, read before the move changes it (caller holds the lock)."""
    return Lifetime(
        lifetime_s=max(0.0, now - ctx.since),
        age_s=max(0.0, now - ctx.created_at),
        idle_s=max(0.0, now - ctx.last_access_at),
        hits=int(ctx.hits),
        from_bytes=int(ctx.stored_bytes),
    )


class TenantLabels:
    """Tenant -> label value: the first MAX_TENANT_LABELS tenants keep their name, later ones
    are "other", so a store with thousands of tenants cannot explode the series count."""

    def __init__(self, limit: int = MAX_TENANT_LABELS) -> None:
        self._limit, self._known, self._lock = limit, set(), threading.Lock()

    def __call__(self, tenant: str | None) -> str:
        tenant = tenant or "default"
        if tenant in self._known:
            return tenant
        with self._lock:
            if len(self._known) < self._limit:
                self._known.add(tenant)
                return tenant
        return OTHER


class Recorder:
    """The hooks the manager calls. This base does nothing: it is the recorder when metrics are
    off, and the interface metrics_prom.PromRecorder implements."""

    url: str | None = None  # where /metrics is served; None when off

    def lookup_hit(self, tier: str, codec: str, tenant: str, tokens: int, nbytes: int, load_s: float) -> None:
        """A lookup served from `tier`; load_s = tier read + decode to the compute device."""

    def lookup_miss(self, tenant: str, tokens: int) -> None:
        """A lookup of a known context with no stored copy (recomputed by the engine)."""

    def lookup_new(self) -> None:
        """A lookup of a context the manager has never stored."""

    def prefill(self, cached_tokens: int, seconds: float) -> None:
        """The engine's prefill after its last lookup on this thread: closes that request's TTFT."""

    def moved(self, kind: str, from_tier: str | None, to_tier: str | None, reason: str | None, tenant: str,
              nbytes: int, lifetime: Lifetime | None) -> None:  # fmt: skip
        """One executed move (an event kind: admit, move, compress, evict, drop)."""

    def lost(self, tier: str | None, reason: str, tenant: str, lifetime: Lifetime | None) -> None:
        """A copy that failed its checksum or vanished."""

    def command(self, verb: str, status: str) -> None:
        """An operator command answered (done, refused, failed)."""

    def profiled(self, codec: str) -> None:
        """A profile stored for one (context, codec)."""

    def reprofile_flagged(self) -> None:
        """Online quality flagged a profile as stale."""

    def planned(self, seconds: float, moves: int) -> None:
        """One placer run: its wall time and the number of moves in the plan."""

    def close(self) -> None:
        """Stop serving."""


NULL = Recorder()


__all__ = [
    "EVICTION_KINDS",
    "NULL",
    "Lifetime",
    "MetricsServerError",
    "Recorder",
    "TenantLabels",
    "lifetime_of",
]
