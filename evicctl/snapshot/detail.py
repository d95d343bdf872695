"""One context in detail: its profiles and every (codec, tier) option with its utility.

Options are priced with the manager's own numbers: the tier bandwidths in `tiers`, and
the cost model and alpha the manager stored in `manager.config_json`, so `evicctl show`
explains the placement with the figures the placer used.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from evicctl.config import DEFAULT_CODECS
from evicctl.errors import UnknownNameError
from evicctl.manager.codecs.names import CodecParts, parse_codec_name, scaled_bytes
from evicctl.store.database import Store

DEFAULT_ALPHA = 2.0  # ManagerConfig.alpha
DEFAULT_QUERY_TOKENS = 32  # query length used to price options when the manager stored none
DROPPED = "dropped"


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


def read_context(store: Store, context_id: str, *, events_limit: int = 20, now: float | None = None) -> ContextDetail:
    """Raises NoSuchContextError for an unknown id."""
    from evicctl.snapshot.read import read_context_row, read_events, read_manager, read_tiers

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
        manager = read_manager(store, now=now)
        tiers = read_tiers(store, now=now, history_points=0)
        events = read_events(store, context_id=context_id, limit=events_limit)
    config = manager.config if manager else {}
    options = price_options(row, placement, profiles, tiers, config)
    reason = next(
        (e.reason for e in reversed(events) if placement and e.to_tier == placement.tier and e.reason), None
    )
    alpha = float(config.get("alpha", DEFAULT_ALPHA))
    source = _cost_model(config.get("cost_model"))[1]
    return ContextDetail(row, placement, profiles, options, events, reason, alpha, now, source)


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


def price_options(row, placement, profiles, tiers, config: dict) -> tuple[OptionRow, ...]:
    """Every (codec with a known quality) x (tier) option, plus recompute-on-miss."""
    quality = profile_quality(profiles)
    menu = list(config.get("codecs") or DEFAULT_CODECS)
    codecs = [c for c in menu if c in quality] + sorted(c for c in quality if c not in menu)
    cost_model, _ = _cost_model(config.get("cost_model"))
    query_tokens = int(config.get("query_tokens", DEFAULT_QUERY_TOKENS))
    shape = config.get("kv_shape") or {}
    combos: list[tuple[str, str, int, float, float | None, bool]] = []
    for codec in codecs:
        stored = _stored_bytes(codec, row.tokens, row.raw_bytes, shape, placement)
        kept = _kept_tokens(codec, row.tokens)
        for tier in tiers:
            ttft = _ttft_s(codec, stored, tier.read_bps, query_tokens, kept, cost_model)
            own = placement.stored_bytes if placement and placement.tier == tier.name else 0
            fits = stored <= tier.capacity_bytes - tier.used_bytes + own
            combos.append((codec, tier.name, stored, quality[codec], ttft, fits))
    combos.append((
        "none", DROPPED, 0, 1.0, _miss_ttft_s(row.tokens, query_tokens, cost_model), True,
    ))
    utilities = _utilities(row.freq, float(config.get("alpha", DEFAULT_ALPHA)), combos)
    options = [
        OptionRow(codec, tier, stored, q, ttft, u, _is_chosen(placement, codec, tier), fits)
        for (codec, tier, stored, q, ttft, fits), u in zip(combos, utilities, strict=True)
    ]
    options.sort(key=lambda o: (o.utility is None, -(o.utility or 0.0), o.codec, o.tier))
    return tuple(options)


def _is_chosen(placement: PlacementInfo | None, codec: str, tier: str) -> bool:
    if placement is None:
        return False
    if placement.tier == DROPPED:
        return tier == DROPPED
    return placement.tier == tier and placement.codec == codec


# ---- codec sizes -------------------------------------------------------------------
def _parts(codec: str) -> CodecParts:
    """The codec's parts (torch-free); an unknown name in old profiles must not break `show`,
    so it is priced as the uncompressed KV."""
    try:
        return parse_codec_name(codec)
    except UnknownNameError:
        return CodecParts()


def _kept_tokens(codec: str, tokens: int) -> int:
    return _parts(codec).kept(tokens)


def _stored_bytes(codec: str, tokens: int, raw_bytes: int, shape: dict, placement) -> int:
    """The placement's own bytes where it is held in this codec; else exact from the KV shape
    the manager recorded, or scaled from the raw size without one (as the manager does)."""
    if placement is not None and placement.codec == codec and placement.tier != DROPPED:
        return int(placement.stored_bytes)
    parts = _parts(codec)
    if all(k in shape for k in ("layers", "kv_heads", "head_dim", "dtype_bytes")):
        return parts.stored_bytes(
            tokens, int(shape["layers"]), int(shape["kv_heads"]), int(shape["head_dim"]), int(shape["dtype_bytes"]),
            window_numel=int(shape.get("window_numel", 0)),
        )
    return scaled_bytes(parts.name, tokens, raw_bytes)


# ---- cost model --------------------------------------------------------------------
def _cost_model(data: dict | None) -> tuple[Any, str | None]:
    """(model, source): the manager's fitted model, else the default coefficients."""
    try:
        from evicctl.manager.costs import CostModel
    except ImportError:
        return None, None
    if data:
        return CostModel.from_dict(data), "manager"
    return CostModel(), "default"


def _ttft_s(codec, stored_bytes, read_bps, query_tokens, kept_tokens, cost_model) -> float | None:
    if cost_model is None or not read_bps:
        return None
    from evicctl.manager.costs import predicted_ttft_s

    decode_bps = cost_model.decode_bps(_parts(codec).family)
    decode_s = stored_bytes / decode_bps if decode_bps else 0.0
    return float(predicted_ttft_s(stored_bytes, read_bps, decode_s, query_tokens, kept_tokens, cost_model))


def _miss_ttft_s(tokens, query_tokens, cost_model) -> float | None:
    if cost_model is None:
        return None
    from evicctl.manager.costs import miss_ttft_s

    return float(miss_ttft_s(tokens, query_tokens, cost_model))


def _utilities(freq: float, alpha: float, combos) -> list[float | None]:
    known = [i for i, c in enumerate(combos) if c[4] is not None]
    out: list[float | None] = [None] * len(combos)
    if not known:
        return out
    quality = [combos[i][3] for i in known]
    ttft = [combos[i][4] for i in known]
    try:
        import numpy as np

        from evicctl.manager.placer.pricing import utility

        values = np.asarray(utility(freq, alpha, np.asarray(quality), np.asarray(ttft)), dtype=float)
        values = np.broadcast_to(values, (len(known),)).tolist()
    except ImportError:  # the contract's formula: U = freq * (alpha * quality - ttft)
        values = [freq * (alpha * q - t) for q, t in zip(quality, ttft, strict=True)]
    for i, v in zip(known, values, strict=True):
        out[i] = float(v)
    return out
