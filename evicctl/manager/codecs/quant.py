"""Group-wise asymmetric quantization of keys and values (KIVI-style), pure torch reference.

Format (shared with the CUDA kernels in ``evicctl.kernels.quant``, same signatures/outputs):

- bits in {8, 4, 3, 2}; group size G (default 32).
- Keys [1, H, T, D] are quantized per channel over groups of G consecutive tokens (the last
  group may be partial): scale, mn are [1, H, ceil(T/G), D] float16. Keys have outlier
  channels, so a per-channel range keeps them from blowing up every other channel's error.
- Values [1, H, T, D] are quantized per token over groups of G channels (D % G == 0):
  scale, mn are [1, H, T, D/G] float16.
- mn, mx are the group's min and max in fp32; scale = (mx - mn) / (2**bits - 1); both are cast
  to fp16, and a fp16 scale of 0 (mx == mn, or a range below fp16's smallest subnormal) is
  replaced by 1 so that no group divides by zero. codes = clamp(round((x - mn16) / scale16),
  0, 2**bits - 1) with the fp16 values upcast to fp32 and torch.round (half to even).
- Dequantize: x = codes * scale16 + mn16 in fp32, cast to the requested dtype.
- Codes are packed along D into exactly D*bits/8 bytes a row, uint8 [1, H, T, D*bits/8]:
  8 bits one code a byte; 4 and 2 bits 8/bits codes a byte, channel (8/bits)*i + j in bits
  [bits*j, bits*(j+1)) of byte i (int4: low nibble = even channel, high = odd); 3 bits as two
  planes side by side, the low 2 bits of every code packed as int2 (D/4 bytes), then the high
  bit packed 8 a byte (D/8 bytes). Planes keep every packed width a power of two, which the
  Triton kernels need, where 8 codes in 3 bytes would not.
- Residual window (KIVI): codecs quantize all but the last R kept tokens and keep those in
  the KV's dtype (codec.py); the functions here quantize what they are given.

Error bound per element: scale16 / 2, plus the fp16 rounding of mn and of scale * (2**bits-1)
for elements clamped at the ends of their group's range.

The scale's division is by a tensor, never by a Python scalar: PyTorch on CUDA turns a
scalar divisor into a multiplication by its reciprocal, which moves a scale by one fp16
step in rare groups; a tensor divisor is an IEEE division on both devices (and in the
kernels), so a context quantizes to the same bytes wherever it is encoded.

The public functions dispatch to the ``evicctl.kernels`` function of the same name when
given CUDA tensors and the kernels can run (triton and CUDA present) and the shapes suit
them (power-of-two head_dim and group). The ``*_layers`` functions take every layer of a
context at once and, on CUDA, make one kernel launch for all of them (a launch per layer
from Python costs more host time than the kernels take on short contexts). On CPU they
never try, so nothing imports triton on a CPU-only machine. The ``*_ref`` functions are
the torch reference the kernels are tested against.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Sequence
from types import ModuleType

import torch

# group sizes are shared with the torch-free size arithmetic (stored_bytes from a codec name)
from evicctl.manager.codecs.channels import restore_into
from evicctl.manager.codecs.names import DEFAULT_GROUP, key_groups
from evicctl.manager.codecs.names import value_group as value_group  # re-exported: codecs, kernels

_SUPPORTED_BITS = (8, 4, 3, 2)


@functools.cache
def _kernels_module() -> ModuleType | None:
    """evicctl.kernels where its kernels can run (triton and CUDA present), else None."""
    try:
        import evicctl.kernels as kernels

        if not kernels.available():
            raise ImportError("Triton is not installed (the `gpu` extra)")
        kernels.quantize_keys  # noqa: B018  (imports Triton: a broken install shows here)
    except ImportError as exc:
        # Only CUDA tensors ask (kernels_for): torch eager is 14-38x slower there, so say it
        # once instead of running slow without a word (functools.cache: once per process).
        logging.getLogger("evicctl").warning("codecs on CUDA fall back to torch eager (14-38x slower): %s", exc)
        _KERNELS_MISSING.append(str(exc))
        return None
    return kernels


_KERNELS_MISSING: list[str] = []  # why the kernels cannot run here, once asked on CUDA


def codec_backend(device: str) -> str:
    """What runs the codecs on `device`, for operators (`evicctl tiers`, the dashboard)."""
    if not str(device).startswith("cuda"):
        return CPU_BACKEND
    if _kernels_module() is not None:
        return "triton"
    return f"torch eager, 14-38x slower ({_KERNELS_MISSING[-1] if _KERNELS_MISSING else 'no Triton'})"


CPU_BACKEND = "torch (cpu)"


def kernels_for(x: torch.Tensor) -> ModuleType | None:
    """evicctl.kernels when `x` is a CUDA tensor and the kernels can run here, else None.

    Checks nothing but the device for a CPU tensor: no import, so triton never loads on a
    CPU-only machine."""
    return _kernels_module() if x.is_cuda else None


def _cuda_kernel(x: torch.Tensor, name: str) -> Callable | None:
    """The CUDA kernel `name` for a CUDA tensor, or None (CPU tensor, or kernels absent)."""
    kernels = kernels_for(x)
    return getattr(kernels, name) if kernels is not None else None


def _pow2(n: int) -> bool:
    return n >= 2 and n & (n - 1) == 0


def same_layout(xs: Sequence[torch.Tensor]) -> bool:
    """Every layer one shape, dtype, device and strides, channels contiguous (one kernel launch
    addresses them all from the first layer's strides)."""
    first = xs[0]
    sig = (first.shape, first.dtype, first.device, first.stride())
    return first.stride(-1) == 1 and all((x.shape, x.dtype, x.device, x.stride()) == sig for x in xs)


def _quant_kernel_fits(xs: Sequence[torch.Tensor], bits: int, group: int, side: str) -> bool:
    """The quantization kernels' limits: float input, power-of-two head_dim and group (values:
    whole channel groups). Outside them the torch reference runs (and raises its errors)."""
    x = xs[0]
    return (
        bits in _SUPPORTED_BITS
        and x.dim() == 4
        and x.dtype in (torch.float16, torch.bfloat16, torch.float32)
        and _pow2(x.shape[3])
        and _pow2(group)
        and (side == "keys" or x.shape[3] % group == 0)
        and same_layout(xs)
    )


def _dequant_kernel_fits(codes: Sequence[torch.Tensor], bits: int, group: int, dtype: torch.dtype) -> bool:
    c = codes[0]
    head_dim = c.shape[-1] * 8 // bits if bits in _SUPPORTED_BITS else 0
    return (
        bits in _SUPPORTED_BITS
        and c.dim() == 4
        and _pow2(head_dim)
        and _pow2(group)
        and dtype in (torch.float16, torch.bfloat16, torch.float32)
    )


def _check(x: torch.Tensor, bits: int, group: int) -> None:
    if bits not in _SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {_SUPPORTED_BITS}; got {bits}")
    if group <= 0:
        raise ValueError(f"group must be positive; got {group}")
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"expected [1, H, T, D]; got {tuple(x.shape)}")
    if x.shape[3] % _channels_per_row_unit(bits):
        unit = _channels_per_row_unit(bits)
        raise ValueError(f"int{bits} packs {unit} channels into whole bytes: head_dim must be a multiple of {unit}; got {x.shape[3]}")


def _channels_per_row_unit(bits: int) -> int:
    """Channels that pack into whole bytes: 8 / gcd(bits, 8) (int4: 2, int2: 4, int3: 8)."""
    return 8 // math.gcd(bits, 8)


def _scale_min(mn: torch.Tensor, mx: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """fp16 (scale, mn) of groups with fp32 range [mn, mx]."""
    # a tensor divisor: an IEEE division on CPU and CUDA alike (see the module docstring)
    scale16 = ((mx - mn) / torch.full_like(mx, 2**bits - 1)).to(torch.float16)
    scale16 = torch.where(scale16 == 0, torch.ones_like(scale16), scale16)
    return scale16, mn.to(torch.float16)


def _codes(x: torch.Tensor, scale16: torch.Tensor, mn16: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes of fp32 x with scale16/mn16 already broadcast to x's shape."""
    q = torch.sub(x, mn16.float()).div_(scale16.float()).round_()  # in place: one temporary
    return q.clamp_(0, 2**bits - 1).to(torch.uint8)


def pack_lanes(codes: torch.Tensor, width: int) -> torch.Tensor:
    """[..., D] uint8 codes < 2**width -> [..., D*width/8]: 8/width codes a byte, channel
    (8/width)*i + j in bits [width*j, width*(j+1)) of byte i (width in 1, 2, 4)."""
    per_byte = 8 // width
    shifts = torch.arange(0, 8, width, dtype=torch.uint8, device=codes.device)  # [per_byte]
    lanes = codes.unflatten(-1, (codes.shape[-1] // per_byte, per_byte)) << shifts
    return lanes.sum(-1, dtype=torch.uint8)  # disjoint bits: the sum is the bitwise or


def unpack_lanes(packed: torch.Tensor, width: int) -> torch.Tensor:
    """[..., D*width/8] -> [..., D] uint8 codes (inverse of pack_lanes)."""
    shifts = torch.arange(0, 8, width, dtype=torch.uint8, device=packed.device)
    return ((packed.unsqueeze(-1) >> shifts) & (2**width - 1)).flatten(-2)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """[..., D] uint8 codes in [0, 15] -> [..., D/2]: low nibble even channel, high odd."""
    return pack_lanes(codes, 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """[..., D/2] packed -> [..., D] uint8 codes."""
    return unpack_lanes(packed, 4)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """[..., D] uint8 codes < 2**bits -> [..., D*bits/8] (the layout in the module docstring)."""
    if bits == 8:
        return codes
    if bits == 3:  # a 2-bit plane [..., D/4] then a 1-bit plane [..., D/8]
        return torch.cat((pack_lanes(codes & 3, 2), pack_lanes(codes >> 2, 1)), dim=-1)
    return pack_lanes(codes, bits)


def unpack_codes(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """[..., D*bits/8] -> [..., D] uint8 codes (inverse of pack_codes)."""
    if bits == 8:
        return packed
    if bits == 3:
        low_bytes = packed.shape[-1] * 2 // 3  # D/4 of 3D/8
        low, high = packed[..., :low_bytes], packed[..., low_bytes:]
        return unpack_lanes(low, 2) | (unpack_lanes(high, 1) << 2)
    return unpack_lanes(packed, bits)


# ---------------------------------------------------------------- keys: per channel


def quantize_keys_ref(
    k: torch.Tensor, bits: int, group: int = DEFAULT_GROUP
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """k [1, H, T, D] -> codes [1, H, T, D*bits/8] uint8, scale and mn [1, H, ceil(T/G), D] fp16."""
    _check(k, bits, group)
    _, heads, tokens, dim = k.shape
    groups = key_groups(tokens, group)
    x = k.float()
    pad = groups * group - tokens
    # repeat the last token so that a partial group's min/max is its own
    x_pad = torch.cat((x, x[:, :, -1:].expand(1, heads, pad, dim)), dim=2) if pad else x
    grouped = x_pad.view(1, heads, groups, group, dim)
    # amin + amax: torch.aminmax is ~40x slower on CPU (torch 2.13) for these reductions
    scale16, mn16 = _scale_min(grouped.amin(dim=3), grouped.amax(dim=3), bits)  # [1, H, Tg, D]
    codes = _codes(grouped, scale16.unsqueeze(3), mn16.unsqueeze(3), bits)  # [1, H, Tg, G, D]
    codes = codes.view(1, heads, groups * group, dim)[:, :, :tokens]
    return pack_codes(codes, bits).contiguous(), scale16, mn16


def dequantize_keys_ref(
    codes: torch.Tensor,
    scale: torch.Tensor,
    mn: torch.Tensor,
    bits: int,
    group: int = DEFAULT_GROUP,
    dtype: torch.dtype = torch.float32,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """codes [1, H, T, D*bits/8], scale/mn [1, H, ceil(T/G), D] -> k [1, H, T, D] of `dtype`
    (written into `out`, of that shape and dtype, when given: the cast is the copy)."""
    q = unpack_codes(codes, bits).to(torch.float32, memory_format=torch.contiguous_format)
    _, heads, tokens, dim = q.shape
    groups = key_groups(tokens, group)
    if groups * group != tokens:
        q = torch.cat((q, q.new_zeros(1, heads, groups * group - tokens, dim)), dim=2)
    grouped = q.view(1, heads, groups, group, dim)
    x = grouped.mul_(scale.float().unsqueeze(3)).add_(mn.float().unsqueeze(3))  # [1, H, Tg, G, D]
    x = x.view(1, heads, groups * group, dim)[:, :, :tokens]
    return x.to(dtype).contiguous() if out is None else _into(out, x)


# ---------------------------------------------------------------- values: per token


def quantize_values_ref(
    v: torch.Tensor, bits: int, group: int = DEFAULT_GROUP
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """v [1, H, T, D] -> codes [1, H, T, D*bits/8] uint8, scale and mn [1, H, T, D/G] fp16."""
    _check(v, bits, group)
    _, heads, tokens, dim = v.shape
    if dim % group:
        raise ValueError(f"values need head_dim % group == 0; got {dim} % {group}")
    x = v.float()
    grouped = x.view(1, heads, tokens, dim // group, group)
    scale16, mn16 = _scale_min(grouped.amin(dim=4), grouped.amax(dim=4), bits)  # [1, H, T, D/G]
    codes = _codes(grouped, scale16.unsqueeze(-1), mn16.unsqueeze(-1), bits)
    return pack_codes(codes.view(1, heads, tokens, dim), bits), scale16, mn16


def dequantize_values_ref(
    codes: torch.Tensor,
    scale: torch.Tensor,
    mn: torch.Tensor,
    bits: int,
    group: int = DEFAULT_GROUP,
    dtype: torch.dtype = torch.float32,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """codes [1, H, T, D*bits/8], scale/mn [1, H, T, D/G] -> v [1, H, T, D] of `dtype`
    (written into `out` when given, as dequantize_keys_ref)."""
    q = unpack_codes(codes, bits).to(torch.float32, memory_format=torch.contiguous_format)
    _, heads, tokens, dim = q.shape
    grouped = q.view(1, heads, tokens, dim // group, group)
    x = grouped.mul_(scale.float().unsqueeze(-1)).add_(mn.float().unsqueeze(-1))  # q is ours: in place
    return x.view(1, heads, tokens, dim).to(dtype) if out is None else _into(out, x.view(1, heads, tokens, dim))


def _into(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """out <- x cast to out's dtype; shapes must match exactly (copy_ would broadcast a
    damaged form's single row over every row)."""
    if out.shape != x.shape:
        raise ValueError(f"out must be {tuple(x.shape)}; got {tuple(out.shape)}")
    return out.copy_(x)


# ---------------------------------------------------------------- dispatching entry points


def quantize_keys(k: torch.Tensor, bits: int, group: int = DEFAULT_GROUP):
    kernel = _cuda_kernel(k, "quantize_keys") if _quant_kernel_fits([k], bits, group, "keys") else None
    return (kernel or quantize_keys_ref)(k, bits, group)


def dequantize_keys(codes, scale, mn, bits: int, group: int = DEFAULT_GROUP, dtype=torch.float32, out=None):
    kernel = _cuda_kernel(codes, "dequantize_keys") if _dequant_kernel_fits([codes], bits, group, dtype) else None
    into = {} if out is None else {"out": out}
    return (kernel or dequantize_keys_ref)(codes, scale, mn, bits, group, dtype, **into)


def quantize_values(v: torch.Tensor, bits: int, group: int = DEFAULT_GROUP):
    kernel = _cuda_kernel(v, "quantize_values") if _quant_kernel_fits([v], bits, group, "values") else None
    return (kernel or quantize_values_ref)(v, bits, group)


def dequantize_values(codes, scale, mn, bits: int, group: int = DEFAULT_GROUP, dtype=torch.float32, out=None):
    kernel = _cuda_kernel(codes, "dequantize_values") if _dequant_kernel_fits([codes], bits, group, dtype) else None
    into = {} if out is None else {"out": out}
    return (kernel or dequantize_values_ref)(codes, scale, mn, bits, group, dtype, **into)


def gather_tokens_ref(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [1, H, T, D], idx [1, H, K] int64 -> [1, H, K, D] (the kept tokens of each head)."""
    _, heads, tokens, dim = x.shape
    # one row index_select over [H*T, D]: ~10x faster on CPU than gather with an expanded index
    rows = (idx[0] + torch.arange(heads, device=idx.device)[:, None] * tokens).reshape(-1)
    return x.reshape(heads * tokens, dim).index_select(0, rows).view(1, heads, idx.shape[2], dim)


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    kernel = _cuda_kernel(x, "gather_tokens") if _pow2(x.shape[-1]) and x.stride(-1) == 1 else None
    return (kernel or gather_tokens_ref)(x, idx)


def dequantize_layers(
    side: str,
    codes: list[torch.Tensor],
    scales: list[torch.Tensor],
    mns: list[torch.Tensor],
    bits: int,
    group: int,
    dtype: torch.dtype,
    device: torch.device | str | None = None,
    out: torch.Tensor | Sequence[torch.Tensor] | None = None,
    channels: torch.Tensor | None = None,
    columns: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Every layer's (codes, scale, mn) of `side` ("keys" | "values") -> [1, H, T, D] per layer
    on `device` (default: where the codes are).

    out: a stacked [L, 1, H, T, D] tensor of `dtype` on the target (channels contiguous, any
    other strides, e.g. the first T rows of a larger buffer) written in place of a new one, so
    a codec with a residual window decodes into its final buffer without a concatenation; or
    a list of L such [1, H, T_l, D] tensors, which layers of different token counts (PyramidKV)
    need.

    channels: keys only, [L, H, C] int (ThinK's kept channels of codes that hold C channels,
    distinct, each below out's width D): channel c of layer l and head h goes to column
    ``channels[l, h, c]`` of out and every other column is written 0: the restore is fused
    into the dequantize instead of a zeroed buffer and a scatter pass of their own.
    columns: the kernels' column map of those channels (evicctl.kernels.quant.channel_columns,
    [L, H, D] int32 on the target), built once by a caller that decodes the same form again;
    the kernel launch then takes it instead of building it from `channels` (which the torch
    reference still uses).

    To CUDA with the kernels present: the stored tensors are copied to the device first
    (async from pinned memory), then one launch dequantizes every layer. The copy runs at
    94-96% of the pinned host-to-device bandwidth on the H200, a kernel reading pinned
    memory over the bus at 91%."""
    if side not in ("keys", "values"):
        raise ValueError(f"side must be 'keys' or 'values'; got {side!r}")
    if channels is not None and (side != "keys" or out is None):
        raise ValueError("channels are of keys, written into a given out")
    target = torch.device(device) if device is not None else codes[0].device
    if target.type == "cuda" and target.index is None:
        target = torch.device("cuda", torch.cuda.current_device())
    if codes[0].device != target:
        # async only host -> GPU (ordered before the dequantize on the stream)
        move = lambda t: t.to(target, non_blocking=target.type == "cuda")  # noqa: E731
        codes, scales, mns = [move(c) for c in codes], [move(s) for s in scales], [move(m) for m in mns]
    kernels = kernels_for(codes[0])  # codes are on the target now
    if (
        kernels is not None
        and _dequant_kernel_fits(codes, bits, group, dtype)
        and codes[0].is_contiguous()
        and (out is None or out[0].stride(-1) == 1)
    ):
        kernel = kernels.dequantize_keys_layers if side == "keys" else kernels.dequantize_values_layers
        into = {} if out is None else {"out": out}
        if columns is not None and channels is not None:
            into["columns"] = columns
        elif channels is not None:
            into["channels"] = channels.to(target, non_blocking=target.type == "cuda")
        try:
            # the launch checks every layer's shape, dtype, device and strides once (the
            # per-layer checks are most of a short context's host time, so not twice)
            result = kernel(codes, scales, mns, bits, group, dtype, **into)
            return list(result.unbind(0) if isinstance(result, torch.Tensor) else result)  # L views
        except ValueError:
            pass  # layers of mixed layouts or places: the reference below handles them
    one = dequantize_keys if side == "keys" else dequantize_values
    parts = zip(codes, scales, mns, strict=True)
    if out is None:
        return [one(c, s, m, bits, group, dtype) for c, s, m in parts]
    for i, ((c, s, m), dst) in enumerate(zip(parts, out, strict=True)):
        if channels is None:
            one(c, s, m, bits, group, dtype, out=dst)  # straight into its place: no copy pass
        else:
            src = one(c, s, m, bits, group, dtype)
            if src.shape[:3] != dst.shape[:3]:
                raise ValueError(f"out must hold {tuple(src.shape[:3])} rows; got {tuple(dst.shape[:3])}")
            restore_into(dst.zero_(), src, channels[i])
    return list(out)


def quantize_layers(
    side: str,
    xs: Sequence[torch.Tensor],
    bits: int,
    group: int,
    idx: torch.Tensor | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Every layer's [1, H, T, D] tensor of `side` ("keys" | "values") -> ([codes], [scale],
    [mn]), one entry per layer; with idx [L, 1, H, K] int64 (ascending kept rows per layer
    and head), of the kept tokens only.

    On CUDA with the kernels: one launch for every layer, the gather fused into the
    quantizer (the kept rows are read straight from x, never copied out first). Else layer
    by layer with the torch reference (gather, then quantize)."""
    if side not in ("keys", "values"):
        raise ValueError(f"side must be 'keys' or 'values'; got {side!r}")
    kernels = kernels_for(xs[0])
    if kernels is not None and _quant_kernel_fits(xs, bits, group, side):
        if idx is None:
            kernel = kernels.quantize_keys_layers if side == "keys" else kernels.quantize_values_layers
            codes, scale, mn = kernel(list(xs), bits, group)
        else:
            kernel = kernels.gather_quantize_keys if side == "keys" else kernels.gather_quantize_values
            codes, scale, mn = kernel(list(xs), idx.to(xs[0].device).contiguous(), bits, group)
        return list(codes), list(scale), list(mn)  # stacked [L, ...] -> L views
    one = quantize_keys if side == "keys" else quantize_values
    parts = [one(x if idx is None else gather_tokens(x, idx[i]), bits, group) for i, x in enumerate(xs)]
    return [p[0] for p in parts], [p[1] for p in parts], [p[2] for p in parts]


def gather_layers(xs: Sequence[torch.Tensor], idx: torch.Tensor) -> list[torch.Tensor]:
    """Every layer's x [1, H, T, D] and idx [L, 1, H, K] -> [1, H, K, D] per layer (one
    launch for all layers on CUDA with the kernels, else gather_tokens per layer)."""
    kernels = kernels_for(xs[0])
    if kernels is not None and _pow2(xs[0].shape[3]) and same_layout(xs):
        return list(kernels.gather_tokens_layers(list(xs), idx.to(xs[0].device).contiguous()))
    return [gather_tokens(x, idx[i]) for i, x in enumerate(xs)]
