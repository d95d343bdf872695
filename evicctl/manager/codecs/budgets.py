"""How much of a KV a codec keeps, per layer and per key channel: pure arithmetic, no torch.

names.py sizes codecs from a name and a shape with these counts, and the codecs keep
exactly them, so ``stored_bytes`` stays exact for the two dimensions below.

- PyramidKV (arXiv 2406.02069; kvpress ``PyramidKVPress.get_layer_budget``, whose formula
  this reproduces expression for expression): layer l of L keeps ``round(max - l * steps)``
  tokens, a straight line from ``max`` (layer 0) down to ``min`` (the last layer), with
  ``min = X / beta`` and ``max = 2 X - min`` for X = tokens * (1 - ratio), so the layers
  keep X on average (the same total as a uniform drop of that ratio, up to rounding). When
  ``max`` would exceed ``tokens - window`` it is capped there and ``min`` raised to keep
  the total. Where the line cannot be drawn (``min`` below the window: short contexts or
  hard ratios, e.g. ratio 0.75 of a 1k-token context) every layer keeps the uniform count,
  as kvpress falls back to SnapKV. Two differences from kvpress, both from what every
  evicctl drop keeps: no layer keeps fewer than SINK_TOKENS + WINDOW_TOKENS (the protected
  tokens), and the fallback is ``kept_count`` (int rounding, as SnapKVPress) where kvpress's
  uses ``round``.
- ThinK (arXiv 2407.21018; kvpress ``ThinKPress``): ``int(head_dim * ratio)`` key channels
  are pruned per (layer, kv head), as kvpress; the kept count is then rounded up to a
  multiple of CHANNEL_UNIT so that every quantization width packs the kept channels into
  whole bytes (int3 packs 8 channels in 3 bytes) and a copy pruned at one width can be
  quantized at another with the same channels. For head_dim 64 and 128 at ratios that are
  multiples of 1/8 (the menu's) nothing is rounded: the count is kvpress's.
"""

from __future__ import annotations

PYRAMID_BETA = 20  # kvpress PyramidKVPress.beta: the last layer keeps 1/beta of the average
CHANNEL_UNIT = 8  # kept key channels come in multiples of this (int3 packs 8 channels in 3 bytes)


def pyramid_budgets(
    tokens: int,
    layers: int,
    ratio: float,
    *,
    window: int,
    floor: int,
    uniform: int,
    beta: int = PYRAMID_BETA,
) -> tuple[int, ...]:
    """Tokens each layer keeps, layer 0 first (kvpress's get_layer_budget, see the module docstring).

    window: the observation window (kvpress's window_size); floor: no layer keeps fewer
    (the protected tokens); uniform: what every layer keeps where the pyramid falls back."""
    capacity = window + tokens * (1 - ratio)  # kvpress's max_capacity_prompt
    min_num = (capacity - window) / beta
    max_num = (capacity - window) * 2 - min_num
    if max_num >= tokens - window:
        max_num = tokens - window
        min_num = (capacity - window) * 2 - max_num
    if not (tokens >= max_num >= min_num >= window):
        return (uniform,) * layers
    steps = (max_num - min_num) / (layers - 1) if layers > 1 else 0.0
    return tuple(min(tokens, max(round(max_num - layer * steps), floor)) for layer in range(layers))


def kept_channels(head_dim: int, ratio: float) -> int:
    """Key channels a ThinK codec keeps of `head_dim` when the fraction `ratio` is pruned."""
    if not ratio:
        return head_dim
    kept = head_dim - int(head_dim * ratio)
    return min(head_dim, -(-kept // CHANNEL_UNIT) * CHANNEL_UNIT)


__all__ = ["CHANNEL_UNIT", "PYRAMID_BETA", "kept_channels", "pyramid_budgets"]
