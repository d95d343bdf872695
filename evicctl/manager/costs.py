"""The delay model: predicted TTFT of a (codec, tier) option, and of a miss.

TTFT of a hit = stored_bytes / tier read_bps + codec decode time + prefill of the query on
top of the kept tokens; a miss = prefill of the whole context plus the query (DESIGN §1).

Prefill time is fitted on what the engine reports, (new_tokens, cached_tokens, seconds):
``prefill_s = a + b * new + c * cached + d * new * (new + cached)`` (a fixed cost, the
per-token MLP and projections, a cost per cached token whatever the query's length, and
attention over everything visible), by non-negative least squares over a bounded history,
so the curve stays monotone whatever the noise. The cached term is what a short query on a
long prefix pays beyond the attention products: the cache's memory is read (and, in HF's
DynamicCache, copied on append) once per forward. Without it the H200 fit was off by up to
75% (a 16-token query on a 32k prefix: 66 ms measured, 39 ms fitted).

Before any measurement the coefficients are SmolLM2-135M on this 2-core CPU (DESIGN §8:
1k-token prefill ~1.8 s). Until the history pins every coefficient, the defaults fill in:
with fewer than MIN_FIT observations, or all at one size, the default shape is scaled by
the least-squares factor; when the cached counts cannot be told apart from the fixed cost
(all misses, say), c is the scaled default and the rest are fitted.

Coefficients of the older three-term form (a, b, d), as stored manager configs and cost
files hold them, read as (a, b, 0, d): the same predictions.

Codec decode throughput (stored bytes per second of ``decode``) per family and quantized width:
a codec is priced by its decode key, its family and for a quantized codec its width too
(``quant:int4``, ``drop+quant:int2``; ``decode_key``), since decoding does work per element and
a stored byte of int2 holds four times the elements of int8's (on the H200 int4 decodes 282 GB/s
of stored bytes against int8's 528). A width not measured yet is priced at its family's figure
(the family entries are int8's, what the probe measured before it measured widths, and what
cost files written before then hold). Defaults from benchmarks/codec_bench.py on this CPU,
refined by ``observe_decode`` (moving average, per width) or set by ``probe_decode`` (every width).

All the predictors take numpy arrays as well as scalars (the placer vectorises).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable

import numpy as np

from evicctl.errors import UnknownNameError
from evicctl.manager.codecs.names import FAMILIES, QUANTIZERS, parse_codec_name

# prefill_s = a + b*new + c*cached + d*new*(new+cached); 1k tokens: 0.05 + 1.6 + 0.15 = 1.8 s.
# c: DESIGN §8's 24-token answer on a cached 1k prefix took 1.65 s, 69 ms a one-token forward,
# of which a + b + d*1001 is 52 ms: ~17 ms per 1k cached tokens (HF copies the cache on append)
DEFAULT_PREFILL_COEF = (0.05, 1.6e-3, 1.7e-5, 1.5e-7)
N_COEF = 4
# stored bytes decoded per second on this 2-core CPU (benchmarks/codec_bench.py, SmolLM2 shape,
# fp32, 1 thread: int8 ~0.5 GB/s of stored bytes, int4 about half per stored byte; the
# machine was shared, so these are conservative). `none` and drop codecs decode by handing
# out the stored tensors (and a 2-byte position per kept token): no real work.
# The family entries stand for int8; widths fall back to them until measured (decode_key).
DEFAULT_DECODE_BPS = {"none": 1e12, "drop": 1e12, "quant": 4e8, "drop+quant": 4e8}
WIDTH_SEP = ":"  # a decode key's family and width: "quant:int4"
HISTORY = 256  # prefill observations kept for the fit
MIN_FIT = 4  # observations (spanning the features) before coefficients are fitted
DECODE_EWMA = 0.2


def _features(new_tokens, cached_tokens) -> np.ndarray:
    """[..., 4]: 1, new, cached, new * (new + cached)."""
    new = np.asarray(new_tokens, dtype=float)
    cached = np.asarray(cached_tokens, dtype=float)
    return np.stack(np.broadcast_arrays(np.ones_like(new + cached), new, cached, new * (new + cached)), axis=-1)


def as_prefill_coef(values: Iterable[float]) -> np.ndarray:
    """(a, b, c, d) as a float array; the three-term form (a, b, d) reads as (a, b, 0, d).

    Raises ValueError for any other length or a negative coefficient."""
    coef = np.asarray(tuple(values), dtype=float)
    if coef.shape == (3,):
        coef = np.array([coef[0], coef[1], 0.0, coef[2]])
    if coef.shape != (N_COEF,) or not np.isfinite(coef).all() or (coef < 0).any():
        raise ValueError(f"prefill_coef must be 4 (or the older 3) non-negative numbers; got {coef}")
    return coef


def decode_key(codec: str) -> str:
    """The entry a codec's decode speed is kept under: its family, plus its width when it
    quantizes (``int4-g64`` -> ``quant:int4``, ``knorm@0.5+int2`` -> ``drop+quant:int2``,
    ``snapkv@0.5`` -> ``drop``). A family name or a decode key is its own key.

    Raises ValueError for anything else."""
    if codec in FAMILIES:
        return codec
    family, sep, width = codec.partition(WIDTH_SEP)
    if sep:
        if family in ("quant", "drop+quant") and width in QUANTIZERS:
            return codec
        raise ValueError(f"unknown decode key {codec!r}; valid: <family>:int<bits> of a quantizing family")
    try:
        parts = parse_codec_name(codec)
    except UnknownNameError:
        valid = ", ".join(FAMILIES)
        raise ValueError(f"unknown codec family {codec!r}; valid: a codec name or one of {valid}") from None
    return f"{parts.family}{WIDTH_SEP}int{parts.bits}" if parts.bits else parts.family


class CostModel:
    """Prefill cost fitted from observations; codec decode throughput per family and width."""

    def __init__(
        self,
        prefill_coef: Iterable[float] = DEFAULT_PREFILL_COEF,
        decode_bps: dict[str, float] | None = None,
        history: Iterable[tuple[int, int, float]] = (),
    ) -> None:
        self.default_coef = as_prefill_coef(prefill_coef)
        self.coef = self.default_coef.copy()
        self.fit_kind = "default"  # default | scaled | partial (c from the default) | full
        self._decode_bps = {**DEFAULT_DECODE_BPS, **(decode_bps or {})}
        self._history: deque[tuple[int, int, float]] = deque(maxlen=HISTORY)
        for new, cached, seconds in history:
            self._history.append((int(new), int(cached), float(seconds)))
        if self._history:
            self._fit()

    # ------------------------------------------------------------ prefill

    def prefill_s(self, new_tokens, cached_tokens=0):
        """Seconds to prefill `new_tokens` on top of `cached_tokens` (scalars or arrays)."""
        out = _features(new_tokens, cached_tokens) @ self.coef
        out = np.where(np.asarray(new_tokens) > 0, out, 0.0)
        return float(out) if out.ndim == 0 else out

    def observe_prefill(self, new_tokens: int, cached_tokens: int, seconds: float) -> None:
        if new_tokens <= 0 or cached_tokens < 0 or not seconds > 0:
            return  # nothing to learn from (and a bad report must not poison the fit)
        self._history.append((int(new_tokens), int(cached_tokens), float(seconds)))
        self._fit()

    @property
    def n_observations(self) -> int:
        return len(self._history)

    def _fit(self) -> None:
        data = np.asarray(self._history, dtype=float)  # [N, 3]
        x, y = _features(data[:, 0], data[:, 1]), data[:, 2]
        base = x @ self.default_coef
        scale = float(base @ y / (base @ base))  # least-squares factor of the default shape
        if len(data) >= MIN_FIT:
            # which coefficients the history pins: all four, or all but c (cached counts that
            # do not vary apart from the fixed cost: all misses, or one prefix length)
            for fixed_c in (None, scale * self.default_coef[2]):
                free = [0, 1, 2, 3] if fixed_c is None else [0, 1, 3]
                target = y if fixed_c is None else y - fixed_c * x[:, 2]
                coef = self._nnls(x[:, free], target)
                if coef is None:
                    continue
                full = np.zeros(N_COEF)
                full[free] = coef
                if fixed_c is not None:
                    full[2] = fixed_c
                self.coef, self.fit_kind = full, "full" if fixed_c is None else "partial"
                return
        self.coef, self.fit_kind = self.default_coef * scale, "scaled"

    @staticmethod
    def _nnls(x: np.ndarray, y: np.ndarray) -> np.ndarray | None:
        """Non-negative least squares of x @ coef = y, or None when x's columns are not
        independent or the fit ignores size (no per-token term)."""
        norm = np.abs(x).max(axis=0)  # columns span 1 .. 1e9: solve on unit-scaled columns
        if (norm == 0).any() or np.linalg.matrix_rank(x / norm) < x.shape[1]:
            return None
        from scipy.optimize import nnls

        coef = nnls(x / norm, y)[0] / norm
        # a fit that ignores size entirely is no fit: b and d are columns 1 and last
        return coef if coef[1] + coef[-1] > 0 else None

    # ------------------------------------------------------------ decode

    def decode_bps(self, codec: str) -> float:
        """Stored bytes a codec decodes per second: its width's figure where measured, else
        its family's. `codec`: a codec name, a family or a decode key (decode_key)."""
        key = decode_key(codec)
        bps = self._decode_bps.get(key)
        if bps is None:
            bps = self._decode_bps.get(key.partition(WIDTH_SEP)[0])
        if bps is None:
            raise ValueError(f"no decode speed for {codec!r}; known: {', '.join(self._decode_bps)}")
        return bps

    def decode_s(self, codec: str, stored_bytes):
        """Seconds to decode `stored_bytes` (scalar or array) of a codec (name, family or key)."""
        out = np.asarray(stored_bytes, dtype=float) / self.decode_bps(codec)
        return float(out) if out.ndim == 0 else out

    def observe_decode(self, codec: str, stored_bytes: int, seconds: float) -> None:
        """Fold one measured decode into the codec's entry (its width's, for a quantized name)."""
        if stored_bytes <= 0 or not seconds > 0:
            return
        old = self.decode_bps(codec)
        seen = stored_bytes / seconds
        self._decode_bps[decode_key(codec)] = (1 - DECODE_EWMA) * old + DECODE_EWMA * seen

    def probe_decode(self, device: str = "cpu", tokens: int = 512) -> dict[str, float]:
        """Measure decode throughput of every quantized width, alone and after a drop, on a
        small SmolLM2-shaped KV (~1 s on this CPU). The family entries take int8's figures
        (what callers that name no width are priced at)."""
        import torch

        from evicctl.manager.codecs.codec import get_codec
        from evicctl.manager.kv import KV

        gen = torch.Generator().manual_seed(0)
        layers, heads, dim = 4, 3, 64
        kv = KV.full(
            [torch.randn(1, heads, tokens, dim, generator=gen) for _ in range(layers)],
            [torch.randn(1, heads, tokens, dim, generator=gen) for _ in range(layers)],
        ).to(device)
        for width in QUANTIZERS:
            for name in (width, f"knorm@0.5+{width}"):
                codec = get_codec(name)
                stored = codec.encode(kv)
                best_s = float("inf")
                for _ in range(4):  # the first warms up; the best of the rest resists a busy CPU
                    start = time.perf_counter()
                    codec.decode(stored, device)
                    if device.startswith("cuda"):
                        torch.cuda.synchronize()
                    best_s = min(best_s, time.perf_counter() - start)
                bps = stored.nbytes / max(best_s, 1e-9)
                self._decode_bps[decode_key(name)] = bps
                if width == "int8":
                    self._decode_bps[codec.family] = bps
        return dict(self._decode_bps)

    # ------------------------------------------------------------ persistence

    def to_dict(self) -> dict:
        """JSON-ready (manager.config_json["cost_model"])."""
        return {
            "prefill_coef": [float(c) for c in self.coef],
            "default_prefill_coef": [float(c) for c in self.default_coef],
            "decode_bps": {k: float(v) for k, v in self._decode_bps.items()},
            "history": [list(h) for h in list(self._history)[-64:]],
        }

    @classmethod
    def from_dict(cls, data: dict) -> CostModel:
        """Inverse of to_dict; also reads dicts of the three-term form (no cached term).

        The stored coefficients win over a refit of the stored (truncated) history, except
        three-term ones when that history pins all four terms: they were fitted on it
        without the cached term, and the refit is the same data with it."""
        model = cls(
            prefill_coef=data.get("default_prefill_coef", DEFAULT_PREFILL_COEF),
            decode_bps=data.get("decode_bps"),
            history=[tuple(h) for h in data.get("history", ())],
        )
        stored = data.get("prefill_coef")
        if stored is not None and (len(stored) == N_COEF or model.fit_kind != "full"):
            model.coef = as_prefill_coef(stored)
        return model


def predicted_ttft_s(stored_bytes, read_bps, decode_s, query_tokens, kept_tokens, cost_model: CostModel):
    """TTFT of a hit: load + decode + prefill of the query over the kept tokens (arrays ok)."""
    load_s = np.asarray(stored_bytes, dtype=float) / np.asarray(read_bps, dtype=float)
    out = load_s + decode_s + cost_model.prefill_s(query_tokens, kept_tokens)
    return float(out) if np.ndim(out) == 0 else out


def miss_ttft_s(context_tokens, query_tokens, cost_model: CostModel):
    """TTFT of a miss: prefill of the whole context and the query (arrays ok)."""
    total = np.asarray(context_tokens) + np.asarray(query_tokens)
    return cost_model.prefill_s(total, 0)
