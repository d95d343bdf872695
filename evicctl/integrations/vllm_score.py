"""Pure pricing for chunk eviction: what keeping one chunk saves, and decayed frequency.

evicctl's utility for a context is freq * (alpha * quality - TTFT) (DESIGN §1). Inside
vLLM's CPU tier a chunk is raw KV (quality 1, one option: keep or drop), every chunk has the
same size, so what separates two chunks is freq * (prefill seconds a hit saves - seconds to
read the chunk back): the utility gain of keeping it, per chunk and so per byte.

Frequency is kept in log space against a logical clock (finished requests): a decayed count
f = sum 2^-(now - t_i)/h, stored as log(f) + now*ln2/h, which stays comparable across
chunks without ever being rewritten as time passes (the usual trick for decayed LFU heaps).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

LN2 = math.log(2.0)
MIN_SAVED_S = 1e-9  # a chunk that loads slower than it recomputes still ranks, lowest


def log_add(a: float, b: float) -> float:
    """log(e^a + e^b) without overflow."""
    if a < b:
        a, b = b, a
    return a + math.log1p(math.exp(b - a))


def access_weight(clock: float, half_life: float) -> float:
    """log-weight of one access at logical time `clock`."""
    return clock * LN2 / half_life


class ChunkPricer:
    """Seconds saved by a CPU hit on the chunk ending at token `end_pos`, memoised per position
    (positions are multiples of the chunk size, so the memo stays small)."""

    def __init__(self, prefill_coef, chunk_tokens: int, chunk_bytes: int, read_bps: float) -> None:
        from evicctl.manager.costs import as_prefill_coef

        _, self.b, self.c, self.d = (float(x) for x in as_prefill_coef(prefill_coef))
        self.chunk_tokens = chunk_tokens
        self.load_s = chunk_bytes / read_bps
        self._log_saved: dict[int, float] = {}

    @classmethod
    def from_cost_file(cls, path: Path, chunk_tokens: int, chunk_bytes: int) -> ChunkPricer:
        d = json.loads(Path(path).read_text())
        read_bps = next(float(t["read_bps"]) for t in d["tiers"] if t["name"] == "cpu")
        return cls(d["prefill_coef"], chunk_tokens, chunk_bytes, read_bps)

    def saved_s(self, end_pos: int) -> float:
        """Marginal prefill of this chunk inside a full prefill, minus reading it from host.

        prefill_s(n) = a + b*n + d*n^2 for a miss; the chunk [start, end) costs
        b*(end-start) + d*(end^2 - start^2): deeper chunks attend over more, cost more."""
        start = max(0, end_pos - self.chunk_tokens)
        compute_s = self.b * (end_pos - start) + self.d * (end_pos * end_pos - start * start)
        return max(compute_s - self.load_s, MIN_SAVED_S)

    def log_saved(self, end_pos: int | None) -> float:
        pos = self.chunk_tokens if end_pos is None else end_pos
        v = self._log_saved.get(pos)
        if v is None:
            v = self._log_saved[pos] = math.log(self.saved_s(pos))
        return v
