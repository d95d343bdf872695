"""Utility of a placement option (EVICPRESS, DESIGN §1): U = freq * (alpha * quality - ttft_s).

`alpha` is the seconds of TTFT one unit of quality is worth; `freq` weighs the option by how
often the context is used, so the placer trades a rarely used context's quality or delay for a
busy one's. A miss (the context dropped) recomputes the full KV: quality 1, TTFT of a full prefill.
"""

from __future__ import annotations

import numpy as np

MISS_QUALITY = 1.0  # a recomputed prefix is exact


def utility(freq, alpha: float, quality, ttft_s) -> np.ndarray:
    """U = freq * (alpha * quality - ttft_s), broadcasting numpy arrays (or scalars)."""
    freq = np.asarray(freq, dtype=np.float64)
    return freq * (alpha * np.asarray(quality, dtype=np.float64) - np.asarray(ttft_s, dtype=np.float64))


def miss_utility(freq, alpha: float, miss_ttft_s) -> np.ndarray:
    """Utility of the `dropped` option: full quality at the cost of a full prefill."""
    return utility(freq, alpha, MISS_QUALITY, miss_ttft_s)
