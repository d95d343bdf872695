"""The delay model: predicted TTFT of a (codec, tier) option, and of a miss.

TTFT of a hit = stored_bytes / tier read_bps + codec decode time + prefill of the query on
top of the kept tokens; a miss = prefill of the whole context plus the query (DESIGN §1).

Prefill time is fitted on what the engine reports, (new_tokens, cached_tokens, seconds):
``prefill_s = a + b * new + c * new * (new + cached)`` (a fixed cost, the per-token MLP and
projections, and attention over everything visible), by non-negative least squares over a
bounded history, so the curve stays monotone whatever the noise. Before any measurement the
coefficients are SmolLM2-135M on this 2-core CPU (DESIGN §8: 1k-token prefill ~1.8 s).
With fewer than MIN_FIT observations, or all at one size, the default shape is scaled by
the least-squares factor instead.

Codec decode throughput (stored bytes per second of ``decode``) per family: defaults from
bench/codec_bench.py on this CPU, refined by ``observe_decode`` (moving average) or set by
``probe_decode``.

All the predictors take numpy arrays as well as scalars (the placer vectorises).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable

import numpy as np

# prefill_s = a + b*new + c*new*(new+cached); 1k tokens: 0.05 + 1.6 + 0.15 = 1.8 s
DEFAULT_PREFILL_COEF = (0.05, 1.6e-3, 1.5e-7)
# stored bytes decoded per second on this 2-core CPU (bench/codec_bench.py, SmolLM2 shape,
# fp32, 1 thread: int8 ~0.5 GB/s of stored bytes, int4 about half per stored byte; the
# machine was shared, so these are conservative). `none` and drop codecs decode by handing
# out the stored tensors (and a 2-byte position per kept token): no real work.
DEFAULT_DECODE_BPS = {"none": 1e12, "drop": 1e12, "quant": 4e8, "drop+quant": 4e8}
HISTORY = 256  # prefill observations kept for the fit
MIN_FIT = 4  # observations (spanning all three features) before the three coefficients are fitted
DECODE_EWMA = 0.2


def _features(new_tokens, cached_tokens) -> np.ndarray:
    new = np.asarray(new_tokens, dtype=float)
    cached = np.asarray(cached_tokens, dtype=float)
    return np.stack(np.broadcast_arrays(np.ones_like(new + cached), new, new * (new + cached)), axis=-1)


class CostModel:
    """Prefill cost fitted from observations; codec decode throughput per family."""

    def __init__(
        self,
        prefill_coef: Iterable[float] = DEFAULT_PREFILL_COEF,
        decode_bps: dict[str, float] | None = None,
        history: Iterable[tuple[int, int, float]] = (),
    ) -> None:
        self.default_coef = np.asarray(tuple(prefill_coef), dtype=float)
        if self.default_coef.shape != (3,) or (self.default_coef < 0).any():
            raise ValueError(f"prefill_coef must be 3 non-negative numbers; got {self.default_coef}")
        self.coef = self.default_coef.copy()
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
        norm = np.abs(x).max(axis=0)  # columns span 1 .. 1e7: solve on unit-scaled columns
        if len(data) >= MIN_FIT and np.linalg.matrix_rank(x / norm) == 3:
            from scipy.optimize import nnls

            coef = nnls(x / norm, y)[0] / norm
            if coef[1] + coef[2] > 0:  # a fit that ignores size entirely is no fit
                self.coef = coef
                return
        base = x @ self.default_coef
        self.coef = self.default_coef * float(base @ y / (base @ base))

    # ------------------------------------------------------------ decode

    def decode_bps(self, codec_family: str) -> float:
        """Stored bytes a codec of this family decodes per second."""
        try:
            return self._decode_bps[codec_family]
        except KeyError:
            raise ValueError(f"unknown codec family {codec_family!r}; valid: {', '.join(self._decode_bps)}") from None

    def decode_s(self, codec_family: str, stored_bytes):
        """Seconds to decode `stored_bytes` (scalar or array) of a codec of this family."""
        out = np.asarray(stored_bytes, dtype=float) / self.decode_bps(codec_family)
        return float(out) if out.ndim == 0 else out

    def observe_decode(self, codec_family: str, stored_bytes: int, seconds: float) -> None:
        if stored_bytes <= 0 or not seconds > 0:
            return
        old = self.decode_bps(codec_family)
        self._decode_bps[codec_family] = (1 - DECODE_EWMA) * old + DECODE_EWMA * stored_bytes / seconds

    def probe_decode(self, device: str = "cpu", tokens: int = 512) -> dict[str, float]:
        """Measure decode throughput per family on a small SmolLM2-shaped KV (~0.2 s on CPU)."""
        import torch

        from evicctl.manager.codecs import get_codec
        from evicctl.manager.kv import KV

        gen = torch.Generator().manual_seed(0)
        layers, heads, dim = 4, 3, 64
        kv = KV.full(
            [torch.randn(1, heads, tokens, dim, generator=gen) for _ in range(layers)],
            [torch.randn(1, heads, tokens, dim, generator=gen) for _ in range(layers)],
        ).to(device)
        for family, name in (("quant", "int8"), ("drop+quant", "knorm@0.5+int8")):
            codec = get_codec(name)
            stored = codec.encode(kv)
            best_s = float("inf")
            for _ in range(4):  # the first warms up; the best of the rest resists a busy CPU
                start = time.perf_counter()
                codec.decode(stored, device)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                best_s = min(best_s, time.perf_counter() - start)
            self._decode_bps[family] = stored.nbytes / max(best_s, 1e-9)
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
        model = cls(
            prefill_coef=data.get("default_prefill_coef", DEFAULT_PREFILL_COEF),
            decode_bps=data.get("decode_bps"),
            history=[tuple(h) for h in data.get("history", ())],
        )
        if "prefill_coef" in data:
            model.coef = np.asarray(data["prefill_coef"], dtype=float)
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
