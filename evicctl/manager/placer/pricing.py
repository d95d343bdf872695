"""Option pricing, once for everyone: the placer (through price_problem), `evicctl show` and
the dashboard's detail view (snapshot.detail), and the bench replay (replay.catalog) all call
`price_options` for the delays and `option_value` / `utility` for the utility, so what an
operator is shown is what the placer decided with.

Utility of a placement option (EVICPRESS, DESIGN §1): U = freq * (alpha * quality - ttft_s).
`alpha` is the seconds of TTFT one unit of quality is worth; `freq` weighs the option by how
often the context is used, so the placer trades a rarely used context's quality or delay for a
busy one's. A miss (the context dropped) recomputes the full KV: quality 1, TTFT of a full prefill.

Shapes: N contexts, C codecs, T tiers (fastest first); per-option arrays are option-major.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from evicctl.manager.codecs.names import TOKEN_SCORERS, parse_codec_name, scaled_bytes
from evicctl.manager.codecs.names import stored_bytes as codec_stored_bytes
from evicctl.manager.costs import miss_ttft_s

MISS_QUALITY = 1.0  # a recomputed prefix is exact
QUALITY_Z = 1.645  # one-sided 95% lower bound: floors are checked against quality - z * sd


def option_value(alpha: float, quality, ttft_s, out: np.ndarray | None = None) -> np.ndarray:
    """alpha * quality - ttft_s: utility per unit freq, in float32, the placer's precision
    (decisions need no more, and every greedy pass over 100,000 x 48 options is then a few ms).
    Whoever shows a utility computes it here, so it shows the placer's number to the bit."""
    quality_value = np.multiply(quality, alpha, dtype=np.float32)
    return np.subtract(quality_value, np.asarray(ttft_s, dtype=np.float32), out=out)


def utility(freq, alpha: float, quality, ttft_s) -> np.ndarray:
    """U = freq * (alpha * quality - ttft_s) in float64 over option_value, broadcasting."""
    return np.asarray(freq, dtype=np.float64) * option_value(alpha, quality, ttft_s)


def miss_utility(freq, alpha: float, miss_ttft_s) -> np.ndarray:
    """Utility of the `dropped` option: full quality at the cost of a full prefill."""
    return utility(freq, alpha, MISS_QUALITY, miss_ttft_s)


def clamped_read_bps(read_bps) -> np.ndarray:
    """[T] bandwidths as priced. Tiers come fastest first; a probe that measured a faster tier
    slower than one below it (a cold page, a busy CPU) must not send contexts down: each tier
    is priced at least as fast as every tier after it (and at 1 B/s at least)."""
    bps = np.maximum(np.asarray(read_bps, dtype=np.float64).reshape(-1), 1.0)
    return np.maximum.accumulate(bps[::-1])[::-1]


@dataclass(frozen=True, eq=False)
class OptionPrices:
    read_bps: np.ndarray  # [T] bytes/s as priced (clamped)
    decode_s: np.ndarray  # [C, N] decoding each codec's stored form
    ttft_s: np.ndarray  # [T, C, N] predicted TTFT of a hit: load + decode + prefill of the query
    miss_ttft_s: np.ndarray  # [N] the measured full prefill where known, else the cost model's


def price_options(stored_bytes, kept_tokens, families, tokens, *, read_bps, cost_model, query_tokens: float,
                  miss_s=None) -> OptionPrices:  # fmt: skip
    """Predicted delays of every (tier, codec) option of N contexts and of their misses.

    stored_bytes, kept_tokens: [C, N]; families: [C] codec names (their decode speed: per family
    and quantized width, costs.decode_key; a bare family prices at int8's); tokens: [N];
    read_bps: [T] as measured, fastest first; miss_s: [N] measured full prefills, NaN (or <= 0)
    where none was measured (the cost model prices those); query_tokens: the query length.
    """
    stored = np.asarray(stored_bytes, dtype=np.float64)
    n_codecs, n = stored.shape
    bps = clamped_read_bps(read_bps)
    decode_s = np.zeros((n_codecs, n))
    for c, family in enumerate(families):
        decode_s[c] = cost_model.decode_s(family, stored[c])
    prefill_s = np.asarray(cost_model.prefill_s(float(query_tokens), np.asarray(kept_tokens)), dtype=np.float64)
    ttft = stored[None] / bps[:, None, None] + (decode_s + prefill_s.reshape(n_codecs, n))[None]
    modelled = np.asarray(miss_ttft_s(np.asarray(tokens), query_tokens, cost_model), dtype=np.float64).reshape(n)
    if miss_s is None:
        return OptionPrices(bps, decode_s, ttft, modelled)
    measured = np.asarray(miss_s, dtype=np.float64).reshape(n)
    known = np.isfinite(measured) & (measured > 0)
    return OptionPrices(bps, decode_s, ttft, np.where(known, measured, modelled))


# --- sizes: what each codec stores --------------------------------------------------------


def codec_sizes(codecs, tokens: int, shape: tuple | None, raw_bytes: int) -> dict[str, int]:
    """Stored bytes of a context under each codec: exact from its KV shape (layers, kv_heads,
    head_dim, dtype_bytes, window_numel), else scaled from its raw bytes (after a restart
    without a recorded shape) by the codec's ratio on a nominal shape. Torch-free."""
    if shape is not None:
        layers, heads, head_dim, dtype_bytes, window = shape
        return {c: codec_stored_bytes(c, tokens, layers, heads, head_dim, dtype_bytes, window_numel=window)
                for c in codecs}  # fmt: skip
    return {c: scaled_bytes(c, tokens, raw_bytes) for c in codecs}


def kept_tokens(codec: str, tokens: int) -> int:
    """Tokens per head a codec keeps of a `tokens`-token context."""
    return parse_codec_name(codec).kept(tokens)


def codec_family(codec: str) -> str:
    return parse_codec_name(codec).family


# option_rows' layout: one float64 row per field (bytes are exact in float64 below 2**53)
ROW_BYTES, ROW_KEPT, ROW_QUALITY, ROW_LOWER, ROW_PROFILED = range(5)


def option_rows(state, codecs: tuple[str, ...], parts) -> np.ndarray:
    """One context's per-codec rows, [5, C] float64: predicted stored bytes, kept tokens,
    quality, quality lower bound, profiled (0/1). parts: the codecs' CodecParts.

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
    # A codec whose scorer reads token scores the context's KV lacks (or may lack: None) is
    # never offered; states that do not track them (the replay's) offer every codec.
    carried = getattr(state, "token_scores", ...)
    for name, part in zip(codecs, parts, strict=True):
        profile = state.profiles.get(name)
        if name == "none":
            q, lo, known = 1.0, 1.0, 1.0
        elif profile is not None and (carried is ... or part.scorer not in TOKEN_SCORERS or part.scorer in (carried or ())):
            q, sd, _metric = profile
            lo, known = max(0.0, q - QUALITY_Z * (sd or 0.0)), 1.0
        else:
            q = lo = known = 0.0
        quality.append(q)
        lower.append(lo)
        profiled.append(known)
    rows = np.array([
        [state.sizes.get(name, 0) for name in codecs],
        [codec.kept(tokens) for codec in parts],
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
    from evicctl.manager.description import PricingInputs
    from evicctl.manager.placer.types import (
        DROPPED,
        DROPPED_TIER,
        NEW,
        NO_PIN,
        PlacementProblem,
    )

    overrides = overrides or {}
    codecs = tuple(codecs)
    n, n_codecs = len(states), len(codecs)
    codec_at = {c: k for k, c in enumerate(codecs)}
    tier_at = {t.name: k for k, t in enumerate(tiers)}
    parts = _parts_of(codecs)

    rows = np.array([option_rows(s, codecs, parts) for s in states]).reshape(n, 5, n_codecs)
    stored_bytes = np.ascontiguousarray(rows[:, ROW_BYTES].T).astype(np.int64)  # [C, N]
    kept, quality, quality_lower = (np.ascontiguousarray(rows[:, k].T) for k in (ROW_KEPT, ROW_QUALITY, ROW_LOWER))
    profiled = np.ascontiguousarray(rows[:, ROW_PROFILED].T) > 0.5
    tokens = np.array([s.tokens for s in states], dtype=np.int64)
    # Comprehensions with the common case inline: a function call per context costs ~1 us.
    # Each context's placement is read once, as (tier, codec, bytes): the manager prices
    # without holding its state lock, and a lookup may drop a context meanwhile (a copy that
    # failed its checksum); one whose tier reads as unknown then is priced as dropped.
    placed = [(s.tier, s.codec, s.stored_bytes) for s in states]
    stored = [tier in tier_at for tier, _, _ in placed]
    current_tier = np.array([tier_at[p[0]] if k else NEW for p, k in zip(placed, stored, strict=True)], dtype=np.int64)
    current_codec = np.array([codec_at.get(p[1], -1) if k else -1 for p, k in zip(placed, stored, strict=True)],
                             dtype=np.int64)  # fmt: skip
    current_tier[(current_codec < 0) & (current_tier >= 0)] = NEW  # a codec outside `codecs`: placed as new
    gone = np.array([not k and s.stored for s, k in zip(states, stored, strict=True)], dtype=bool)
    current_tier[gone] = DROPPED  # stored on a tier this plan does not know: never the placer's to move
    # The real copy's size, not a prediction, where a context is stored.
    real = np.flatnonzero(current_codec >= 0)
    if len(real):
        nbytes = np.array([p[2] for p in placed], dtype=np.int64)
        stored_bytes[current_codec[real], real] = nbytes[real]
    if admit is not None:  # held whole by the caller: placed as new
        admitted = [i for i, s in enumerate(states) if s.id == admit]
        current_tier[admitted], current_codec[admitted] = NEW, -1

    miss_s = np.array([s.miss_s or np.nan for s in states], dtype=np.float64)
    read_bps = [float(t.read_bps) for t in tiers]  # read once: probes and loads refine them meanwhile
    prices = price_options(stored_bytes, kept, [c.name for c in parts], tokens, read_bps=read_bps,
                           cost_model=cost_model, query_tokens=query_tokens, miss_s=miss_s)  # fmt: skip
    priced_with = PricingInputs(float(alpha), float(query_tokens), tuple(zip((t.name for t in tiers), read_bps, strict=True)),
                                cost_model.to_dict())  # fmt: skip

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
        ttft_s=prices.ttft_s.astype(np.float32),
        miss_ttft_s=prices.miss_ttft_s,
        alpha=alpha,
        current_tier=current_tier,
        current_codec=current_codec,
        pin_tier=pin_tier,
        pin_codec=pin_codec,
        quality_floor=floors,
        force_tier=force_tier,
        force_codec=force_codec,
        min_tier=min_tier,
        derivable=_derivable(codecs),
        rebalance=rebalance,
        # moved after settled_before (a time): too recent for a rebalance to move again
        settled=np.array([k and s.since > settled_before for s, k in zip(states, stored, strict=True)], dtype=bool)
        if settled_before is not None else None,
        priced_with=priced_with,
    )


@functools.lru_cache(maxsize=8)
def _parts_of(codecs: tuple[str, ...]) -> list:
    """The codecs' CodecParts, once per codec list (a one-context admission prices with them)."""
    return [parse_codec_name(c) for c in codecs]


@functools.lru_cache(maxsize=8)
def _derivable(codecs: tuple[str, ...]) -> np.ndarray:
    """derivable_matrix, once per codec list (C x C name parses: ms for the full menu, which
    a one-context admission would otherwise pay on every store). Read only."""
    from evicctl.manager.placer.types import derivable_matrix

    out = derivable_matrix(codecs)
    out.flags.writeable = False
    return out


# --- the utility of where each context is now -----------------------------------------------


def placed_quality(state) -> float:
    """Quality the placer prices a context's current codec at: exact for `none` and for a miss,
    the profile's estimate otherwise, 0 when unprofiled (as option_rows)."""
    if not state.stored or state.codec == "none":
        return MISS_QUALITY
    profile = state.profiles.get(state.codec)
    return profile[0] if profile is not None else 0.0


def placed_utilities(states, freq, *, tiers: tuple[str, ...], read_bps, cost_model, alpha: float,
                     query_tokens: float) -> np.ndarray:  # fmt: skip
    """[N] utility of each context's current placement (its real copy's size, or a miss), priced
    by price_options with one plan's figures: what the manager records as contexts.utility, and
    what `evicctl show` recomputes for the option it marks chosen.

    states: objects with tokens, stored, tier, codec, stored_bytes, profiles, miss_s (as price_problem)."""
    freq = np.asarray(freq, dtype=np.float64).reshape(-1)
    out = np.empty(len(states))
    tier_at = {name: k for k, name in enumerate(tiers)}
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(states):
        groups.setdefault(s.codec if s.stored else "", []).append(i)  # "": dropped
    for codec, rows in groups.items():
        rows_at = np.array(rows)
        group = [states[i] for i in rows]
        stored_bytes = [[s.stored_bytes if codec else 0 for s in group]]
        kept = [[kept_tokens(codec, s.tokens) if codec else s.tokens for s in group]]
        prices = price_options(stored_bytes, kept, [codec or "none"], [s.tokens for s in group],
                               read_bps=read_bps, cost_model=cost_model, query_tokens=query_tokens,
                               miss_s=[s.miss_s or np.nan for s in group])  # fmt: skip
        if codec:
            ttft = prices.ttft_s[[tier_at[s.tier] for s in group], 0, np.arange(len(group))]
        else:
            ttft = prices.miss_ttft_s
        quality = [placed_quality(s) for s in group]
        out[rows_at] = utility(freq[rows_at], alpha, quality, ttft)
    return out
