"""Group-wise asymmetric quantization of keys and values (KIVI-style), pure torch reference.

Format (shared with the CUDA kernels in ``evicctl.kernels.quant``, same signatures/outputs):

- bits in {8, 4}; group size G (default 32).
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
- Codes are uint8 [1, H, T, D] for 8 bits; for 4 bits two codes per byte along D:
  [1, H, T, D/2], low nibble = even channel, high nibble = odd channel.

Error bound per element: scale16 / 2, plus the fp16 rounding of mn and of scale * (2**bits-1)
for elements clamped at the ends of their group's range.

The public functions dispatch to the ``evicctl.kernels`` function of the same name when
given CUDA tensors and the kernels can run (triton and CUDA present); ``dequantize_layers``
uses the kernels' all-layers form (one launch for every layer, reading pinned host memory
in place). On CPU they never try, so nothing imports triton on a CPU-only machine. The
``*_ref`` functions are the torch reference the kernels are tested against.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# group sizes are shared with the torch-free size arithmetic (stored_bytes from a codec name)
from evicctl.manager.codec_names import DEFAULT_GROUP, key_groups
from evicctl.manager.codec_names import value_group as value_group  # re-exported: codecs, kernels

_SUPPORTED_BITS = (8, 4)
_kernel_cache: dict[str, Callable | None] = {}


def _kernel(name: str) -> Callable | None:
    """evicctl.kernels.`name`, or None where the kernels cannot run (no triton, no CUDA)."""
    if name not in _kernel_cache:
        try:
            import evicctl.kernels as kernels

            _kernel_cache[name] = getattr(kernels, name)
        except (ImportError, AttributeError):
            _kernel_cache[name] = None
    return _kernel_cache[name]


def _cuda_kernel(x: torch.Tensor, name: str) -> Callable | None:
    """The CUDA kernel `name` for a CUDA tensor, or None (CPU tensor, or kernels absent).

    Never imports anything for a CPU tensor, so triton is not imported on CPU."""
    return _kernel(name) if x.is_cuda else None


def _check(x: torch.Tensor, bits: int, group: int) -> None:
    if bits not in _SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {_SUPPORTED_BITS}; got {bits}")
    if group <= 0:
        raise ValueError(f"group must be positive; got {group}")
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"expected [1, H, T, D]; got {tuple(x.shape)}")
    if bits == 4 and x.shape[3] % 2:
        raise ValueError(f"int4 packs two channels per byte: head_dim must be even; got {x.shape[3]}")


def _scale_min(mn: torch.Tensor, mx: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """fp16 (scale, mn) of groups with fp32 range [mn, mx]."""
    scale16 = ((mx - mn) / (2**bits - 1)).to(torch.float16)
    scale16 = torch.where(scale16 == 0, torch.ones_like(scale16), scale16)
    return scale16, mn.to(torch.float16)


def _codes(x: torch.Tensor, scale16: torch.Tensor, mn16: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes of fp32 x with scale16/mn16 already broadcast to x's shape."""
    q = torch.sub(x, mn16.float()).div_(scale16.float()).round_()  # in place: one temporary
    return q.clamp_(0, 2**bits - 1).to(torch.uint8)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """[..., D] uint8 codes in [0, 15] -> [..., D/2]: low nibble even channel, high odd."""
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """[..., D/2] packed -> [..., D] uint8 codes."""
    out = torch.stack((packed & 0x0F, packed >> 4), dim=-1)  # [..., D/2, 2]
    return out.flatten(-2)


def _pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    return pack_int4(codes) if bits == 4 else codes


def _unpack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    return unpack_int4(codes) if bits == 4 else codes


# ---------------------------------------------------------------- keys: per channel


def quantize_keys_ref(
    k: torch.Tensor, bits: int, group: int = DEFAULT_GROUP
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """k [1, H, T, D] -> codes [1, H, T, D or D/2] uint8, scale and mn [1, H, ceil(T/G), D] fp16."""
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
    return _pack(codes, bits).contiguous(), scale16, mn16


def dequantize_keys_ref(
    codes: torch.Tensor,
    scale: torch.Tensor,
    mn: torch.Tensor,
    bits: int,
    group: int = DEFAULT_GROUP,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """codes [1, H, T, D or D/2], scale/mn [1, H, ceil(T/G), D] -> k [1, H, T, D] of `dtype`."""
    q = _unpack(codes, bits).to(torch.float32, memory_format=torch.contiguous_format)
    _, heads, tokens, dim = q.shape
    groups = key_groups(tokens, group)
    if groups * group != tokens:
        q = torch.cat((q, q.new_zeros(1, heads, groups * group - tokens, dim)), dim=2)
    grouped = q.view(1, heads, groups, group, dim)
    out = grouped.mul_(scale.float().unsqueeze(3)).add_(mn.float().unsqueeze(3))  # [1, H, Tg, G, D]
    return out.view(1, heads, groups * group, dim)[:, :, :tokens].to(dtype).contiguous()


# ---------------------------------------------------------------- values: per token


def quantize_values_ref(
    v: torch.Tensor, bits: int, group: int = DEFAULT_GROUP
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """v [1, H, T, D] -> codes [1, H, T, D or D/2] uint8, scale and mn [1, H, T, D/G] fp16."""
    _check(v, bits, group)
    _, heads, tokens, dim = v.shape
    if dim % group:
        raise ValueError(f"values need head_dim % group == 0; got {dim} % {group}")
    x = v.float()
    grouped = x.view(1, heads, tokens, dim // group, group)
    scale16, mn16 = _scale_min(grouped.amin(dim=4), grouped.amax(dim=4), bits)  # [1, H, T, D/G]
    codes = _codes(grouped, scale16.unsqueeze(-1), mn16.unsqueeze(-1), bits)
    return _pack(codes.view(1, heads, tokens, dim), bits), scale16, mn16


def dequantize_values_ref(
    codes: torch.Tensor,
    scale: torch.Tensor,
    mn: torch.Tensor,
    bits: int,
    group: int = DEFAULT_GROUP,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """codes [1, H, T, D or D/2], scale/mn [1, H, T, D/G] -> v [1, H, T, D] of `dtype`."""
    q = _unpack(codes, bits).to(torch.float32, memory_format=torch.contiguous_format)
    _, heads, tokens, dim = q.shape
    grouped = q.view(1, heads, tokens, dim // group, group)
    out = grouped.mul_(scale.float().unsqueeze(-1)).add_(mn.float().unsqueeze(-1))  # q is ours: in place
    return out.view(1, heads, tokens, dim).to(dtype)


# ---------------------------------------------------------------- dispatching entry points


def quantize_keys(k: torch.Tensor, bits: int, group: int = DEFAULT_GROUP):
    kernel = _cuda_kernel(k, "quantize_keys")
    return (kernel or quantize_keys_ref)(k, bits, group)


def dequantize_keys(codes, scale, mn, bits: int, group: int = DEFAULT_GROUP, dtype=torch.float32):
    kernel = _cuda_kernel(codes, "dequantize_keys")
    return (kernel or dequantize_keys_ref)(codes, scale, mn, bits, group, dtype)


def quantize_values(v: torch.Tensor, bits: int, group: int = DEFAULT_GROUP):
    kernel = _cuda_kernel(v, "quantize_values")
    return (kernel or quantize_values_ref)(v, bits, group)


def dequantize_values(codes, scale, mn, bits: int, group: int = DEFAULT_GROUP, dtype=torch.float32):
    kernel = _cuda_kernel(codes, "dequantize_values")
    return (kernel or dequantize_values_ref)(codes, scale, mn, bits, group, dtype)


def gather_tokens_ref(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [1, H, T, D], idx [1, H, K] int64 -> [1, H, K, D] (the kept tokens of each head)."""
    _, heads, tokens, dim = x.shape
    # one row index_select over [H*T, D]: ~10x faster on CPU than gather with an expanded index
    rows = (idx[0] + torch.arange(heads, device=idx.device)[:, None] * tokens).reshape(-1)
    return x.reshape(heads * tokens, dim).index_select(0, rows).view(1, heads, idx.shape[2], dim)


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    kernel = _cuda_kernel(x, "gather_tokens")
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
) -> list[torch.Tensor]:
    """Every layer's (codes, scale, mn) of `side` ("keys" | "values") -> [1, H, T, D] per layer
    on `device` (default: where the codes are).

    On CUDA with the kernels present: one launch for all layers (a launch per layer costs
    more than the work on short contexts), reading pinned host inputs in place (the
    host-to-device copy fused into the decode)."""
    if side not in ("keys", "values"):
        raise ValueError(f"side must be 'keys' or 'values'; got {side!r}")
    target = torch.device(device) if device is not None else codes[0].device
    kernel = _kernel(f"dequantize_{side}_layers") if target.type == "cuda" else None
    if kernel is not None:

        def reachable(t: torch.Tensor) -> torch.Tensor:
            return t if t.is_cuda or t.is_pinned() else t.to(target)

        layers = kernel(
            [reachable(c) for c in codes], [reachable(s) for s in scales], [reachable(m) for m in mns],
            bits, group, dtype, device=target,
        )  # fmt: skip
        return list(layers)
    one = dequantize_keys if side == "keys" else dequantize_values
    non_blocking = target.type == "cuda"
    move = lambda t: t.to(target, non_blocking=non_blocking)  # noqa: E731
    return [one(move(c), move(s), move(m), bits, group, dtype) for c, s, m in zip(codes, scales, mns, strict=True)]
