"""The recorder when metrics are on: counters and histograms fed by the manager's hooks.

Loaded only by metrics.start_metrics (this module imports prometheus_client). Every metric
lives in a registry of its own, not the library's global one: two managers in one process
(tests, an engine with two caches) serve two endpoints without clashing names.

A hook does a dict lookup and a locked add per metric (~1-2 us each): the lookup path gains
a few microseconds against milliseconds of tier reads and decodes.
"""

from __future__ import annotations

import logging
import threading

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from evicctl.manager.metrics import (
    EVICTION_KINDS,
    Lifetime,
    MetricsServerError,
    Recorder,
    TenantLabels,
)
from evicctl.manager.metrics_collector import ManagerCollector, family_label

log = logging.getLogger(__name__)

# Bucket bounds. Seconds for latencies: a CPU-tier hit is ~1 ms, a disk hit tens of ms, a
# full prefill of a long context seconds (DESIGN §8: 0.33 s hit vs 3.1 s miss in the demo).
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Lifetimes: seconds to a day (a context's freq half-life is 300 s by default).
LIFETIME_BUCKETS_S = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
HITS_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 500, 1000)
BYTES_BUCKETS = tuple(float(64 << 10) * 4**k for k in range(10))  # 64 KiB .. 16 GiB
PLACER_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
PLAN_MOVES_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 500, 1000, 5000)
MISS = "miss"  # the tier label of a TTFT that had no cached KV (a full prefill)


class PromRecorder(Recorder):
    """Counters and histograms in `registry` (see docs/metrics.md for each one's meaning)."""

    def __init__(self, registry: CollectorRegistry, tenants: TenantLabels) -> None:
        self.registry, self.tenant = registry, tenants
        self._pending = threading.local()  # the last lookup on this thread, until its prefill
        r = dict(registry=registry)
        self.lookups = Counter("evicctl_lookups", "Lookups by result: hit, miss (known, no copy), new (never stored).",
                               ["result", "tenant"], **r)  # fmt: skip
        self.lookup_tokens = Counter("evicctl_lookup_tokens", "Context tokens asked for by lookups, by result (hit, miss).",
                                     ["result", "tenant"], **r)  # fmt: skip
        self.hit_tokens = Counter("evicctl_hit_tokens", "Context tokens served from each tier.", ["tier"], **r)
        self.load = Histogram("evicctl_load_seconds", "Tier read + decode to the compute device of a hit.",
                              ["tier", "codec_family"], buckets=LATENCY_BUCKETS_S, **r)  # fmt: skip
        self.ttft = Histogram("evicctl_ttft_seconds", "Load + decode + the engine's prefill (tier 'miss': full prefill).",
                              ["tier", "codec_family"], buckets=LATENCY_BUCKETS_S, **r)  # fmt: skip
        self.reads = Counter("evicctl_tier_reads", "Copies read from a tier (hits and move sources).", ["tier"], **r)
        self.read_bytes = Counter("evicctl_tier_read_bytes", "Bytes read from a tier.", ["tier"], **r)
        self.writes = Counter("evicctl_tier_writes", "Copies written to a tier (admissions and moves).", ["tier"], **r)
        self.written_bytes = Counter("evicctl_tier_written_bytes", "Bytes written to a tier.", ["tier"], **r)
        self.moves = Counter("evicctl_moves", "Executed moves by event kind (admit, move, compress, evict, drop).",
                             ["kind", "from_tier", "to_tier", "reason"], **r)  # fmt: skip
        self.lost_copies = Counter("evicctl_lost", "Copies lost (failed checksum, vanished).", ["tier", "reason"], **r)
        self.evictions = Counter("evicctl_evictions", "Copies that left a tier: evict, drop or lost.",
                                 ["tier", "kind", "tenant"], **r)  # fmt: skip
        self._lifetime_histograms(r)
        self.profiles = Counter("evicctl_profiles_recorded", "Profiles stored (one per context and codec).",
                                ["codec_family"], **r)  # fmt: skip
        self.reprofiles = Counter("evicctl_reprofiles_flagged", "Profiles online quality flagged as stale.", **r)
        self.placer = Histogram("evicctl_placer_seconds", "Wall time of one plan (pricing + placement).",
                                buckets=PLACER_BUCKETS_S, **r)  # fmt: skip
        self.plan_moves = Histogram("evicctl_plan_moves", "Moves in one plan.", buckets=PLAN_MOVES_BUCKETS, **r)
        self.commands = Counter("evicctl_commands", "Operator commands answered, by verb and status.",
                                ["verb", "status"], **r)  # fmt: skip

    def _lifetime_histograms(self, r: dict) -> None:
        labels = ["tier", "kind"]  # no tenant: x buckets x tiers it would be thousands of series
        self.lifetime = Histogram("evicctl_eviction_lifetime_seconds", "Time a leaving copy spent on its tier.",
                                  labels, buckets=LIFETIME_BUCKETS_S, **r)  # fmt: skip
        self.age = Histogram("evicctl_eviction_age_seconds", "Age of the context when its copy left a tier.",
                             labels, buckets=LIFETIME_BUCKETS_S, **r)  # fmt: skip
        self.idle = Histogram("evicctl_eviction_idle_seconds", "Time since the context's last access when it left.",
                              labels, buckets=LIFETIME_BUCKETS_S, **r)  # fmt: skip
        self.hits_at = Histogram("evicctl_eviction_hits", "Hits of the context when its copy left a tier.",
                                 labels, buckets=HITS_BUCKETS, **r)  # fmt: skip
        self.bytes_at = Histogram("evicctl_eviction_bytes", "Stored bytes of the copy that left.",
                                  labels, buckets=BYTES_BUCKETS, **r)  # fmt: skip

    # ---- lookups and TTFT

    def lookup_hit(self, tier, codec, tenant, tokens, nbytes, load_s) -> None:
        family, tenant = family_label(codec), self.tenant(tenant)
        self.lookups.labels("hit", tenant).inc()
        self.lookup_tokens.labels("hit", tenant).inc(tokens)
        self.hit_tokens.labels(tier).inc(tokens)
        self.load.labels(tier, family).observe(load_s)
        self.reads.labels(tier).inc()
        self.read_bytes.labels(tier).inc(nbytes)
        self._pending.last = (tier, family, load_s)

    def lookup_miss(self, tenant, tokens) -> None:
        tenant = self.tenant(tenant)
        self.lookups.labels(MISS, tenant).inc()
        self.lookup_tokens.labels(MISS, tenant).inc(tokens)
        self._pending.last = (MISS, "none", 0.0)

    def lookup_new(self) -> None:
        self.lookups.labels("new", self.tenant(None)).inc()
        self._pending.last = (MISS, "none", 0.0)

    def prefill(self, cached_tokens, seconds) -> None:
        last = getattr(self._pending, "last", None)
        self._pending.last = None
        if last is None or (cached_tokens > 0) != (last[0] != MISS):
            return  # no lookup before it on this thread, or a prefill that is not its request's
        tier, family, load_s = last
        self.ttft.labels(tier, family).observe(load_s + seconds)

    # ---- moves, losses, lifetimes

    def moved(self, kind, from_tier, to_tier, reason, tenant, nbytes, lifetime) -> None:
        self.moves.labels(kind, from_tier or "new", to_tier or "dropped", reason or "").inc()
        if lifetime is not None and from_tier and kind != "drop":  # a drop reads nothing
            self.reads.labels(from_tier).inc()
            self.read_bytes.labels(from_tier).inc(lifetime.from_bytes)
        if nbytes and to_tier and kind != "drop":
            self.writes.labels(to_tier).inc()
            self.written_bytes.labels(to_tier).inc(nbytes)
        if kind in EVICTION_KINDS and lifetime is not None:
            self._evicted(from_tier, kind, tenant, lifetime)

    def lost(self, tier, reason, tenant, lifetime) -> None:
        self.lost_copies.labels(tier or "unknown", reason).inc()
        if lifetime is not None:
            self._evicted(tier, "lost", tenant, lifetime)

    def _evicted(self, tier: str | None, kind: str, tenant: str, lt: Lifetime) -> None:
        tier = tier or "unknown"
        self.evictions.labels(tier, kind, self.tenant(tenant)).inc()
        self.lifetime.labels(tier, kind).observe(lt.lifetime_s)
        self.age.labels(tier, kind).observe(lt.age_s)
        self.idle.labels(tier, kind).observe(lt.idle_s)
        self.hits_at.labels(tier, kind).observe(lt.hits)
        self.bytes_at.labels(tier, kind).observe(lt.from_bytes)

    # ---- commands, profiles, placer

    def command(self, verb, status) -> None:
        from evicctl.control import VERBS

        self.commands.labels(verb if verb in VERBS else "other", status).inc()

    def profiled(self, codec) -> None:
        self.profiles.labels(family_label(codec)).inc()

    def reprofile_flagged(self) -> None:
        self.reprofiles.inc()

    def planned(self, seconds, moves) -> None:
        self.placer.observe(seconds)
        self.plan_moves.observe(moves)


class ServedRecorder(PromRecorder):
    """A PromRecorder whose registry is served over HTTP until close()."""

    def __init__(self, registry, tenants, server, thread) -> None:
        super().__init__(registry, tenants)
        self._server, self._thread = server, thread
        host, port = server.server_address[:2]
        self.url = f"http://{host}:{port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve(rt, tiers, bind: str, port: int) -> ServedRecorder:
    """Register the state collector and the event metrics in a new registry; serve it on
    bind:port (0: any free port). MetricsServerError if the address cannot be used."""
    registry = CollectorRegistry(auto_describe=False)
    tenants = TenantLabels()
    registry.register(ManagerCollector(rt, tiers, tenants))
    try:
        server, thread = start_http_server(port, addr=bind, registry=registry)
    except OSError as exc:
        raise MetricsServerError(f"cannot serve metrics on {bind}:{port}: {exc.strerror or exc}") from exc
    recorder = ServedRecorder(registry, tenants, server, thread)
    log.info("metrics served on %s", recorder.url)
    return recorder
