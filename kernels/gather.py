"""Token compaction (gather of the kept tokens), alone or fused with quantization.

- gather_tokens(x [B, H, T, D], idx [B, H, K] int64) -> [B, H, K, D], as
  ``x.gather(2, idx[..., None].expand(..., D))`` (evicctl.manager.codecs.quant.gather_tokens).
- gather_quantize_keys / gather_quantize_values(x, idx, bits, group) equal
  quantize_*(gather_tokens(x, idx), bits, group) bit for bit, in one pass: the quantizer reads
  the kept rows straight from x, so the gathered bf16 copy is never written or read back
  (3 passes of the kept tokens' bytes -> 1).
Indices are not bounds-checked on the GPU (as a gather kernel, an index out of [0, T) reads
out of bounds): callers pass indices made by evicctl.manager.codecs.scorers.select.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from ._jit import layer_offset
from ._layers import as_layers, kernel_device, layer_table, new_output
from .quant import quantize_keys_launch, quantize_values_launch

# the fastest of benchmarks/gpu_bench.py's sweep on the H200
TUNING: dict[str, int] = {"block_k": 32, "warps": 1}


@triton.jit
def _gather_kernel(
    x_ptr, x_offs, i_ptr, i_offs, y_ptr, y_offs,
    H, K, sx_b, sx_h, sx_t,
    D: tl.constexpr, BK: tl.constexpr, ALIGNED: tl.constexpr,
):
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    layer = tl.program_id(2)
    b = bh // H
    h = bh % H
    k = pid * BK + tl.arange(0, BK)
    km = k < K
    row_out = bh.to(tl.int64) * K + k
    rows = tl.load(i_ptr + layer_offset(i_offs, layer, False) + row_out, mask=km, other=0)
    d = tl.arange(0, D)
    x_base = x_ptr + layer_offset(x_offs, layer, ALIGNED) + b.to(tl.int64) * sx_b + h.to(tl.int64) * sx_h
    x = tl.load(x_base + rows[:, None] * sx_t + d[None, :], mask=km[:, None])
    tl.store(y_ptr + layer_offset(y_offs, layer, ALIGNED) + row_out[:, None] * D + d[None, :], x, mask=km[:, None])


def _idx_layers(idx, n_layers: int, what: str) -> list[torch.Tensor]:
    layers = as_layers(idx, 3, what)
    if len(layers) != n_layers:
        raise ValueError(f"{what}: {len(layers)} index layers for {n_layers} tensor layers")
    return layers


def _gather_launch(layers: list[torch.Tensor], idx_layers: list[torch.Tensor], what: str) -> torch.Tensor:
    x = layers[0]
    B, H, T, D = x.shape
    if D & (D - 1) or x.stride(-1) != 1:
        raise ValueError(f"{what}: the kernel needs a power-of-two, contiguous channel dim; got {D}")
    i = idx_layers[0]
    if i.dtype != torch.int64 or tuple(i.shape[:2]) != (B, H) or not i.is_contiguous():
        raise ValueError(f"{what}: idx must be contiguous int64 [{B}, {H}, K]; got {i.dtype} {tuple(i.shape)}")
    device = kernel_device(x, i)
    K = i.shape[2]
    L = len(layers)
    y = new_output((L, B, H, K, D), x.dtype, device)
    if K == 0:
        return y
    xb, xo, ax = layer_table(layers, device)
    ib, io, _ = layer_table(idx_layers, device)
    yb, yo, ay = layer_table(y, device)
    BK = TUNING["block_k"]
    _gather_kernel[(triton.cdiv(K, BK), B * H, L)](
        xb, xo, ib, io, yb, yo, H, K, x.stride(0), x.stride(1), x.stride(2),
        D=D, BK=BK, ALIGNED=ax and ay, num_warps=TUNING["warps"],
    )
    return y


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, D], idx [B, H, K] int64 -> [B, H, K, D]: the kept tokens of each head."""
    if x.dim() != 4 or idx.dim() != 3:
        raise ValueError(f"gather_tokens: x must be [B, H, T, D] and idx [B, H, K]; got {tuple(x.shape)}, {tuple(idx.shape)}")
    return _gather_launch([x], [idx], "gather_tokens")[0]


def gather_tokens_layers(xs: torch.Tensor | Sequence[torch.Tensor], idx) -> torch.Tensor:
    """Every layer in one launch: L x [B, H, T, D] and L x [B, H, K] -> [L, B, H, K, D]."""
    layers = as_layers(xs, 4, "gather_tokens_layers")
    return _gather_launch(layers, _idx_layers(idx, len(layers), "gather_tokens_layers"), "gather_tokens_layers")


def gather_quantize_keys(k, idx, bits: int, group: int = 32):
    """quantize_keys(gather_tokens(k, idx), bits, group) in one pass.

    One layer (k [B, H, T, D], idx [B, H, K]) -> (codes, scale, mn) of one layer, or every
    layer at once (a sequence of L tensors or stacked [L, ...]) -> stacked [L, ...] outputs.
    """
    what = "gather_quantize_keys"
    if isinstance(k, torch.Tensor) and k.dim() == 4:
        codes, scale, mn = quantize_keys_launch([k], bits, group, _idx_layers([idx], 1, what), None, what)
        return codes[0], scale[0], mn[0]
    layers = as_layers(k, 4, what)
    return quantize_keys_launch(layers, bits, group, _idx_layers(idx, len(layers), what), None, what)


def gather_quantize_values(v, idx, bits: int, group: int = 32):
    """quantize_values(gather_tokens(v, idx), bits, group) in one pass (shapes: gather_quantize_keys)."""
    what = "gather_quantize_values"
    if isinstance(v, torch.Tensor) and v.dim() == 4:
        codes, scale, mn = quantize_values_launch([v], bits, group, _idx_layers([idx], 1, what), None, what)
        return codes[0], scale[0], mn[0]
    layers = as_layers(v, 4, what)
    return quantize_values_launch(layers, bits, group, _idx_layers(idx, len(layers), what), None, what)
