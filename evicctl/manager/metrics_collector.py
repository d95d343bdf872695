"""State metrics read at scrape time: nothing on the manager's hot path keeps them.

Each scrape copies the context list under the runtime's lock (a C-level list copy: ~1 ms
for 100,000 contexts) and counts outside it, so a scrape never holds the lock the engine's
lookups and the control loop take for longer than that copy. Attributes are read without
the lock afterwards: a context that moves during the count is counted where it was or where
it went, which is what a gauge sampled a moment earlier or later would show anyway.

Loaded only when metrics are on (prometheus_client is imported here).
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from evicctl.manager.codecs.names import codec_family
from evicctl.manager.metrics import TenantLabels

log = logging.getLogger(__name__)


def family_label(codec: str) -> str:
    """The codec's family (none, drop, quant, drop+quant) as a label; "unknown" for a name the
    parser rejects (an older menu's): telemetry must not raise."""
    try:
        return codec_family(codec)
    except Exception:
        return "unknown"


def _gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


class ManagerCollector(Collector):
    """Tiers, contexts, hits/misses, profiles and the heartbeat of one manager's runtime."""

    def __init__(self, rt, tiers, tenants: TenantLabels) -> None:
        self.rt = rt  # runtime.Runtime of the manager
        self.tiers = list(tiers)
        self.tenant = tenants

    def collect(self):
        with self.rt.lock:
            contexts = list(self.rt.contexts.values())
            tier_hits, misses = dict(self.rt.tier_hits), int(self.rt.misses)
        yield from self._tier_metrics(tier_hits)
        yield from self._context_metrics(contexts)
        yield CounterMetricFamily("evicctl_misses", "Lookups of known contexts with no stored copy.", value=misses)
        age = self._heartbeat_age_s()
        if age is not None:
            heartbeat = _gauge("evicctl_manager_heartbeat_age_seconds", "Seconds since the manager row's heartbeat.")
            heartbeat.add_metric([], age)
            yield heartbeat

    def _tier_metrics(self, tier_hits: dict[str, int]):
        capacity = _gauge("evicctl_tier_capacity_bytes", "Configured capacity of the tier.", ["tier"])
        used = _gauge("evicctl_tier_used_bytes", "Stored bytes held by the tier.", ["tier"])
        read = _gauge("evicctl_tier_read_bandwidth_bytes_per_second", "Measured read bandwidth (EWMA).", ["tier"])
        write = _gauge("evicctl_tier_write_bandwidth_bytes_per_second", "Measured write bandwidth (EWMA).", ["tier"])
        hits = CounterMetricFamily("evicctl_tier_hits", "Lookups served from the tier.", labels=["tier"])
        for tier in self.tiers:
            capacity.add_metric([tier.name], tier.capacity_bytes)
            used.add_metric([tier.name], tier.used_bytes)
            read.add_metric([tier.name], tier.read_bps)
            write.add_metric([tier.name], tier.write_bps)
            hits.add_metric([tier.name], tier_hits.get(tier.name, 0))
        yield from (capacity, used, read, write, hits)

    def _context_metrics(self, contexts):
        placed: Counter = Counter()
        sd_sum: defaultdict[str, float] = defaultdict(float)
        sd_n: Counter = Counter()
        profiled = 0
        for ctx in contexts:
            placed[(ctx.tier, self.tenant(ctx.tenant))] += 1
            measured = [(codec, sd) for codec, (_q, sd, _m) in list(ctx.profiles.items()) if codec != "none"]
            profiled += bool(measured)
            for codec, sd in measured:
                if sd is not None:
                    family = family_label(codec)
                    sd_sum[family] += sd
                    sd_n[family] += 1
        count = _gauge("evicctl_contexts", "Known contexts by tier ('dropped': no stored copy) and tenant.",
                       ["tier", "tenant"])  # fmt: skip
        present = {tier for tier, _tenant in placed}
        for tier in self.tiers:  # every tier present, at 0 when empty: dashboards need the series
            if tier.name not in present:
                placed[(tier.name, self.tenant("default"))] = 0
        for (tier, tenant), n in sorted(placed.items()):
            count.add_metric([tier, tenant], n)
        yield count
        gauge = _gauge("evicctl_profiled_contexts", "Contexts with at least one stored profile.")
        gauge.add_metric([], profiled)
        yield gauge
        sd = _gauge("evicctl_profile_quality_sd", "Mean posterior sd of stored profiles' quality.", ["codec_family"])
        for family in sorted(sd_n):
            sd.add_metric([family], sd_sum[family] / sd_n[family])
        yield sd

    def _heartbeat_age_s(self) -> float | None:
        """From the store's manager row, as `evicctl` sees it; None (no sample) if unreadable."""
        try:
            rows = self.rt.store.query("SELECT heartbeat_at FROM manager WHERE id = 1")
        except Exception:  # closing, or busy: telemetry never raises (the sample is left out)
            return None
        return max(0.0, time.time() - rows[0]["heartbeat_at"]) if rows else None
