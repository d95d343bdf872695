"""Group-wise int8/int4/int3/int2 quantization of keys and values (KIVI-style), Triton kernels.

Same signatures and outputs as the torch reference in evicctl.manager.codecs.quant:
- keys [B, H, T, D]: per channel, groups of G consecutive tokens (the last may be partial);
  scale, mn [B, H, ceil(T/G), D] float16.
- values [B, H, T, D]: per token, groups of G channels (D % G == 0); scale, mn [B, H, T, D/G].
- mn, mx in fp32; scale = (mx - mn) / (2**bits - 1); both cast to fp16, a fp16 scale of 0
  replaced by 1;
  codes = clamp(round_half_even((x - mn16) / scale16), 0, 2**bits - 1) in fp32 with the
  IEEE quotient (computed from the group's reciprocal and one fma correction); packed along
  D into D*bits/8 bytes a row: uint8 [B, H, T, D] for int8; int4 and int2 8/bits codes a
  byte, low bits = lower channel; int3 a 2-bit plane (D/4 bytes) then a 1-bit plane (D/8).
- dequantize: codes * scale16 + mn16 in fp32 (a multiply then an add, no FMA, as torch eager
  rounds), cast to the requested dtype.
So codes, scales and dequantized values match the reference bit for bit.

Each kernel reads its input once and writes its output once. The `*_layers` forms take every
layer in one launch (see _layers.py); the one-layer forms are those with one layer. The
dequantize launches also take ragged layers (a token count per layer, PyramidKV: the grid
fits the longest, and each program reads its layer's count from a table) and, for keys,
ThinK's kept channels (each row's D dequantized channels stored at their columns of a wider
row, zeros in the others: every program writes whole rows, each column gathering its kept
channel through a column map, channel_columns), so a layer-by-layer stored form decodes in
one launch a side. Inputs of
dequantize may be pinned host memory: the kernel then reads the codes over the bus and writes
the dequantized tensor on the GPU, which fuses the host-to-device copy into the decode.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from . import _layers
from ._jit import layer_offset
from ._layers import Layers, as_layers, head_strides_of, kernel_device, layer_table, rows_of

# Launch shapes: the fastest of benchmarks/gpu_bench.py's sweep on the H200 (32k tokens, 32 layers).
TUNING: dict[str, int] = {
    "keys_quant_warps": 1,
    "keys_dequant_warps": 2,
    "values_quant_block_t": 16,
    "values_quant_warps": 1,
    "values_dequant_block_t": 16,
    "values_dequant_warps": 2,
}

_FLOAT_OUT = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _round_half_even(y):
    # torch.round rounds half to even; adding and removing 1.5 * 2**23 leaves the fp32 adder's
    # round-to-nearest-even to do it (exact for |y| < 2**22; two adds, works in the interpreter)
    return (y + 12582912.0) - 12582912.0


@triton.jit
def _div_const(a, C: tl.constexpr):
    """fl(a / C) for a constant C, by the reciprocal and one fma correction (see _codes)."""
    recip: tl.constexpr = 1.0 / C  # Python's double, rounded to fp32 by the multiply's operand
    r = tl.full(a.shape, recip, tl.float32)
    q0 = a * r
    return tl.fma(tl.fma(-q0, tl.full(a.shape, C, tl.float32), a), r, q0)


@triton.jit
def _scale_min(mn, mx, QMAX: tl.constexpr):
    """fp32 group min/max -> (scale16, 1/scale16, mn16) as fp32, as the reference rounds them."""
    scale = _div_const(mx - mn, QMAX).to(tl.float16).to(tl.float32)
    # a fp16 scale of 0 (mx == mn, or a range under fp16's smallest subnormal) becomes 1
    scale = tl.where(scale == 0.0, 1.0, scale)
    recip = tl.math.div_rn(tl.full(scale.shape, 1.0, tl.float32), scale)
    return scale, recip, mn.to(tl.float16).to(tl.float32)


@triton.jit
def _codes(x, scale, recip, mn, QMAX: tl.constexpr):
    """clamp(round_half_even((x - mn) / scale)) with the IEEE quotient, without a division:
    q0 = a * (1/s) is within an ulp, and one fma correction (Markstein) gives the correctly
    rounded a / s (checked against IEEE division on 2e8 samples, ties included)."""
    a = x - mn
    q0 = a * recip
    q = tl.fma(tl.fma(-q0, scale, a), recip, q0)
    q = _round_half_even(q)
    return tl.minimum(tl.maximum(q, 0.0), QMAX).to(tl.int32)


@triton.jit
def _pack_lanes(q, ROWS: tl.constexpr, D: tl.constexpr, W: tl.constexpr):
    """[ROWS, D] int32 codes < 2**W -> [ROWS, D*W/8] int32 bytes: channel (8/W)*i + j in bits
    [W*j, W*(j+1)) of byte i. The lanes' bits are disjoint, so a sum is their bitwise or."""
    PER: tl.constexpr = 8 // W
    lanes = tl.reshape(q, (ROWS, D // PER, PER))
    shifts = tl.arange(0, PER) * W
    return tl.sum(lanes << shifts[None, None, :], axis=2)


@triton.jit
def _unpack_lanes(p, ROWS: tl.constexpr, D: tl.constexpr, W: tl.constexpr):
    """[ROWS, D*W/8] int32 bytes -> [ROWS, D] int32 codes (inverse of _pack_lanes)."""
    PER: tl.constexpr = 8 // W
    MASK: tl.constexpr = (1 << W) - 1
    shifts = tl.arange(0, PER) * W
    return tl.reshape((p[:, :, None] >> shifts[None, None, :]) & MASK, (ROWS, D))


@triton.jit
def _store_low_bit(c_base, row, rmask, q, ROWS: tl.constexpr, D: tl.constexpr, BITS: tl.constexpr):
    """Pack [ROWS, D] 2- or 3-bit codes and store them at rows `row` (D*BITS/8 bytes a row);
    3 bits as a 2-bit plane then a 1-bit plane, so every access stays a power of two wide."""
    RB: tl.constexpr = D * BITS // 8
    if BITS == 3:
        jl = tl.arange(0, D // 4)
        jh = tl.arange(0, D // 8)
        low = _pack_lanes(q & 3, ROWS, D, 2)
        high = _pack_lanes(q >> 2, ROWS, D, 1)
        tl.store(c_base + row[:, None] * RB + jl[None, :], low.to(tl.uint8), mask=rmask[:, None])
        tl.store(c_base + row[:, None] * RB + (D // 4) + jh[None, :], high.to(tl.uint8), mask=rmask[:, None])
    else:
        j = tl.arange(0, RB)
        packed = _pack_lanes(q, ROWS, D, BITS)
        tl.store(c_base + row[:, None] * RB + j[None, :], packed.to(tl.uint8), mask=rmask[:, None])


@triton.jit
def _load_low_bit(c_base, row, rmask, ROWS: tl.constexpr, D: tl.constexpr, BITS: tl.constexpr):
    """[ROWS, D] int32 codes of rows `row` of 2- or 3-bit packed codes (see _store_low_bit)."""
    RB: tl.constexpr = D * BITS // 8
    if BITS == 3:
        jl = tl.arange(0, D // 4)
        jh = tl.arange(0, D // 8)
        low = tl.load(c_base + row[:, None] * RB + jl[None, :], mask=rmask[:, None], other=0).to(tl.int32)
        high = tl.load(c_base + row[:, None] * RB + (D // 4) + jh[None, :], mask=rmask[:, None], other=0).to(tl.int32)
        q = _unpack_lanes(low, ROWS, D, 2) | (_unpack_lanes(high, ROWS, D, 1) << 2)
    else:
        j = tl.arange(0, RB)
        p = tl.load(c_base + row[:, None] * RB + j[None, :], mask=rmask[:, None], other=0).to(tl.int32)
        q = _unpack_lanes(p, ROWS, D, BITS)
    return q


@triton.jit
def _quant_keys_kernel(
    x_ptr, x_offs, c_ptr, c_offs, s_ptr, s_offs, m_ptr, m_offs, i_ptr, i_offs,
    H, T, NG, sx_b, sx_h, sx_t,
    BITS: tl.constexpr, G: tl.constexpr, D: tl.constexpr, HAS_IDX: tl.constexpr, ALIGNED: tl.constexpr,
):
    # one program: G tokens x D channels of one (layer, batch, head)
    g = tl.program_id(0)
    bh = tl.program_id(1)
    layer = tl.program_id(2)
    b = bh // H
    h = bh % H
    QMAX: tl.constexpr = 2**BITS - 1
    t = g * G + tl.arange(0, G)
    tm = t < T
    # rows past the end of a partial last group re-read the last token (as the reference pads),
    # so the group's min/max need no masking
    tc = tl.minimum(t, T - 1)
    if HAS_IDX:  # token compaction: row t of the output is row idx[t] of the input
        rows = tl.load(i_ptr + layer_offset(i_offs, layer, False) + bh.to(tl.int64) * T + tc)
    else:
        rows = tc.to(tl.int64)
    x_base = x_ptr + layer_offset(x_offs, layer, ALIGNED) + b.to(tl.int64) * sx_b + h.to(tl.int64) * sx_h
    d = tl.arange(0, D)
    x = tl.load(x_base + rows[:, None] * sx_t + d[None, :]).to(tl.float32)
    row_out = bh.to(tl.int64) * T + t
    grp_out = (bh.to(tl.int64) * NG + g) * D
    if BITS == 8:
        s, r, m = _scale_min(tl.min(x, axis=0), tl.max(x, axis=0), QMAX)
        q = _codes(x, s[None, :], r[None, :], m[None, :], QMAX)
        tl.store(c_ptr + layer_offset(c_offs, layer, ALIGNED) + row_out[:, None] * D + d[None, :], q.to(tl.uint8), mask=tm[:, None])
    elif BITS < 4:  # 3 and 2 bits: per-channel codes as int8, packed along D on the way out
        s, r, m = _scale_min(tl.min(x, axis=0), tl.max(x, axis=0), QMAX)
        q = _codes(x, s[None, :], r[None, :], m[None, :], QMAX)
        _store_low_bit(c_ptr + layer_offset(c_offs, layer, ALIGNED), row_out, tm, q, G, D, BITS)
    else:
        xe, xo = tl.split(tl.reshape(x, (G, D // 2, 2)))  # even, odd channels [G, D/2]
        se, inv_e, me = _scale_min(tl.min(xe, axis=0), tl.max(xe, axis=0), QMAX)
        so, inv_o, mo = _scale_min(tl.min(xo, axis=0), tl.max(xo, axis=0), QMAX)
        packed = _codes(xe, se[None, :], inv_e[None, :], me[None, :], QMAX) | (
            _codes(xo, so[None, :], inv_o[None, :], mo[None, :], QMAX) << 4
        )
        dh = tl.arange(0, D // 2)
        c_base = c_ptr + layer_offset(c_offs, layer, ALIGNED)
        tl.store(c_base + row_out[:, None] * (D // 2) + dh[None, :], packed.to(tl.uint8), mask=tm[:, None])
        s = tl.reshape(tl.join(se, so), (D,))
        m = tl.reshape(tl.join(me, mo), (D,))
    tl.store(s_ptr + layer_offset(s_offs, layer, ALIGNED) + grp_out + d, s.to(tl.float16))
    tl.store(m_ptr + layer_offset(m_offs, layer, ALIGNED) + grp_out + d, m.to(tl.float16))


@triton.jit
def _dequant_keys_kernel(
    c_ptr, c_offs, s_ptr, s_offs, m_ptr, m_offs, y_ptr, y_offs, r_ptr, col_ptr,
    H, T, NG, sy_b, sy_h, sy_t,
    BITS: tl.constexpr, G: tl.constexpr, D: tl.constexpr, ALIGNED: tl.constexpr,
    RAGGED: tl.constexpr, CHANNELS: tl.constexpr, W: tl.constexpr,
):
    g = tl.program_id(0)
    bh = tl.program_id(1)
    layer = tl.program_id(2)
    if RAGGED:  # this layer's tokens and output head stride; the grid fits the longest layer
        T = tl.load(r_ptr + 2 * layer)
        sy_h = tl.load(r_ptr + 2 * layer + 1)
        if ALIGNED:  # (checked on the host) keeps the stores 16-byte vectors
            sy_h = tl.multiple_of(sy_h, 16)
        NG = (T + G - 1) // G
    b = bh // H
    h = bh % H
    t = g * G + tl.arange(0, G)
    tm = t < T
    d = tl.arange(0, D)
    row_in = bh.to(tl.int64) * T + t
    grp_in = (bh.to(tl.int64) * NG + g) * D
    s_at = s_ptr + layer_offset(s_offs, layer, ALIGNED) + grp_in + d
    m_at = m_ptr + layer_offset(m_offs, layer, ALIGNED) + grp_in + d
    if RAGGED:  # a group past this layer's last one: read nothing (its rows are masked below)
        live = g * G + tl.zeros_like(d) < T
        s = tl.load(s_at, mask=live, other=1.0).to(tl.float32)
        m = tl.load(m_at, mask=live, other=0.0).to(tl.float32)
    else:
        s = tl.load(s_at).to(tl.float32)
        m = tl.load(m_at).to(tl.float32)
    c_base = c_ptr + layer_offset(c_offs, layer, ALIGNED)
    if BITS == 8:
        q = tl.load(c_base + row_in[:, None] * D + d[None, :], mask=tm[:, None], other=0).to(tl.float32)
        x = q * s[None, :] + m[None, :]
    elif BITS < 4:
        q = _load_low_bit(c_base, row_in, tm, G, D, BITS).to(tl.float32)
        x = q * s[None, :] + m[None, :]
    else:
        dh = tl.arange(0, D // 2)
        p = tl.load(c_base + row_in[:, None] * (D // 2) + dh[None, :], mask=tm[:, None], other=0).to(tl.int32)
        se, so = tl.split(tl.reshape(s, (D // 2, 2)))
        me, mo = tl.split(tl.reshape(m, (D // 2, 2)))
        xe = (p & 15).to(tl.float32) * se[None, :] + me[None, :]
        xo = (p >> 4).to(tl.float32) * so[None, :] + mo[None, :]
        x = tl.reshape(tl.join(xe, xo), (G, D))
    y_base = y_ptr + layer_offset(y_offs, layer, ALIGNED) + b.to(tl.int64) * sy_b + h.to(tl.int64) * sy_h
    y_rows = y_base + t.to(tl.int64)[:, None] * sy_t
    if CHANNELS:
        # ThinK: rows W wide, the D kept channels at their columns, zeros elsewhere. The
        # program writes its whole [G, W] tile in one pass (full, coalesced vectors): column
        # w takes kept channel col[w] of the dequantized [G, D] (a gather within the
        # program's registers / shared memory), or 0 where col[w] < 0 (a pruned channel)
        w = tl.arange(0, W)
        col = tl.load(col_ptr + (layer * tl.num_programs(1) + bh).to(tl.int64) * W + w)
        src = tl.broadcast_to(tl.maximum(col, 0)[None, :], (G, W))
        x = tl.where(col[None, :] >= 0, tl.gather(x, src, 1), 0.0)
        cols = w
    else:
        cols = d
    tl.store(y_rows + cols[None, :], x.to(y_ptr.dtype.element_ty), mask=tm[:, None])


@triton.jit
def _quant_values_kernel(
    x_ptr, x_offs, c_ptr, c_offs, s_ptr, s_offs, m_ptr, m_offs, i_ptr, i_offs,
    H, T, sx_b, sx_h, sx_t,
    BITS: tl.constexpr, G: tl.constexpr, D: tl.constexpr, BT: tl.constexpr, HAS_IDX: tl.constexpr,
    ALIGNED: tl.constexpr,
):
    # one program: BT tokens x D channels of one (layer, batch, head); groups of G channels
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    layer = tl.program_id(2)
    b = bh // H
    h = bh % H
    QMAX: tl.constexpr = 2**BITS - 1
    NGD: tl.constexpr = D // G
    t = pid * BT + tl.arange(0, BT)
    tm = t < T
    if HAS_IDX:
        rows = tl.load(i_ptr + layer_offset(i_offs, layer, False) + bh.to(tl.int64) * T + t, mask=tm, other=0)
    else:
        rows = t.to(tl.int64)
    x_base = x_ptr + layer_offset(x_offs, layer, ALIGNED) + b.to(tl.int64) * sx_b + h.to(tl.int64) * sx_h
    d = tl.arange(0, D)
    x = tl.load(x_base + rows[:, None] * sx_t + d[None, :], mask=tm[:, None], other=0.0).to(tl.float32)
    row_out = bh.to(tl.int64) * T + t
    j = tl.arange(0, NGD)
    if BITS == 8:
        xr = tl.reshape(x, (BT, NGD, G))
        s, r, m = _scale_min(tl.min(xr, axis=2), tl.max(xr, axis=2), QMAX)  # [BT, NGD]
        q = tl.reshape(_codes(xr, s[:, :, None], r[:, :, None], m[:, :, None], QMAX), (BT, D))
        c_base = c_ptr + layer_offset(c_offs, layer, ALIGNED)
        tl.store(c_base + row_out[:, None] * D + d[None, :], q.to(tl.uint8), mask=tm[:, None])
    elif BITS < 4:
        xr = tl.reshape(x, (BT, NGD, G))
        s, r, m = _scale_min(tl.min(xr, axis=2), tl.max(xr, axis=2), QMAX)  # [BT, NGD]
        q = tl.reshape(_codes(xr, s[:, :, None], r[:, :, None], m[:, :, None], QMAX), (BT, D))
        _store_low_bit(c_ptr + layer_offset(c_offs, layer, ALIGNED), row_out, tm, q, BT, D, BITS)
    else:
        xe, xo = tl.split(tl.reshape(x, (BT, NGD, G // 2, 2)))  # [BT, NGD, G/2] each
        mn = tl.minimum(tl.min(xe, axis=2), tl.min(xo, axis=2))
        mx = tl.maximum(tl.max(xe, axis=2), tl.max(xo, axis=2))
        s, r, m = _scale_min(mn, mx, QMAX)
        qe = _codes(xe, s[:, :, None], r[:, :, None], m[:, :, None], QMAX)
        qo = _codes(xo, s[:, :, None], r[:, :, None], m[:, :, None], QMAX)
        packed = tl.reshape(qe | (qo << 4), (BT, D // 2))
        dh = tl.arange(0, D // 2)
        c_base = c_ptr + layer_offset(c_offs, layer, ALIGNED)
        tl.store(c_base + row_out[:, None] * (D // 2) + dh[None, :], packed.to(tl.uint8), mask=tm[:, None])
    sm_off = row_out[:, None] * NGD + j[None, :]
    tl.store(s_ptr + layer_offset(s_offs, layer, ALIGNED) + sm_off, s.to(tl.float16), mask=tm[:, None])
    tl.store(m_ptr + layer_offset(m_offs, layer, ALIGNED) + sm_off, m.to(tl.float16), mask=tm[:, None])


@triton.jit
def _dequant_values_kernel(
    c_ptr, c_offs, s_ptr, s_offs, m_ptr, m_offs, y_ptr, y_offs, r_ptr,
    H, T, sy_b, sy_h, sy_t,
    BITS: tl.constexpr, G: tl.constexpr, D: tl.constexpr, BT: tl.constexpr, ALIGNED: tl.constexpr,
    RAGGED: tl.constexpr,
):
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    layer = tl.program_id(2)
    if RAGGED:  # this layer's tokens and output head stride; rows past them are masked below
        T = tl.load(r_ptr + 2 * layer)
        sy_h = tl.load(r_ptr + 2 * layer + 1)
        if ALIGNED:  # (checked on the host) keeps the stores 16-byte vectors
            sy_h = tl.multiple_of(sy_h, 16)
    b = bh // H
    h = bh % H
    NGD: tl.constexpr = D // G
    t = pid * BT + tl.arange(0, BT)
    tm = t < T
    row_in = bh.to(tl.int64) * T + t
    j = tl.arange(0, NGD)
    sm_off = row_in[:, None] * NGD + j[None, :]
    s = tl.load(s_ptr + layer_offset(s_offs, layer, ALIGNED) + sm_off, mask=tm[:, None], other=1.0).to(tl.float32)
    m = tl.load(m_ptr + layer_offset(m_offs, layer, ALIGNED) + sm_off, mask=tm[:, None], other=0.0).to(tl.float32)
    c_base = c_ptr + layer_offset(c_offs, layer, ALIGNED)
    d = tl.arange(0, D)
    if BITS == 8:
        q = tl.load(c_base + row_in[:, None] * D + d[None, :], mask=tm[:, None], other=0).to(tl.float32)
        x = tl.reshape(tl.reshape(q, (BT, NGD, G)) * s[:, :, None] + m[:, :, None], (BT, D))
    elif BITS < 4:
        q = _load_low_bit(c_base, row_in, tm, BT, D, BITS).to(tl.float32)
        x = tl.reshape(tl.reshape(q, (BT, NGD, G)) * s[:, :, None] + m[:, :, None], (BT, D))
    else:
        dh = tl.arange(0, D // 2)
        p = tl.load(c_base + row_in[:, None] * (D // 2) + dh[None, :], mask=tm[:, None], other=0).to(tl.int32)
        p = tl.reshape(p, (BT, NGD, G // 2))
        xe = (p & 15).to(tl.float32) * s[:, :, None] + m[:, :, None]
        xo = (p >> 4).to(tl.float32) * s[:, :, None] + m[:, :, None]
        x = tl.reshape(tl.join(xe, xo), (BT, D))
    y_base = y_ptr + layer_offset(y_offs, layer, ALIGNED) + b.to(tl.int64) * sy_b + h.to(tl.int64) * sy_h
    tl.store(y_base + t.to(tl.int64)[:, None] * sy_t + d[None, :], x.to(y_ptr.dtype.element_ty), mask=tm[:, None])


# ---------------------------------------------------------------- shape checks


def _check_format(bits: int, group: int, head_dim: int, what: str) -> None:
    if bits not in (8, 4, 3, 2):
        raise ValueError(f"{what}: bits must be 8, 4, 3 or 2, got {bits}")
    if group < 2 or group & (group - 1):
        raise ValueError(f"{what}: the kernels need a power-of-two group >= 2, got {group}")
    if head_dim < 2 or head_dim & (head_dim - 1):
        raise ValueError(f"{what}: the kernels need a power-of-two head_dim, got {head_dim}")
    if head_dim * bits % 8 or (bits == 3 and head_dim < 8):
        raise ValueError(f"{what}: int{bits} rows pack into whole bytes only for head_dim >= {8 // math.gcd(bits, 8)}")


def _check_float_input(layers: list[torch.Tensor], what: str) -> None:
    x = layers[0]
    if x.dtype not in _FLOAT_OUT:
        raise ValueError(f"{what}: expected float16/bfloat16/float32, got {x.dtype}")
    if x.stride(-1) != 1:
        raise ValueError(f"{what}: the channel dim must be contiguous")


def _check_idx(idx_layers: list[torch.Tensor], x: torch.Tensor, what: str) -> int:
    i = idx_layers[0]
    if i.dtype != torch.int64 or i.dim() != 3 or tuple(i.shape[:2]) != tuple(x.shape[:2]) or not i.is_contiguous():
        raise ValueError(f"{what}: idx must be contiguous int64 [B, H, K] matching x; got {tuple(i.shape)} {i.dtype}")
    return int(i.shape[2])


def _check_out(out: Sequence[torch.Tensor], shapes: Sequence[tuple], dtypes: Sequence[torch.dtype], what: str) -> None:
    for t, shape, dtype in zip(out, shapes, dtypes, strict=True):
        if tuple(t.shape) != tuple(shape) or t.dtype != dtype or not t.is_contiguous():
            raise ValueError(f"{what}: out tensor must be contiguous {dtype} {tuple(shape)}; got {t.dtype} {tuple(t.shape)}")


# ---------------------------------------------------------------- keys


def quantize_keys_launch(layers, bits, group, idx_layers, out, what):
    """One launch quantizing keys of every layer (gather.py reuses it with token indices)."""
    x = layers[0]
    _check_float_input(layers, what)
    B, H, T_in, D = x.shape
    _check_format(bits, group, D, what)
    device = kernel_device(x)
    T = _check_idx(idx_layers, x, what) if idx_layers is not None else T_in
    L = len(layers)
    NG = triton.cdiv(T, group)
    DC = D * bits // 8  # packed bytes a row
    shapes = ((L, B, H, T, DC), (L, B, H, NG, D), (L, B, H, NG, D))
    if out is None:
        out = tuple(_layers.new_output(s, dt, device) for s, dt in zip(shapes, (torch.uint8, torch.float16, torch.float16), strict=True))
    else:
        _check_out(out, shapes, (torch.uint8, torch.float16, torch.float16), what)
    codes, scale, mn = out
    if T == 0:
        return codes, scale, mn
    xb, xo, ax = layer_table(layers, device)
    cb, co, ac = layer_table(codes, device)
    sb, so, as_ = layer_table(scale, device)
    mb, mo, am = layer_table(mn, device)
    ib, io, _ = layer_table(idx_layers, device) if idx_layers is not None else (xb, xo, True)
    aligned = ax and ac and as_ and am  # (index rows are read without the hint)
    _quant_keys_kernel[(NG, B * H, L)](
        xb, xo, cb, co, sb, so, mb, mo, ib, io,
        H, T, NG, x.stride(0), x.stride(1), x.stride(2),
        BITS=bits, G=group, D=D, HAS_IDX=idx_layers is not None, ALIGNED=aligned,
        num_warps=TUNING["keys_quant_warps"], enable_fp_fusion=False,
    )
    return codes, scale, mn


def quantize_keys_layers(
    ks: torch.Tensor | Sequence[torch.Tensor], bits: int, group: int = 32, *, out=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every layer in one launch. ks: L x [B, H, T, D] -> codes [L, B, H, T, D*bits/8] uint8,
    scale, mn [L, B, H, ceil(T/G), D] float16."""
    layers = as_layers(ks, 4, "quantize_keys_layers")
    return quantize_keys_launch(layers, bits, group, None, out, "quantize_keys_layers")


def quantize_keys(k: torch.Tensor, bits: int, group: int = 32, *, out=None):
    """k [B, H, T, D] -> (codes, scale, mn); see the module docstring for the format."""
    if k.dim() != 4:
        raise ValueError(f"quantize_keys: k must be [B, H, T, D]; got {tuple(k.shape)}")
    stacked = None if out is None else tuple(t.unsqueeze(0) for t in out)
    codes, scale, mn = quantize_keys_launch([k], bits, group, None, stacked, "quantize_keys")
    return tuple(out) if out is not None else (codes[0], scale[0], mn[0])


def _packed_rows(layers: Layers, rows: tuple[int, ...]) -> bool:
    """Whether every layer holds `rows` rows laid out contiguously (as the kernels address
    them: row bh * T + t); a layer of no rows, or of one head, whatever its head stride says."""
    row_stride, heads = layers[0].stride(-2), layers[0].shape[1]
    return rows_of(layers) == rows and all(
        r == 0 or heads == 1 or hs == r * row_stride for r, hs in zip(rows, head_strides_of(layers), strict=True)
    )


def _ragged_rows(codes_l, scale_l, mn_l, out_layers, side_rows, what) -> tuple[tuple, tuple] | None:
    """(tokens, output head stride) per layer when the layers are ragged (codes or out of
    different token counts, as PyramidKV keeps), else None. side_rows: a layer's rows of
    scale and mn from its tokens. Checks what the kernel assumes of ragged layers: one
    batch, contiguous codes, scale and mn, out rows matching the codes."""
    layered = [x for x in (codes_l, scale_l, mn_l, out_layers) if isinstance(x, Layers)]
    if not any(x.rows is not None or x.head_strides is not None for x in layered):
        return None
    rows = rows_of(codes_l)
    if codes_l[0].shape[0] != 1:
        raise ValueError(f"{what}: ragged layers must have one batch")
    side = tuple(side_rows(t) for t in rows)
    for layers, want, name in ((codes_l, rows, "codes"), (scale_l, side, "scale"), (mn_l, side, "mn")):
        if not _packed_rows(layers, want):
            raise ValueError(f"{what}: ragged {name} must be contiguous with {want} rows")
    if out_layers is None:
        raise ValueError(f"{what}: ragged layers need out=")
    if rows_of(out_layers) != rows:
        raise ValueError(f"{what}: out must have the codes' rows {rows}")
    return rows, head_strides_of(out_layers)


def _check_out_layers(out_layers, B, H, T, width, dtype, dev, what) -> None:
    y = out_layers[0]
    if tuple(y.shape) != (B, H, T, width) or y.dtype != dtype or y.stride(-1) != 1 or y.device != dev:
        raise ValueError(f"{what}: out must be {dtype} {(B, H, T, width)} on {dev} with contiguous channels")


def _check_channels(channels, L, B, H, D, width, dev, what) -> None:
    """channels: [L, B*H, D] kept key channel indices (ThinK), distinct and each < width (the
    caller's promise: channel_columns writes at them unchecked); rows of a power-of-two width."""
    if (
        tuple(channels.shape) != (L, B * H, D)
        or channels.dtype not in (torch.int16, torch.int32, torch.int64)
        or not channels.is_contiguous()
        or channels.device != dev
    ):
        raise ValueError(f"{what}: channels must be contiguous int {(L, B * H, D)} on {dev}; got {channels.dtype} {tuple(channels.shape)}")
    _check_width(D, width, what)


def _check_columns(columns, L, B, H, D, width, dev, what) -> None:
    """columns: [L, B*H, width] int32, channel_columns of kept channels (values in [-1, D):
    the caller's promise, the kernel gathers at them unchecked)."""
    if (
        tuple(columns.shape) != (L, B * H, width)
        or columns.dtype != torch.int32
        or not columns.is_contiguous()
        or columns.device != dev
    ):
        raise ValueError(f"{what}: columns must be contiguous int32 {(L, B * H, width)} on {dev}; got {columns.dtype} {tuple(columns.shape)}")
    _check_width(D, width, what)


def _check_width(D, width, what) -> None:
    if width < D or width & (width - 1):
        raise ValueError(f"{what}: out rows must be a power of two at least {D} wide (the kept channels); got {width}")


def channel_columns(channels: torch.Tensor, width: int) -> torch.Tensor:
    """Kept key channels [..., C] (ThinK: distinct, each < width) -> int32 [..., width]: for
    every column of a full row, the position of its channel among the kept ones, or -1 where
    the channel was pruned. The key kernel reads it to write whole rows in one pass (each
    column gathers its kept channel or writes 0); a decode builds it once per stored form."""
    kept = channels.shape[-1]
    columns = torch.full((*channels.shape[:-1], width), -1, dtype=torch.int32, device=channels.device)
    order = torch.arange(kept, dtype=torch.int32, device=channels.device).expand(channels.shape)
    return columns.scatter_(-1, channels.to(torch.int64), order)


def _launch_tables(codes_l, scale_l, mn_l, out_layers, ragged, dev):
    """(pointer and offset tables of codes, scale, mn and out, rows table, aligned) of a launch."""
    cb, co, ac = layer_table(codes_l, dev)
    sb, so, as_ = layer_table(scale_l, dev)
    mb, mo, am = layer_table(mn_l, dev)
    yb, yo, ay = layer_table(out_layers, dev)
    aligned = ac and as_ and am and ay
    if ragged is None:
        return (cb, co, sb, so, mb, mo, yb, yo), co, aligned  # (the rows table is unused)
    # the head strides are promised multiples of 16 along with the offsets
    aligned = aligned and all(hs % 16 == 0 for hs in ragged[1])
    return (cb, co, sb, so, mb, mo, yb, yo), _layers.rows_table(*ragged, dev), aligned


def _dequantize_keys_launch(
    codes_l, scale_l, mn_l, bits, group, dtype, out_layers, device, what, channels=None, columns=None
):
    c = codes_l[0]
    B, H, T, DC = c.shape
    D = DC * 8 // bits
    _check_format(bits, group, D, what)
    if dtype not in _FLOAT_OUT:
        raise ValueError(f"{what}: dtype must be float16/bfloat16/float32, got {dtype}")
    NG = triton.cdiv(T, group)
    if c.dtype != torch.uint8 or not c.is_contiguous():
        raise ValueError(f"{what}: codes must be contiguous uint8")
    for t, name in ((scale_l[0], "scale"), (mn_l[0], "mn")):
        if tuple(t.shape) != (B, H, NG, D) or t.dtype != torch.float16 or not t.is_contiguous():
            raise ValueError(f"{what}: {name} must be contiguous float16 {(B, H, NG, D)}; got {t.dtype} {tuple(t.shape)}")
    ragged = _ragged_rows(codes_l, scale_l, mn_l, out_layers, lambda t: -(-t // group), what)  # (cdiv)
    dev = kernel_device(c, scale_l[0], mn_l[0], device=device)
    L = len(codes_l)
    if channels is not None and columns is not None:
        raise ValueError(f"{what}: pass channels or their columns, not both")
    pruned = channels is not None or columns is not None
    if out_layers is None:
        if pruned:
            raise ValueError(f"{what}: channels need out= (rows of the full width)")
        out_layers = Layers(stacked=_layers.new_output((L, B, H, T, D), dtype, dev))
    width = out_layers[0].shape[-1]
    _check_out_layers(out_layers, B, H, T, width if pruned else D, dtype, dev, what)
    if channels is not None:
        _check_channels(channels, L, B, H, D, width, dev, what)
    elif columns is not None:
        _check_columns(columns, L, B, H, D, width, dev, what)
    T_max = T if ragged is None else max(ragged[0])
    if T_max == 0:
        return out_layers
    if channels is not None:
        columns = channel_columns(channels, width)
    tables, rows, aligned = _launch_tables(codes_l, scale_l, mn_l, out_layers, ragged, dev)
    y = out_layers[0]
    _dequant_keys_kernel[(triton.cdiv(T_max, group), B * H, L)](
        *tables, rows, rows if columns is None else columns,
        H, T, NG, y.stride(0), y.stride(1), y.stride(2),
        BITS=bits, G=group, D=D, ALIGNED=aligned, RAGGED=ragged is not None, CHANNELS=pruned,
        W=width if pruned else D,
        num_warps=TUNING["keys_dequant_warps"], enable_fp_fusion=False,
    )
    return out_layers


def dequantize_keys(
    codes, scale, mn, bits: int, group: int = 32, dtype: torch.dtype = torch.float32, *, out=None, device=None
):
    """(codes, scale, mn) of one layer -> k [B, H, T, D] of `dtype`.

    `out`: a preallocated [B, H, T, D] tensor (any strides with contiguous channels, e.g. a
    slice of an engine's cache) to write into. `device`: where k goes; codes in pinned host
    memory are then read over the bus by the kernel (no separate copy).
    """
    if codes.dim() != 4:
        raise ValueError(f"dequantize_keys: codes must be [B, H, T, D*bits/8]; got {tuple(codes.shape)}")
    res = _dequantize_keys_launch(
        [codes], [scale], [mn], bits, group, dtype, None if out is None else [out], device, "dequantize_keys"
    )
    return res[0]


def dequantize_keys_layers(
    codes, scale, mn, bits: int, group: int = 32, dtype: torch.dtype = torch.float32, *, out=None, device=None,
    channels=None, columns=None,
):
    """Every layer in one launch: stacked [L, ...] tensors or sequences of L tensors.

    Returns one stacked [L, B, H, T, D] tensor (layer i is ``result[i]``), or `out` (a
    stacked tensor or a sequence of L tensors, e.g. an engine's per-layer cache) filled.

    Ragged layers (a different T per layer, one batch) are taken with `out` given as a
    sequence of L tensors of the codes' rows. `channels` [L, B*H, D] (ThinK's kept key
    channels, distinct, each below out's width): out's rows are wider than D (a power of
    two), channel c of layer l and head h goes to column ``channels[l, h, c]`` and every
    other column is written 0. `columns` instead of `channels`: their channel_columns(channels,
    width), built beforehand (a decode that repeats keeps them; else each launch builds them)."""
    what = "dequantize_keys_layers"
    cl, sl, ml = (as_layers(x, 4, what, ragged=True) for x in (codes, scale, mn))
    if not len(cl) == len(sl) == len(ml):
        raise ValueError(f"{what}: codes, scale and mn need the same number of layers")
    out_layers = None if out is None else as_layers(out, 4, what, ragged=True)
    res = _dequantize_keys_launch(cl, sl, ml, bits, group, dtype, out_layers, device, what, channels, columns)
    return out if out is not None else res.stacked


# ---------------------------------------------------------------- values


def quantize_values_launch(layers, bits, group, idx_layers, out, what):
    """One launch quantizing values of every layer (gather.py reuses it with token indices)."""
    x = layers[0]
    _check_float_input(layers, what)
    B, H, T_in, D = x.shape
    _check_format(bits, group, D, what)
    if D % group or group > D:
        raise ValueError(f"{what}: head_dim {D} must be a multiple of the group {group}")
    device = kernel_device(x)
    T = _check_idx(idx_layers, x, what) if idx_layers is not None else T_in
    L = len(layers)
    NGD = D // group
    DC = D * bits // 8  # packed bytes a row
    shapes = ((L, B, H, T, DC), (L, B, H, T, NGD), (L, B, H, T, NGD))
    if out is None:
        out = tuple(_layers.new_output(s, dt, device) for s, dt in zip(shapes, (torch.uint8, torch.float16, torch.float16), strict=True))
    else:
        _check_out(out, shapes, (torch.uint8, torch.float16, torch.float16), what)
    codes, scale, mn = out
    if T == 0:
        return codes, scale, mn
    xb, xo, ax = layer_table(layers, device)
    cb, co, ac = layer_table(codes, device)
    sb, so, as_ = layer_table(scale, device)
    mb, mo, am = layer_table(mn, device)
    ib, io, _ = layer_table(idx_layers, device) if idx_layers is not None else (xb, xo, True)
    aligned = ax and ac and as_ and am  # (index rows are read without the hint)
    BT = TUNING["values_quant_block_t"]
    _quant_values_kernel[(triton.cdiv(T, BT), B * H, L)](
        xb, xo, cb, co, sb, so, mb, mo, ib, io,
        H, T, x.stride(0), x.stride(1), x.stride(2),
        BITS=bits, G=group, D=D, BT=BT, HAS_IDX=idx_layers is not None, ALIGNED=aligned,
        num_warps=TUNING["values_quant_warps"], enable_fp_fusion=False,
    )
    return codes, scale, mn


def quantize_values_layers(
    vs: torch.Tensor | Sequence[torch.Tensor], bits: int, group: int = 32, *, out=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every layer in one launch. vs: L x [B, H, T, D] -> codes [L, B, H, T, D*bits/8] uint8,
    scale, mn [L, B, H, T, D/G] float16."""
    layers = as_layers(vs, 4, "quantize_values_layers")
    return quantize_values_launch(layers, bits, group, None, out, "quantize_values_layers")


def quantize_values(v: torch.Tensor, bits: int, group: int = 32, *, out=None):
    """v [B, H, T, D] -> (codes, scale, mn); see the module docstring for the format."""
    if v.dim() != 4:
        raise ValueError(f"quantize_values: v must be [B, H, T, D]; got {tuple(v.shape)}")
    stacked = None if out is None else tuple(t.unsqueeze(0) for t in out)
    codes, scale, mn = quantize_values_launch([v], bits, group, None, stacked, "quantize_values")
    return tuple(out) if out is not None else (codes[0], scale[0], mn[0])


def _dequantize_values_launch(codes_l, scale_l, mn_l, bits, group, dtype, out_layers, device, what):
    c = codes_l[0]
    B, H, T, DC = c.shape
    D = DC * 8 // bits
    _check_format(bits, group, D, what)
    if D % group or group > D:
        raise ValueError(f"{what}: head_dim {D} must be a multiple of the group {group}")
    if dtype not in _FLOAT_OUT:
        raise ValueError(f"{what}: dtype must be float16/bfloat16/float32, got {dtype}")
    if c.dtype != torch.uint8 or not c.is_contiguous():
        raise ValueError(f"{what}: codes must be contiguous uint8")
    NGD = D // group
    for t, name in ((scale_l[0], "scale"), (mn_l[0], "mn")):
        if tuple(t.shape) != (B, H, T, NGD) or t.dtype != torch.float16 or not t.is_contiguous():
            raise ValueError(f"{what}: {name} must be contiguous float16 {(B, H, T, NGD)}; got {t.dtype} {tuple(t.shape)}")
    ragged = _ragged_rows(codes_l, scale_l, mn_l, out_layers, lambda t: t, what)
    dev = kernel_device(c, scale_l[0], mn_l[0], device=device)
    L = len(codes_l)
    if out_layers is None:
        out_layers = Layers(stacked=_layers.new_output((L, B, H, T, D), dtype, dev))
    _check_out_layers(out_layers, B, H, T, D, dtype, dev, what)
    T_max = T if ragged is None else max(ragged[0])
    if T_max == 0:
        return out_layers
    tables, rows, aligned = _launch_tables(codes_l, scale_l, mn_l, out_layers, ragged, dev)
    y = out_layers[0]
    BT = TUNING["values_dequant_block_t"]
    _dequant_values_kernel[(triton.cdiv(T_max, BT), B * H, L)](
        *tables, rows,
        H, T, y.stride(0), y.stride(1), y.stride(2),
        BITS=bits, G=group, D=D, BT=BT, ALIGNED=aligned, RAGGED=ragged is not None,
        num_warps=TUNING["values_dequant_warps"], enable_fp_fusion=False,
    )
    return out_layers


def dequantize_values(
    codes, scale, mn, bits: int, group: int = 32, dtype: torch.dtype = torch.float32, *, out=None, device=None
):
    """(codes, scale, mn) of one layer -> v [B, H, T, D] of `dtype` (`out`, `device`: see dequantize_keys)."""
    if codes.dim() != 4:
        raise ValueError(f"dequantize_values: codes must be [B, H, T, D*bits/8]; got {tuple(codes.shape)}")
    res = _dequantize_values_launch(
        [codes], [scale], [mn], bits, group, dtype, None if out is None else [out], device, "dequantize_values"
    )
    return res[0]


def dequantize_values_layers(
    codes, scale, mn, bits: int, group: int = 32, dtype: torch.dtype = torch.float32, *, out=None, device=None
):
    """Every layer in one launch (see dequantize_keys_layers; ragged layers alike)."""
    what = "dequantize_values_layers"
    cl, sl, ml = (as_layers(x, 4, what, ragged=True) for x in (codes, scale, mn))
    if not len(cl) == len(sl) == len(ml):
        raise ValueError(f"{what}: codes, scale and mn need the same number of layers")
    out_layers = None if out is None else as_layers(out, 4, what, ragged=True)
    res = _dequantize_values_launch(cl, sl, ml, bits, group, dtype, out_layers, device, what)
    return out if out is not None else res.stacked
