"""One context in detail: its profiles and every (codec, tier) option with its utility.

Options are priced by the placer's own function (manager.placer.pricing.price_options) with
the figures the manager's last plan used (ManagerDescription.pricing: alpha, query length,
tier bandwidths, cost model) and the access rate and measured prefill it priced this context
at (contexts.priced_freq, contexts.miss_s), so `evicctl show` prints the utilities the placer
decided with: the chosen option's utility is contexts.utility.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from evicctl.config import ManagerConfig
from evicctl.errors import UnknownNameError
from evicctl.manager.costs import CostModel
from evicctl.manager.description import ManagerDescription, PricingInputs
from evicctl.manager.placer.pricing import (
    MISS_QUALITY,
    QUALITY_Z,
    codec_family,
    codec_sizes,
    kept_tokens,
    price_options,
    utility,
)
from evicctl.manager.placer.types import derivable_matrix
from evicctl.snapshot.read import read_context_row, read_events, read_manager, read_tiers
from evicctl.store.database import Store

DROPPED = "dropped"
SHAPE_KEYS = ("layers", "kv_heads", "head_dim", "dtype_bytes", "window_numel")


@dataclass(frozen=True, slots=True)
class ProfileRow:
    codec: str
    metric: str
    quality: float
    quality_sd: float | None
    raw_mean: float | None
    f1: float | None
    n_queries: int
    measured_at: float


@dataclass(frozen=True, slots=True)
class PlacementInfo:
    tier: str
    codec: str
    stored_bytes: int
    checksum: str | None
    location: str | None
    since: float


@dataclass(frozen=True, slots=True)
class OptionRow:
    codec: str
    tier: str  # a tier name, or "dropped" (recompute on the next request)
    stored_bytes: int
    quality: float
    predicted_ttft_s: float | None  # None: no cost model known for this tier/codec
    utility: float | None
    chosen: bool  # the context's current placement
    fits: bool  # fits in the tier's free space (counting the context's own bytes there)


@dataclass(frozen=True, slots=True)
class ContextDetail:
    row: Any  # snapshot.ContextRow
    placement: PlacementInfo | None
    profiles: tuple[ProfileRow, ...]
    options: tuple[OptionRow, ...]  # best utility first
    events: tuple[Any, ...]  # snapshot.EventRow, newest last
    reason: str | None  # reason of the event that put the context where it is
    alpha: float
    taken_at: float
    cost_model: str | None = None  # "manager" (its fitted model), "default" coefficients, or None
    # Why it is not on a faster tier that has room (None: no faster tier has room for it)
    room_note: str | None = None


def read_context(store: Store, context_id: str, *, events_limit: int = 20, now: float | None = None) -> ContextDetail:
    """Raises NoSuchContextError for an unknown id."""
    now = time.time() if now is None else now
    with store.read():
        row = read_context_row(store, context_id)
        placement = _placement(store, context_id)
        profiles = tuple(
            ProfileRow(*r)
            for r in store.query(
                "SELECT codec, metric, quality, quality_sd, raw_mean, f1, n_queries, measured_at"
                " FROM profiles WHERE context_id = ? ORDER BY codec, metric",
                (context_id,),
            )
        )
        priced_freq, miss_s = store.query("SELECT priced_freq, miss_s FROM contexts WHERE id = ?", (context_id,))[0]
        manager = read_manager(store, now=now)
        tiers = read_tiers(store, now=now, history_points=0)
        events = read_events(store, context_id=context_id, limit=events_limit)
    description = manager.description if manager else ManagerDescription()
    inputs = pricing_inputs(description, tiers)
    freq = row.freq if priced_freq is None else priced_freq  # never priced (an older manager): today's rate
    options = price_context(row, placement, profiles, tiers, description, inputs, freq=freq, miss_s=miss_s)
    reason = next(
        (e.reason for e in reversed(events) if placement and e.to_tier == placement.tier and e.reason), None
    )
    source = "manager" if description.pricing or description.cost_model else "default"
    note = room_note(row, placement, profiles, options, tiers, description, now)
    return ContextDetail(row, placement, profiles, options, events, reason, inputs.alpha, now, source, note)


def room_note(row, placement, profiles, options, tiers, description: ManagerDescription, now: float) -> str | None:
    """One line: why the context is not on a faster tier that has room for one of its options
    (None when no faster tier has room). The placer's rules, checked on what `show` prices:
    a copy only goes to codecs it can be made into, above its quality floor, and a rebalance
    moves it up into free room for any gain, but not within the residence time of its last move."""
    order = [t.name for t in tiers]  # fastest first
    if placement is None or not order:
        return None
    here = order.index(placement.tier) if placement.tier in order else len(order)  # dropped: below all
    roomy = [o for o in options if o.tier in order[:here] and o.fits]
    if not roomy:
        return None
    free = {t.name: t.capacity_bytes - t.used_bytes for t in tiers}
    room = ", ".join(f"{name} has {_mib(free[name])} free" for name in order[:here] if any(o.tier == name for o in roomy))
    if placement.tier == DROPPED:
        return f"{room}, but it is dropped: no copy is left to move up; its next use recomputes it and stores it again"
    if row.pin_tier:
        return f"{room}, but it is pinned to {row.pin_tier}"
    floor = row.quality_floor
    if floor is None:
        floor = dict(description.tenant_quality_floors).get(row.tenant, description.quality_floor)
    lower = _quality_lower(profiles)
    reach = derivable_matrix(tuple(dict.fromkeys((placement.codec, *(o.codec for o in roomy)))))
    codec_at = {c: k for k, c in enumerate(dict.fromkeys((placement.codec, *(o.codec for o in roomy))))}
    allowed = [
        o for o in roomy
        if reach[0, codec_at[o.codec]] and (o.codec == "none" or lower.get(o.codec, 0.0) >= floor)
        and (row.pin_codec is None or o.codec == row.pin_codec) and o.utility is not None
    ]  # fmt: skip
    if not allowed:
        return f"{room}, but no codec there can be made from its {placement.codec} copy within its pin and quality floor"
    best = max(allowed, key=lambda o: o.utility)
    current = next((o for o in options if o.chosen), None)
    if current is None or current.utility is None:
        return None
    if best.utility <= current.utility:
        return (f"{room}, but its best option there ({best.tier} / {best.codec}, utility {best.utility:.4g}) is "
                f"worth no more than where it is ({current.utility:.4g})")  # fmt: skip
    age_s = now - placement.since
    residence_s = float(_RESIDENCE_S)
    if age_s < residence_s:
        return (f"{room}: moved here {age_s:.0f} s ago, a rebalance moves it up to {best.tier} / {best.codec} "
                f"(+{best.utility - current.utility:.4g} utility) once it has stayed {residence_s:g} s")  # fmt: skip
    return (f"{room}, and {best.tier} / {best.codec} is worth more ({best.utility:.4g} against "
            f"{current.utility:.4g}): the next rebalance (every {description.replan_s:g} s) moves it up")  # fmt: skip


# The manager's default rebalance_min_residence_s (the description does not carry it).
_RESIDENCE_S = ManagerConfig.__dataclass_fields__["rebalance_min_residence_s"].default


def _mib(nbytes: int) -> str:
    return f"{nbytes / (1 << 20):.1f} MiB"


def _quality_lower(profiles) -> dict[str, float]:
    """The lower bound the placer checks floors against, per codec (the profile it prices)."""
    best: dict[str, ProfileRow] = {}
    for p in profiles:
        cur = best.get(p.codec)
        if cur is None or (p.metric == "teacher-forced", p.measured_at) > (cur.metric == "teacher-forced", cur.measured_at):
            best[p.codec] = p
    return {c: max(0.0, p.quality - QUALITY_Z * (p.quality_sd or 0.0)) for c, p in best.items()}


def pricing_inputs(description: ManagerDescription, tiers) -> PricingInputs:
    """The figures the manager's last plan priced with; before its first plan, its current ones."""
    if description.pricing is not None:
        return description.pricing
    return PricingInputs(description.alpha, description.query_tokens,
                         tuple((t.name, float(t.read_bps)) for t in tiers), description.cost_model or {})  # fmt: skip


def _placement(store: Store, context_id: str) -> PlacementInfo | None:
    rows = store.query(
        "SELECT tier, codec, stored_bytes, checksum, location, since FROM placements WHERE context_id = ?",
        (context_id,),
    )
    return PlacementInfo(*rows[0]) if rows else None


def profile_quality(profiles: tuple[ProfileRow, ...]) -> dict[str, float]:
    """Quality per codec: the placer's metric (teacher-forced) first, else the newest."""
    best: dict[str, ProfileRow] = {}
    for p in profiles:
        cur = best.get(p.codec)
        rank = (p.metric == "teacher-forced", p.measured_at)
        if cur is None or rank > (cur.metric == "teacher-forced", cur.measured_at):
            best[p.codec] = p
    quality = {codec: p.quality for codec, p in best.items()}
    quality.setdefault("none", 1.0)  # the uncompressed KV is the reference: exact
    return quality


def price_context(row, placement, profiles, tiers, description: ManagerDescription, inputs: PricingInputs, *,
                  freq: float, miss_s: float | None) -> tuple[OptionRow, ...]:  # fmt: skip
    """Every (codec with a known quality) x (tier) option, plus recompute-on-miss, best first."""
    quality = profile_quality(profiles)
    codecs = [c for c in _menu(description, quality) if _known(c)]
    sizes = _sizes(codecs, row, description.kv_shape, placement)
    cost_model = CostModel.from_dict(inputs.cost_model) if inputs.cost_model else CostModel()
    read_bps = [inputs.tier_read_bps(t.name) or float(t.read_bps) for t in tiers]
    prices = price_options([[sizes[c]] for c in codecs], [[kept_tokens(c, row.tokens)] for c in codecs],
                           codecs, [row.tokens], read_bps=read_bps, cost_model=cost_model,
                           query_tokens=inputs.query_tokens, miss_s=[miss_s or np.nan])  # fmt: skip
    ttft = prices.ttft_s[:, :, 0]  # [T, C]
    values = utility(freq, inputs.alpha, [quality[c] for c in codecs], ttft)  # [T, C]
    options = [
        OptionRow(codec, tier.name, sizes[codec], quality[codec], float(ttft[t, c]), float(values[t, c]),
                  _is_chosen(placement, codec, tier.name), _fits(sizes[codec], tier, placement))  # fmt: skip
        for c, codec in enumerate(codecs)
        for t, tier in enumerate(tiers)
    ]
    miss_ttft_s = float(prices.miss_ttft_s[0])
    options.append(OptionRow("none", DROPPED, 0, MISS_QUALITY, miss_ttft_s,
                             float(utility(freq, inputs.alpha, MISS_QUALITY, miss_ttft_s)),
                             _is_chosen(placement, "none", DROPPED), True))  # fmt: skip
    options.sort(key=lambda o: (-o.utility, o.codec, o.tier))
    return tuple(options)


def _menu(description: ManagerDescription, quality: dict[str, float]) -> list[str]:
    """Codecs with a known quality: the manager's menu order, then others (a copy at a codec
    no longer offered)."""
    return [c for c in description.codecs if c in quality] + sorted(c for c in quality if c not in description.codecs)


def _known(codec: str) -> bool:
    """Whether this version can size the codec (old profiles may name a codec since removed)."""
    try:
        codec_family(codec)
    except UnknownNameError:
        return False
    return True


def _sizes(codecs: list[str], row, kv_shape: dict | None, placement: PlacementInfo | None) -> dict[str, int]:
    """Stored bytes per codec as the placer predicts them; the real copy's where it is held."""
    shape = tuple(int(kv_shape.get(k, 0)) for k in SHAPE_KEYS) if kv_shape else None
    sizes = codec_sizes(codecs, row.tokens, shape, row.raw_bytes)
    if placement is not None and placement.tier != DROPPED and placement.codec in sizes:
        sizes[placement.codec] = int(placement.stored_bytes)
    return sizes


def _fits(stored_bytes: int, tier, placement: PlacementInfo | None) -> bool:
    """Fits in the tier's free space, counting the context's own bytes there."""
    own = placement.stored_bytes if placement and placement.tier == tier.name else 0
    return stored_bytes <= tier.capacity_bytes - tier.used_bytes + own


def _is_chosen(placement: PlacementInfo | None, codec: str, tier: str) -> bool:
    if placement is None:
        return False
    if placement.tier == DROPPED:
        return tier == DROPPED
    return placement.tier == tier and placement.codec == codec
