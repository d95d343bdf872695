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
    from evicctl.manager.codecs.codec import get_codec

    if shape is not None:
        layers, heads, head_dim, dtype_bytes, window = shape
        return {c: get_codec(c).stored_bytes(tokens, layers, heads, head_dim, dtype_bytes, window_numel=window) for c in codecs}
    nominal = get_codec("none").stored_bytes(tokens, 1, 1, 64, 2)
    return {c: int(np.ceil(raw_bytes * get_codec(c).stored_bytes(tokens, 1, 1, 64, 2) / nominal)) for c in codecs}


# option_rows' layout: one float64 row per field (bytes are exact in float64 below 2**53)
ROW_BYTES, ROW_KEPT, ROW_QUALITY, ROW_LOWER, ROW_PROFILED = range(5)


def option_rows(state, codecs: tuple[str, ...], codec_objs) -> np.ndarray:
    """One context's per-codec rows, [5, C] float64: predicted stored bytes, kept tokens,
    quality, quality lower bound, profiled (0/1).

    Cached on states that carry a `row_cache` dict (the manager's ContextState), keyed by the
    codec list and the state's `version` (moved by every size or profile change; the sizes
    and profiles containers are in the key too, as a safety net), so a plan over 100,000
    contexts does not redo 1.6 million dictionary lookups.
    """
    cache = getattr(state, "row_cache", None)
    if cache is not None:
        key = (getattr(state, "version", 0), state.tokens, id(state.sizes), len(state.sizes), len(state.profiles))
        if cache.get("key") == key and (cache["codecs"] is codecs or cache["codecs"] == codecs):
            return cache["rows"]
    tokens = state.tokens
    quality, lower, profiled = [], [], []
    for name in codecs:
        profile = state.profiles.get(name)
        if name == "none":
            q, lo, known = 1.0, 1.0, 1.0
        elif profile is not None:
            q, sd, _metric = profile
            lo, known = max(0.0, q - QUALITY_Z * (sd or 0.0)), 1.0
        else:
            q = lo = known = 0.0
        quality.append(q)
        lower.append(lo)
        profiled.append(known)
    rows = np.array([
        [state.sizes.get(name, 0) for name in codecs],
        [codec.kept(tokens) if hasattr(codec, "kept") else tokens for codec in codec_objs],
        quality, lower, profiled,
    ], dtype=np.float64)  # fmt: skip
    if cache is not None:
        cache["key"], cache["codecs"], cache["rows"] = key, codecs, rows
    return rows


def price_problem(states, freq, *, codecs, tiers, cost_model, alpha: float, query_tokens: float,
                  floor_of, admit: str | None = None, rebalance: bool = False, overrides=None,
                  settled_before: float | None = None):  # fmt: skip
    """A PlacementProblem from the manager's context states.

    states: objects with id, tokens, raw_bytes, sizes {codec: bytes}, profiles {codec: (quality,
    sd, metric)}, miss_s, stored, tier, codec, stored_bytes, pin_tier, pin_codec, min_tier.
    tiers: objects with name, capacity_bytes, read_bps (fastest first). floor_of(state) -> the
    context's quality floor. overrides: id -> {pin_tier, pin_codec, force_tier, force_codec,
    min_tier} by name (force_tier may be "dropped"), for plans of operator commands.
    settled_before: contexts whose copy moved after this time are `settled` (hysteresis).
    """
    from evicctl.manager.codecs.codec import get_codec
    from evicctl.manager.costs import miss_ttft_s
    from evicctl.manager.placer.types import (
        DROPPED,
        DROPPED_TIER,
        NEW,
        NO_PIN,
        PlacementProblem,
        derivable_matrix,
    )

    overrides = overrides or {}
    codecs = tuple(codecs)
    n, n_codecs = len(states), len(codecs)
    codec_at = {c: k for k, c in enumerate(codecs)}
    tier_at = {t.name: k for k, t in enumerate(tiers)}
    codec_objs = [get_codec(c) for c in codecs]

    rows = np.array([option_rows(s, codecs, codec_objs) for s in states]).reshape(n, 5, n_codecs)
    stored_bytes = np.ascontiguousarray(rows[:, ROW_BYTES].T).astype(np.int64)  # [C, N]
    kept, quality, quality_lower = (np.ascontiguousarray(rows[:, k].T) for k in (ROW_KEPT, ROW_QUALITY, ROW_LOWER))
    profiled = np.ascontiguousarray(rows[:, ROW_PROFILED].T) > 0.5
    tokens = np.array([s.tokens for s in states], dtype=np.int64)
    # Comprehensions with the common case inline: a function call per context costs ~1 us.
    stored = [s.stored for s in states]
    current_tier = np.array([tier_at[s.tier] if k else NEW for s, k in zip(states, stored, strict=True)], dtype=np.int64)
    current_codec = np.array([codec_at[s.codec] if k else -1 for s, k in zip(states, stored, strict=True)], dtype=np.int64)
    # The real copy's size, not a prediction, where a context is stored.
    real = np.flatnonzero(current_codec >= 0)
    if len(real):
        nbytes = np.array([s.stored_bytes for s in states], dtype=np.int64)
        stored_bytes[current_codec[real], real] = nbytes[real]
    if admit is not None:  # held whole by the caller: placed as new
        admitted = [i for i, s in enumerate(states) if s.id == admit]
        current_tier[admitted], current_codec[admitted] = NEW, -1

    read_bps = np.array([max(float(t.read_bps), 1.0) for t in tiers])
    # Tiers come fastest first; a probe that measured a faster tier slower than one below it
    # (a cold page, a busy CPU) must not send contexts down: each tier is priced at least as
    # fast as every tier after it.
    read_bps = np.maximum.accumulate(read_bps[::-1])[::-1]
    decode_s = np.stack([cost_model.decode_s(o.family, stored_bytes[c]) for c, o in enumerate(codec_objs)]).reshape(n_codecs, n)
    prefill_s = np.asarray(cost_model.prefill_s(float(query_tokens), kept)).reshape(n_codecs, n)
    ttft = stored_bytes[None] / read_bps[:, None, None] + (decode_s + prefill_s)[None]
    modelled_miss = np.asarray(miss_ttft_s(tokens, query_tokens, cost_model), dtype=float).reshape(n)
    miss = np.array([s.miss_s if s.miss_s else m for s, m in zip(states, modelled_miss.tolist(), strict=True)], dtype=float)

    def index(value, table, default):
        if value is None:
            return default
        if value == DROPPED_TIER:
            return DROPPED
        return table.get(value, default) if isinstance(value, str) else int(value)  # unknown: no constraint

    pin_tier = np.array([NO_PIN if s.pin_tier is None else index(s.pin_tier, tier_at, NO_PIN) for s in states], dtype=np.int64)
    pin_codec = np.array([NO_PIN if s.pin_codec is None else index(s.pin_codec, codec_at, NO_PIN) for s in states], dtype=np.int64)
    min_tier = np.array([s.min_tier if isinstance(s.min_tier, int) else index(s.min_tier, tier_at, 0) for s in states], dtype=np.int64)
    force_tier = np.full(n, NO_PIN, dtype=np.int64)
    force_codec = np.full(n, NO_PIN, dtype=np.int64)
    if overrides:  # operator commands: a few contexts
        position = {s.id: i for i, s in enumerate(states)}
        for cid, o in overrides.items():
            i = position.get(cid)
            if i is None:
                continue
            s = states[i]
            pin_tier[i] = index(o.get("pin_tier", s.pin_tier), tier_at, NO_PIN)
            pin_codec[i] = index(o.get("pin_codec", s.pin_codec), codec_at, NO_PIN)
            force_tier[i] = index(o.get("force_tier"), tier_at, NO_PIN)
            force_codec[i] = index(o.get("force_codec"), codec_at, NO_PIN)
            min_tier[i] = index(o.get("min_tier", s.min_tier), tier_at, 0)
    floors = np.array([floor_of(s) for s in states], dtype=float)
    return PlacementProblem(
        context_ids=np.array([s.id for s in states], dtype=object),
        freq=np.asarray(freq, dtype=np.float64),
        tokens=tokens,
        codecs=codecs,
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
        pin_tier=pin_tier,
        pin_codec=pin_codec,
        quality_floor=floors,
        force_tier=force_tier,
        force_codec=force_codec,
        min_tier=min_tier,
        derivable=derivable_matrix(codecs),
        rebalance=rebalance,
        # moved after settled_before (a time): too recent for a rebalance to move again
        settled=np.array([k and s.since > settled_before for s, k in zip(states, stored, strict=True)], dtype=bool)
        if settled_before is not None else None,
    )
