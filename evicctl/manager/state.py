"""The manager's in-memory record of each context, and the values its API returns."""

from __future__ import annotations

from dataclasses import dataclass, field

from evicctl.manager.kv import KV
from evicctl.manager.placer.types import DROPPED_TIER

PREFERRED_METRIC = "teacher-forced"  # the metric the placer trusts when several are recorded
# placer move kind -> event kind in the store's history
EVENT_KIND = {"admit": "admit", "compress": "compress", "demote": "evict", "promote": "move", "move": "move", "drop": "drop"}


@dataclass(frozen=True)
class Placement:
    """Where a context is: a tier and codec, or tier "dropped" (recomputed on next use)."""

    context_id: str
    tier: str
    codec: str
    stored_bytes: int
    checksum: str | None = None
    location: str | None = None
    since: float = 0.0


@dataclass(frozen=True)
class Lookup:
    """A hit: the KV on the compute device and what it cost to get it there."""

    kv: KV
    tier: str
    codec: str
    stored_bytes: int
    load_s: float  # reading the stored form from its tier
    decode_s: float  # decoding (and copying) it to the compute device
    freq: float = 0.0  # the context's access rate after this lookup, 1/s


@dataclass
class ContextState:
    """One known context (mutable; guarded by Manager._lock)."""

    id: str
    tokens: int
    raw_bytes: int
    tenant: str = "default"
    label: str | None = None
    created_at: float = 0.0
    last_access_at: float = 0.0
    hits: int = 0
    misses: int = 0
    shape: tuple[int, int, int, int, int] | None = None  # layers, kv_heads, head_dim, dtype_bytes, window_numel
    tier: str = DROPPED_TIER
    codec: str = "none"
    key: str | None = None  # the id its copy has in its tier
    stored_bytes: int = 0
    checksum: str | None = None
    location: str | None = None
    since: float = 0.0
    pin_tier: str | None = None
    pin_codec: str | None = None
    quality_floor: float | None = None
    min_tier: int = 0  # after an operator evict: tiers above stay excluded until the next hit
    profiles: dict[str, tuple[float, float | None, str]] = field(default_factory=dict)  # codec -> (q, sd, metric)
    miss_s: float | None = None  # measured prefill of the whole context
    utility: float | None = None  # of the current placement, priced by the last plan
    priced_freq: float | None = None  # the access rate (1/s) that plan priced it at
    sizes: dict[str, int] = field(default_factory=dict)  # codec -> predicted stored bytes
    # Scorers whose per-token scores its KV carries (KV.token_scores: expected, kvzip), so the
    # codecs of those scorers it can take; None = not known (after a restart, until a hit).
    token_scores: frozenset[str] | None = None
    # The placer's per-codec rows of this context, kept by utility.option_rows between plans
    # (a plan prices every context: rebuilding them each time cost ~35 us a context).
    # `version` moves whenever sizes or profiles change; set them through the methods below.
    version: int = 0
    row_cache: dict = field(default_factory=dict, repr=False)

    @property
    def stored(self) -> bool:
        return self.tier != DROPPED_TIER

    def placement(self) -> Placement:
        return Placement(self.id, self.tier, self.codec, self.stored_bytes, self.checksum, self.location, self.since)

    def keep_profile(self, codec: str, quality: float, sd: float | None, metric: str) -> None:
        """Record a profile unless it would replace one of the preferred metric with another."""
        have = self.profiles.get(codec)
        if have is None or metric == PREFERRED_METRIC or have[2] != PREFERRED_METRIC:
            self.profiles[codec] = (float(quality), None if sd is None else float(sd), metric)
            self.version += 1

    def set_sizes(self, sizes: dict[str, int]) -> None:
        self.sizes = sizes
        self.version += 1

    def learn_token_scores(self, names) -> None:
        """Record which token scores its KV carries (the placer offers their codecs only then)."""
        names = frozenset(names)
        if names != self.token_scores:
            self.token_scores = names
            self.version += 1

    def add_size(self, codec: str, nbytes: int) -> None:
        """The size of a copy at a codec the size table lacks (one no longer offered)."""
        self.sizes[codec] = nbytes
        self.version += 1

    def set_dropped(self, now: float) -> None:
        self.tier, self.key, self.stored_bytes, self.location, self.checksum = DROPPED_TIER, None, 0, None, None
        self.since = now

    def row(self, freq: float) -> dict:
        return {
            "id": self.id, "label": self.label, "tenant": self.tenant, "tokens": self.tokens,
            "raw_bytes": self.raw_bytes, "created_at": self.created_at, "last_access_at": self.last_access_at,
            "hits": self.hits, "misses": self.misses, "freq": freq, "utility": self.utility,
            "priced_freq": self.priced_freq, "miss_s": self.miss_s,
            "pin_tier": self.pin_tier, "pin_codec": self.pin_codec, "quality_floor": self.quality_floor,
        }  # fmt: skip

    def placement_row(self) -> dict:
        return {
            "context_id": self.id, "tier": self.tier, "codec": self.codec, "stored_bytes": self.stored_bytes,
            "checksum": self.checksum, "location": self.location, "since": self.since,
        }  # fmt: skip


def tier_key(context_id: str, codec: str) -> str:
    """The id a copy has inside its tier: one per codec, so a recompress on the same tier
    writes a new copy beside the old one instead of over it (copy first, then switch)."""
    return f"{context_id}.{codec.replace('@', '-').replace('+', '_')}"
