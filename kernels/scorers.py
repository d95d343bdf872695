"""Key scorers for token dropping, Triton kernels (references: evicctl.manager.codecs.scorers).

- knorm_scores(k [B, H, K, D]) -> [B, H, K] fp32: -||k||. One read of the keys.
- keydiff_scores(k) -> [B, H, K] fp32: -cos(k, mean of unit keys of the head). Two reads of
  the keys (the anchor needs every key before any score), the floor for this scorer.
- snapkv_scores(k [1, H, K, D], window_queries [Hq, W, D], key_positions [H, K], tokens)
  -> [1, H, K] fp32: the window queries' causal softmax attention over the keys, averaged
  over the window and the GQA group, window keys zeroed, 5-wide average pool, window keys
  set to the layer's largest other score + 1 (so they rank first). Two reads of the keys (softmax needs each row's
  max and sum first, split-K like flash-decoding); the pooling and the window fill run on
  the [H, K] result in torch. Logits come from the tensor cores: with bf16/fp16 queries and
  keys the products are exact and only the fp32 summation order differs from the reference;
  fp32 queries go through 3xTF32.

knorm and keydiff match the reference to fp32 rounding (~1e-6 relative); snapkv to ~1e-5.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._jit import layer_offset
from ._layers import as_layers, kernel_device, layer_table, new_output

# the fastest of benchmarks/gpu_bench.py's sweep on the H200
TUNING: dict[str, int] = {"block_k": 64, "warps": 1, "snap_block_k": 64, "snap_rows": 64, "snap_warps": 8}
_FORCE_TF32 = False
SNAPKV_POOL = 5  # kvpress SnapKVPress.kernel_size, as evicctl.manager.codecs.scorers


@triton.jit
def _knorm_kernel(
    x_ptr, x_offs, y_ptr, H, K, sx_b, sx_h, sx_t, D: tl.constexpr, BK: tl.constexpr, ALIGNED: tl.constexpr
):
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    layer = tl.program_id(2)
    b = bh // H
    h = bh % H
    k = pid * BK + tl.arange(0, BK)
    km = k < K
    d = tl.arange(0, D)
    x_base = x_ptr + layer_offset(x_offs, layer, ALIGNED) + b.to(tl.int64) * sx_b + h.to(tl.int64) * sx_h
    x = tl.load(x_base + k.to(tl.int64)[:, None] * sx_t + d[None, :], mask=km[:, None], other=0.0).to(tl.float32)
    norm = tl.sqrt(tl.sum(x * x, axis=1))
    out = (layer.to(tl.int64) * tl.num_programs(1) + bh) * K + k
    tl.store(y_ptr + out, -norm, mask=km)


@triton.jit
def _keydiff_anchor_kernel(
    x_ptr, x_offs, a_ptr, H, K, sx_b, sx_h, sx_t, D: tl.constexpr, BK: tl.constexpr, ALIGNED: tl.constexpr
):
    # a[layer, bh, :] += sum over this block's tokens of k / max(||k||, 1e-12)
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    layer = tl.program_id(2)
    b = bh // H
    h = bh % H
    k = pid * BK + tl.arange(0, BK)
    km = k < K
    d = tl.arange(0, D)
    x_base = x_ptr + layer_offset(x_offs, layer, ALIGNED) + b.to(tl.int64) * sx_b + h.to(tl.int64) * sx_h
    x = tl.load(x_base + k.to(tl.int64)[:, None] * sx_t + d[None, :], mask=km[:, None], other=0.0).to(tl.float32)
    norm = tl.maximum(tl.sqrt(tl.sum(x * x, axis=1)), 1e-12)
    part = tl.sum(x / norm[:, None], axis=0)
    tl.atomic_add(a_ptr + (layer.to(tl.int64) * tl.num_programs(1) + bh) * D + d, part)


@triton.jit
def _keydiff_score_kernel(
    x_ptr, x_offs, a_ptr, y_ptr, H, K, sx_b, sx_h, sx_t, D: tl.constexpr, BK: tl.constexpr, ALIGNED: tl.constexpr
):
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    layer = tl.program_id(2)
    b = bh // H
    h = bh % H
    lbh = layer.to(tl.int64) * tl.num_programs(1) + bh
    d = tl.arange(0, D)
    a = tl.load(a_ptr + lbh * D + d) / K  # the mean unit key
    a_unit = a / tl.maximum(tl.sqrt(tl.sum(a * a, axis=0)), 1e-8)
    k = pid * BK + tl.arange(0, BK)
    km = k < K
    x_base = x_ptr + layer_offset(x_offs, layer, ALIGNED) + b.to(tl.int64) * sx_b + h.to(tl.int64) * sx_h
    x = tl.load(x_base + k.to(tl.int64)[:, None] * sx_t + d[None, :], mask=km[:, None], other=0.0).to(tl.float32)
    norm = tl.maximum(tl.sqrt(tl.sum(x * x, axis=1)), 1e-8)
    cos = tl.sum((x / norm[:, None]) * a_unit[None, :], axis=1)
    tl.store(y_ptr + lbh * K + k, -cos, mask=km)


@triton.jit
def _snap_logits(q_base, sq_h, sq_w, k_tile, kpos, h, r0, tokens, scale,
                 R: tl.constexpr, W: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr, RB: tl.constexpr,
                 BK: tl.constexpr, PRECISION: tl.constexpr):
    """Logits [RB, BK] of rows r0..r0+RB (row r: query head h*GROUP + r // W, window slot r % W)."""
    r = r0 + tl.arange(0, RB)
    rm = r < R
    qh = h * GROUP + r // W
    w = r % W
    d = tl.arange(0, D)
    q = tl.load(q_base + qh.to(tl.int64)[:, None] * sq_h + w[:, None] * sq_w + d[None, :], mask=rm[:, None], other=0.0)
    if PRECISION == "native":
        logits = tl.dot(q.to(k_tile.dtype), tl.trans(k_tile))
    else:
        logits = tl.dot(q.to(tl.float32), tl.trans(k_tile.to(tl.float32)), input_precision="tf32x3")
    logits = logits * scale
    qpos = tokens - W + w
    allowed = rm[:, None] & (kpos[None, :] <= qpos[:, None])
    return tl.where(allowed, logits, float("-inf")), rm


@triton.jit
def _snap_tiles(k_ptr, k_offs, sk_h, sk_t, p_ptr, sp_l, sp_h, sp_t, q_ptr, sq_l, layer, h, nb, K, tokens,
                D: tl.constexpr, BK: tl.constexpr, ALIGNED: tl.constexpr):
    """This program's key tile [BK, D], their positions [BK] and its layer's query base."""
    k = nb * BK + tl.arange(0, BK)
    km = k < K
    d = tl.arange(0, D)
    k_base = k_ptr + layer_offset(k_offs, layer, ALIGNED) + h.to(tl.int64) * sk_h
    k_tile = tl.load(k_base + k.to(tl.int64)[:, None] * sk_t + d[None, :], mask=km[:, None], other=0.0)
    p_base = p_ptr + layer.to(tl.int64) * sp_l + h.to(tl.int64) * sp_h
    kpos = tl.load(p_base + k.to(tl.int64) * sp_t, mask=km, other=tokens)
    return k, km, k_tile, kpos, q_ptr + layer.to(tl.int64) * sq_l


@triton.jit
def _snap_stats_kernel(
    k_ptr, k_offs, sk_h, sk_t, p_ptr, sp_l, sp_h, sp_t, q_ptr, sq_l, sq_h, sq_w, m_ptr, s_ptr,
    H, K, tokens, scale,
    R: tl.constexpr, W: tl.constexpr, GROUP: tl.constexpr,
    D: tl.constexpr, RB: tl.constexpr, BK: tl.constexpr, PRECISION: tl.constexpr, ALIGNED: tl.constexpr,
):
    # per (key block, kv head, layer): each row's max logit and sum of exp over this block's keys
    nb = tl.program_id(0)
    h = tl.program_id(1)
    layer = tl.program_id(2)
    NB = tl.num_programs(0)
    k, km, k_tile, kpos, q_base = _snap_tiles(k_ptr, k_offs, sk_h, sk_t, p_ptr, sp_l, sp_h, sp_t, q_ptr, sq_l,
                                              layer, h, nb, K, tokens, D, BK, ALIGNED)
    for r0 in tl.static_range(0, R, RB):
        logits, rm = _snap_logits(q_base, sq_h, sq_w, k_tile, kpos, h, r0, tokens, scale,
                                  R, W, GROUP, D, RB, BK, PRECISION)
        m = tl.max(logits, axis=1)
        m_safe = tl.where(m == float("-inf"), 0.0, m)
        s = tl.sum(tl.exp(logits - m_safe[:, None]), axis=1)
        r = r0 + tl.arange(0, RB)
        out = ((layer.to(tl.int64) * H + h) * NB + nb) * R + r
        tl.store(m_ptr + out, m, mask=rm)
        tl.store(s_ptr + out, s, mask=rm)


@triton.jit
def _snap_scores_kernel(
    k_ptr, k_offs, sk_h, sk_t, p_ptr, sp_l, sp_h, sp_t, q_ptr, sq_l, sq_h, sq_w, m_ptr, s_ptr, a_ptr,
    H, K, tokens, scale,
    R: tl.constexpr, W: tl.constexpr, GROUP: tl.constexpr,
    D: tl.constexpr, RB: tl.constexpr, BK: tl.constexpr, PRECISION: tl.constexpr, ALIGNED: tl.constexpr,
):
    # per (key block, kv head, layer): sum over rows of softmax probabilities, / rows
    nb = tl.program_id(0)
    h = tl.program_id(1)
    layer = tl.program_id(2)
    k, km, k_tile, kpos, q_base = _snap_tiles(k_ptr, k_offs, sk_h, sk_t, p_ptr, sp_l, sp_h, sp_t, q_ptr, sq_l,
                                              layer, h, nb, K, tokens, D, BK, ALIGNED)
    lh = layer.to(tl.int64) * H + h
    acc = tl.zeros((BK,), dtype=tl.float32)
    for r0 in tl.static_range(0, R, RB):
        logits, rm = _snap_logits(q_base, sq_h, sq_w, k_tile, kpos, h, r0, tokens, scale,
                                  R, W, GROUP, D, RB, BK, PRECISION)
        r = r0 + tl.arange(0, RB)
        m = tl.load(m_ptr + lh * R + r, mask=rm, other=0.0)
        s = tl.load(s_ptr + lh * R + r, mask=rm, other=1.0)
        p = tl.exp(logits - m[:, None]) / s[:, None]
        acc += tl.sum(tl.where(logits == float("-inf"), 0.0, p), axis=0)
    tl.store(a_ptr + lh * K + k, acc / R, mask=km)


def _check_keys(layers: list[torch.Tensor], what: str) -> None:
    x = layers[0]
    D = x.shape[-1]
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"{what}: keys must be float16/bfloat16/float32; got {x.dtype}")
    if D < 16 or D & (D - 1) or x.stride(-1) != 1:
        raise ValueError(f"{what}: the kernels need a contiguous power-of-two head_dim >= 16; got {D}")


def _launch_rowwise(kernel_name: str, layers: list[torch.Tensor], what: str) -> torch.Tensor:
    _check_keys(layers, what)
    x = layers[0]
    B, H, K, D = x.shape
    device = kernel_device(x)
    L = len(layers)
    y = new_output((L, B, H, K), torch.float32, device)
    if K == 0:
        return y
    xb, xo, aligned = layer_table(layers, device)
    BK = TUNING["block_k"]
    grid = (triton.cdiv(K, BK), B * H, L)
    strides = (x.stride(0), x.stride(1), x.stride(2))
    if kernel_name == "knorm":
        _knorm_kernel[grid](xb, xo, y, H, K, *strides, D=D, BK=BK, ALIGNED=aligned, num_warps=TUNING["warps"])
    else:
        anchor = torch.zeros((L, B * H, D), dtype=torch.float32, device=device)
        _keydiff_anchor_kernel[grid](xb, xo, anchor, H, K, *strides, D=D, BK=BK, ALIGNED=aligned, num_warps=TUNING["warps"])
        _keydiff_score_kernel[grid](xb, xo, anchor, y, H, K, *strides, D=D, BK=BK, ALIGNED=aligned, num_warps=TUNING["warps"])
    return y


def knorm_scores(k: torch.Tensor) -> torch.Tensor:
    """k [B, H, K, D] -> [B, H, K] fp32: minus the L2 norm of each key."""
    if k.dim() != 4:
        raise ValueError(f"knorm_scores: k must be [B, H, K, D]; got {tuple(k.shape)}")
    return _launch_rowwise("knorm", [k], "knorm_scores")[0]


def knorm_scores_layers(ks: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """Every layer in one launch: L x [B, H, K, D] -> [L, B, H, K]."""
    return _launch_rowwise("knorm", as_layers(ks, 4, "knorm_scores_layers"), "knorm_scores_layers")


def keydiff_scores(k: torch.Tensor) -> torch.Tensor:
    """k [B, H, K, D] -> [B, H, K] fp32: minus the cosine of each key to its head's mean unit key."""
    if k.dim() != 4:
        raise ValueError(f"keydiff_scores: k must be [B, H, K, D]; got {tuple(k.shape)}")
    return _launch_rowwise("keydiff", [k], "keydiff_scores")[0]


def keydiff_scores_layers(ks: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """Every layer in one pair of launches: L x [B, H, K, D] -> [L, B, H, K]."""
    return _launch_rowwise("keydiff", as_layers(ks, 4, "keydiff_scores_layers"), "keydiff_scores_layers")


def snapkv_scores(k: torch.Tensor, window_queries: torch.Tensor, key_positions: torch.Tensor, tokens: int) -> torch.Tensor:
    """k [1, H, K, D] (one layer), window_queries [Hq, W, D] (that layer's), key_positions
    [H, K] int64 (original positions of the kept keys), tokens (full context length)
    -> [1, H, K] fp32, as evicctl.manager.codecs.scorers.snapkv."""
    if k.dim() != 4 or k.shape[0] != 1:
        raise ValueError(f"snapkv_scores: k must be [1, H, K, D]; got {tuple(k.shape)}")
    if window_queries.dim() != 3 or key_positions.dim() != 2:
        raise ValueError(
            f"snapkv_scores: window_queries must be [Hq, W, D] and key_positions [H, K]; got "
            f"{tuple(window_queries.shape)}, {tuple(key_positions.shape)}"
        )
    return _snapkv_launch([k], window_queries[None], key_positions[None], tokens, "snapkv_scores")[0]


def snapkv_scores_layers(ks, window_queries: torch.Tensor, positions: torch.Tensor, tokens: int) -> torch.Tensor:
    """Every layer in two launches: L x [1, H, K, D] keys (stacked or a sequence),
    window_queries [L, Hq, W, D], positions [L, H, K] int64 (KV.positions) -> [L, 1, H, K]."""
    return _snapkv_launch(as_layers(ks, 4, "snapkv_scores_layers"), window_queries, positions, tokens,
                          "snapkv_scores_layers")


def _snapkv_launch(layers, wq: torch.Tensor, positions: torch.Tensor, tokens: int, what: str) -> torch.Tensor:
    _check_keys(layers, what)
    k = layers[0]
    if k.shape[0] != 1:
        raise ValueError(f"{what}: keys must be [1, H, K, D]; got {tuple(k.shape)}")
    _, H, K, D = k.shape
    L = len(layers)
    if wq.dim() != 4 or wq.shape[0] != L or wq.shape[3] != D or wq.shape[1] % H or wq.stride(-1) != 1:
        raise ValueError(f"{what}: window_queries must be [{L}, Hq (multiple of {H}), W, {D}]; got {tuple(wq.shape)}")
    if tuple(positions.shape) != (L, H, K) or positions.dtype != torch.int64:
        raise ValueError(f"{what}: key_positions must be int64 [{L}, {H}, {K}]; got {tuple(positions.shape)}")
    W = wq.shape[2]
    if W == 0 or W > tokens:  # noqa: SIM300
        raise ValueError(f"{what}: window of {W} queries for a {tokens}-token context")
    device = kernel_device(k, wq, positions)
    if K == 0:
        return torch.empty((L, 1, H, 0), dtype=torch.float32, device=device)
    group = wq.shape[1] // H
    R = group * W
    BK, RB = TUNING["snap_block_k"], TUNING["snap_rows"]
    NB = triton.cdiv(K, BK)
    native = wq.dtype == k.dtype and k.dtype in (torch.float16, torch.bfloat16) and not _FORCE_TF32
    kb, ko, aligned = layer_table(layers, device)
    m = new_output((L, H, NB, R), torch.float32, device)
    s = new_output((L, H, NB, R), torch.float32, device)
    args = (kb, ko, k.stride(1), k.stride(2), positions, *positions.stride(), wq, *wq.stride()[:3])
    consts = dict(R=R, W=W, GROUP=group, D=D, RB=RB, BK=BK, PRECISION="native" if native else "tf32x3",
                  ALIGNED=aligned, num_warps=TUNING["snap_warps"])
    scale = 1.0 / D**0.5
    _snap_stats_kernel[(NB, H, L)](*args, m, s, H, K, tokens, scale, **consts)
    # combine the blocks' softmax statistics (the first query sees at least one key: the sinks)
    row_max = m.amax(dim=2)  # [L, H, R]
    row_sum = (s * torch.exp(m - row_max[:, :, None, :])).sum(dim=2)
    attn = new_output((L, H, K), torch.float32, device)
    _snap_scores_kernel[(NB, H, L)](*args, row_max, row_sum, attn, H, K, tokens, scale, **consts)
    in_window = positions >= tokens - W  # [L, H, K]
    attn = attn.masked_fill(in_window, 0.0)
    pooled = F.avg_pool1d(attn.view(L * H, 1, K), SNAPKV_POOL, stride=1, padding=SNAPKV_POOL // 2).view(L, H, K)
    top = pooled.masked_fill(in_window, float("-inf")).amax(dim=(1, 2), keepdim=True)  # per layer
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # no key outside the window
    return torch.where(in_window, top + 1.0, pooled)[:, None]
