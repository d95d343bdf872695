"""Utility of a placement option (EVICPRESS, DESIGN §1): U = freq * (alpha * quality - ttft_s).

`alpha` is the seconds of TTFT one unit of quality is worth; `freq` weighs the option by how
often the context is used, so the placer trades a rarely used context's quality or delay for a
busy one's. A miss (the context dropped) recomputes the full KV: quality 1, TTFT of a full prefill.
"""

from __future__ import annotations

import numpy as np

MISS_QUALITY = 1.0  # a recomputed prefix is exact
QUALITY_Z = 1.645  # one-sided 95% lower bound: floors are checked against quality - z * sd


def utility(freq, alpha: float, quality, ttft_s) -> np.ndarray:
    """U = freq * (alpha * quality - ttft_s), broadcasting numpy arrays (or scalars)."""
    freq = np.asarray(freq, dtype=np.float64)
    return freq * (alpha * np.asarray(quality, dtype=np.float64) - np.asarray(ttft_s, dtype=np.float64))


def miss_utility(freq, alpha: float, miss_ttft_s) -> np.ndarray:
    """Utility of the `dropped` option: full quality at the cost of a full prefill."""
    return utility(freq, alpha, MISS_QUALITY, miss_ttft_s)


# --- pricing every option of every context: the placer's input ------------------------------


def codec_sizes(codecs, tokens: int, shape: tuple | None, raw_bytes: int) -> dict[str, int]:
    """Stored bytes of a context under each codec: exact from its KV shape (layers, kv_heads,
    head_dim, dtype_bytes, window_numel), else scaled from its raw bytes (after a restart
    without a recorded shape) by the codec's ratio on a nominal shape."""
    from evicctl.manager.codecs import get_codec

    if shape is not None:
        layers, heads, head_dim, dtype_bytes, window = shape
        return {c: get_codec(c).stored_bytes(tokens, layers, heads, head_dim, dtype_bytes, window_numel=window) for c in codecs}
    nominal = get_codec("none").stored_bytes(tokens, 1, 1, 64, 2)
    return {c: int(np.ceil(raw_bytes * get_codec(c).stored_bytes(tokens, 1, 1, 64, 2) / nominal)) for c in codecs}


def price_problem(states, freq, *, codecs, tiers, cost_model, alpha: float, query_tokens: float,
                  floor_of, admit: str | None = None, rebalance: bool = False, overrides=None):  # fmt: skip
    """A PlacementProblem from the manager's context states.

    states: objects with id, tokens, raw_bytes, sizes {codec: bytes}, profiles {codec: (quality,
    sd, metric)}, miss_s, stored, tier, codec, stored_bytes, pin_tier, pin_codec, min_tier.
    tiers: objects with name, capacity_bytes, read_bps (fastest first). floor_of(state) -> the
    context's quality floor. overrides: id -> {pin_tier, pin_codec, force_tier, force_codec,
    min_tier} by name (force_tier may be "dropped"), for plans of operator commands.
    """
    from evicctl.manager.codecs import get_codec
    from evicctl.manager.costs import miss_ttft_s
    from evicctl.manager.placer import (
        DROPPED,
        DROPPED_TIER,
        NEW,
        NO_PIN,
        PlacementProblem,
        derivable_matrix,
    )

    overrides = overrides or {}
    n, n_codecs = len(states), len(codecs)
    codec_at = {c: k for k, c in enumerate(codecs)}
    tier_at = {t.name: k for k, t in enumerate(tiers)}
    codec_objs = [get_codec(c) for c in codecs]

    stored_bytes = np.zeros((n_codecs, n), dtype=np.int64)
    kept = np.zeros((n_codecs, n))
    quality = np.zeros((n_codecs, n))
    quality_lower = np.zeros((n_codecs, n))
    profiled = np.zeros((n_codecs, n), dtype=bool)
    tokens = np.array([s.tokens for s in states], dtype=np.int64)
    for i, s in enumerate(states):
        for c, name in enumerate(codecs):
            stored_bytes[c, i] = s.sizes.get(name, 0)
            kept[c, i] = codec_objs[c].kept(s.tokens) if hasattr(codec_objs[c], "kept") else s.tokens
            profile = s.profiles.get(name)
            if name == "none":
                quality[c, i] = quality_lower[c, i] = 1.0
                profiled[c, i] = True
            elif profile is not None:
                q, sd, _metric = profile
                quality[c, i] = q
                quality_lower[c, i] = max(0.0, q - QUALITY_Z * (sd or 0.0))
                profiled[c, i] = True
        if s.stored and s.codec in codec_at:
            stored_bytes[codec_at[s.codec], i] = s.stored_bytes  # the real copy, not a prediction

    read_bps = np.array([max(float(t.read_bps), 1.0) for t in tiers])
    # Tiers come fastest first; a probe that measured a faster tier slower than one below it
    # (a cold page, a busy CPU) must not send contexts down: each tier is priced at least as
    # fast as every tier after it.
    read_bps = np.maximum.accumulate(read_bps[::-1])[::-1]
    decode_s = np.stack([cost_model.decode_s(o.family, stored_bytes[c]) for c, o in enumerate(codec_objs)])
    prefill_s = np.asarray(cost_model.prefill_s(np.full_like(kept, query_tokens), kept))
    ttft = stored_bytes[None] / read_bps[:, None, None] + (decode_s + prefill_s)[None]
    modelled_miss = np.asarray(miss_ttft_s(tokens, query_tokens, cost_model), dtype=float).reshape(n)
    miss = np.array([s.miss_s if s.miss_s else m for s, m in zip(states, modelled_miss, strict=True)])

    def index(value, table, default):
        if value is None:
            return default
        if value == DROPPED_TIER:
            return DROPPED
        return table.get(value, default) if isinstance(value, str) else int(value)  # unknown: no constraint

    current_tier = np.full(n, NEW, dtype=np.int64)
    current_codec = np.full(n, -1, dtype=np.int64)
    pins = np.full((4, n), NO_PIN, dtype=np.int64)  # pin_tier, pin_codec, force_tier, force_codec
    min_tier = np.zeros(n, dtype=np.int64)
    floors = np.zeros(n)
    for i, s in enumerate(states):
        if s.id != admit and s.stored:
            current_tier[i], current_codec[i] = tier_at[s.tier], codec_at[s.codec]
        o = overrides.get(s.id, {})
        pins[0, i] = index(o.get("pin_tier", s.pin_tier), tier_at, NO_PIN)
        pins[1, i] = index(o.get("pin_codec", s.pin_codec), codec_at, NO_PIN)
        pins[2, i] = index(o.get("force_tier"), tier_at, NO_PIN)
        pins[3, i] = index(o.get("force_codec"), codec_at, NO_PIN)
        min_tier[i] = index(o.get("min_tier", s.min_tier), tier_at, 0)
        floors[i] = floor_of(s)
    return PlacementProblem(
        context_ids=np.array([s.id for s in states], dtype=object),
        freq=np.asarray(freq, dtype=np.float64),
        tokens=tokens,
        codecs=tuple(codecs),
        tiers=tuple(t.name for t in tiers),
        capacity_bytes=np.array([t.capacity_bytes for t in tiers], dtype=np.int64),
        stored_bytes=stored_bytes,
        quality=quality,
        quality_lower=quality_lower,
        profiled=profiled,
        ttft_s=ttft.astype(np.float32),
        miss_ttft_s=miss,
        alpha=alpha,
        current_tier=current_tier,
        current_codec=current_codec,
        pin_tier=pins[0],
        pin_codec=pins[1],
        quality_floor=floors,
        force_tier=pins[2],
        force_codec=pins[3],
        min_tier=min_tier,
        derivable=derivable_matrix(codecs),
        rebalance=rebalance,
    )
