"""Encode and decode layer by layer: PyramidKV budgets, ThinK channels, ragged KVs.

codec.py's fast path treats every layer alike (one kept count, full key channels: a few
kernel launches for the whole context on CUDA). The forms here do not fit it: with
``-pyramid`` every layer keeps its own count (names.layer_budgets), with ``think@c`` the
keys lose channels (channels.py) while the values keep all of theirs, and a KV that is
already ragged (a decoded PyramidKV form) has layers of different lengths. So each layer is
gathered, pruned and quantized on its own, with the same quant.py functions (they dispatch
to the kernels on CUDA where the shapes suit them, else run the torch reference).

Stored layout, beside codec.py's (same names, same meaning):
- ``k.{i}`` / ``k.{i}.codes`` / ``k.{i}.scale`` / ``k.{i}.mn`` / ``k.{i}.res``: layer i's
  keys as in codec.py, over the C kept key channels instead of head_dim when ThinK prunes;
- ``ch`` [L, H, C] int16: the kept key channels of every layer and kv head (ThinK only);
- ``pos.{i}`` [H, K_i] int16 (int32 past 32,768 tokens) per layer when the layers keep
  different counts; ``pos`` [L, H, K] as in codec.py when they keep the same.
Meta adds ``layer_kept`` (comma-separated K_i, ragged only) and ``key_channels`` (ThinK only).
"""

from __future__ import annotations

import torch

from evicctl.manager.codecs import channels, quant
from evicctl.manager.codecs.names import POS16_MAX_TOKENS, CodecParts, quantized_count
from evicctl.manager.codecs.scorers import SCORERS, select
from evicctl.manager.kv import KV


def needs_layers(parts: CodecParts, kv: KV) -> bool:
    """Whether encoding `kv` with `parts` takes this module's path."""
    return parts.pyramid or bool(parts.channel_ratio) or kv.ragged


def position_dtype(tokens: int) -> torch.dtype:
    """dtype of stored positions: int16 up to POS16_MAX_TOKENS tokens, else int32."""
    return torch.int16 if tokens <= POS16_MAX_TOKENS else torch.int32


def stored_by_layers(tensors: dict[str, torch.Tensor]) -> bool:
    """Whether a stored form was written here (per-layer positions or kept channels)."""
    return "ch" in tensors or "pos.0" in tensors


# ---------------------------------------------------------------- encode


def token_indices(kv: KV, parts: CodecParts) -> list[torch.Tensor | None]:
    """Per layer, kept rows [1, H, keep_l] int64 ascending, or None where the layer already
    keeps no more than its budget (parts.layer_kept of the full context)."""
    if not parts.scorer:
        return [None] * kv.layers
    budgets, have = parts.layer_kept(kv.tokens, kv.layers), kv.layer_kept
    if all(b >= h for b, h in zip(budgets, have, strict=True)):
        return [None] * kv.layers
    out: list[torch.Tensor | None] = []
    for layer, (keep, kept) in enumerate(zip(budgets, have, strict=True)):
        if keep >= kept:
            out.append(None)
            continue
        # the torch scorer, one layer at a time, on CUDA too (scorers.py's kernels score the
        # layers of a uniform KV together): the same kept sets on either device
        scores = SCORERS[parts.scorer](kv, layer)  # [1, H, K]
        out.append(select(scores, kv.positions[layer], kv.tokens, keep))
    return out


def encode(kv: KV, parts: CodecParts) -> tuple[dict[str, torch.Tensor], list[int], dict[str, str]]:
    """(tensors, tokens kept per layer, meta additions) of `kv` in the codec `parts` (layout
    in the module docstring; the window queries are codec.py's to add)."""
    idx = token_indices(kv, parts)
    keys = [
        k if i is None else quant.gather_tokens(k, i) for k, i in zip(kv.keys, idx, strict=True)
    ]
    values = [
        v if i is None else quant.gather_tokens(v, i) for v, i in zip(kv.values, idx, strict=True)
    ]
    positions = [_kept_positions(kv.positions[layer], i) for layer, i in enumerate(idx)]  # [H, K_l]
    meta: dict[str, str] = {}
    tensors: dict[str, torch.Tensor] = {}
    if parts.channel_ratio:
        keep = parts.key_channels(kv.head_dim)
        keys, kept_channels = channels.prune(keys, kv, keep)
        tensors["ch"] = kept_channels.to(torch.int16).contiguous()  # [L, H, C]
        meta["key_channels"] = str(keep)
    for layer, (k, v) in enumerate(zip(keys, values, strict=True)):
        if parts.bits:
            tensors |= _quantized(layer, k, v, parts)
        else:
            tensors[f"k.{layer}"], tensors[f"v.{layer}"] = k.contiguous(), v.contiguous()
    counts = [p.shape[-1] for p in positions]
    pos_dtype = position_dtype(kv.tokens)
    if min(counts) < kv.tokens:
        if len(set(counts)) == 1:
            tensors["pos"] = torch.stack(positions).to(pos_dtype).contiguous()  # [L, H, K]
        else:
            for layer, p in enumerate(positions):
                tensors[f"pos.{layer}"] = p.to(pos_dtype).contiguous()  # [H, K_l]
    if len(set(counts)) > 1:
        meta["layer_kept"] = ",".join(map(str, counts))
    return tensors, counts, meta


def _kept_positions(positions: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
    """positions [H, K] of one layer -> those of the kept rows idx [1, H, keep]."""
    return positions if idx is None else positions.gather(1, idx[0].to(positions.device))


def _quantized(
    layer: int, k: torch.Tensor, v: torch.Tensor, parts: CodecParts
) -> dict[str, torch.Tensor]:
    """One layer's quantized tensors: all but the last R rows as (codes, scale, mn), the last
    R (the residual window) as they are. k [1, H, K, C], v [1, H, K, D]."""
    quantized = quantized_count(k.shape[2], parts.residual)
    out: dict[str, torch.Tensor] = {}
    for side, x, group in (
        ("k", k, parts.group),
        ("v", v, quant.value_group(v.shape[3], parts.group)),
    ):
        what = "keys" if side == "k" else "values"
        codes, scale, mn = quant.quantize_layers(what, [x[:, :, :quantized]], parts.bits, group)
        out[f"{side}.{layer}.codes"], out[f"{side}.{layer}.scale"], out[f"{side}.{layer}.mn"] = (
            codes[0],
            scale[0],
            mn[0],
        )
        if parts.residual:
            out[f"{side}.{layer}.res"] = x[:, :, quantized:].contiguous()
    return out


# ---------------------------------------------------------------- decode


def decode(
    t: dict[str, torch.Tensor],
    meta: dict[str, str],
    bits: int | None,
    dtype: torch.dtype,
    target: torch.device,
) -> KV:
    """The KV of a form written by `encode` (tensors `t`, meta as codec.py writes it), on `target`."""
    layers, tokens, head_dim = int(meta["layers"]), int(meta["tokens"]), int(meta["head_dim"])
    # async only host -> GPU (ordered before any use on the stream)
    move = lambda x: x.to(target, non_blocking=target.type == "cuda")  # noqa: E731
    kept_channels = move(t["ch"]).long() if "ch" in t else None  # [L, H, C]
    keys, values = [], []
    for layer in range(layers):
        if bits:
            k = _dequantized(t, "k", layer, bits, int(meta["group"]), dtype, target)
            v = _dequantized(t, "v", layer, bits, int(meta["value_group"]), dtype, target)
        else:
            k, v = move(t[f"k.{layer}"]), move(t[f"v.{layer}"])
        if kept_channels is not None:
            k = channels.restore(k, kept_channels[layer], head_dim)
        keys.append(k)
        values.append(v)
    if "pos.0" in t:
        positions: torch.Tensor | tuple[torch.Tensor, ...] = tuple(
            move(t[f"pos.{i}"]).long() for i in range(layers)
        )
    elif "pos" in t:
        positions = move(t["pos"]).long()
    else:
        heads, kept = keys[0].shape[1], keys[0].shape[2]
        positions = torch.arange(kept, device=target).expand(layers, heads, kept)
    wq = t.get("wq")
    return KV(
        tuple(keys), tuple(values), positions, tokens, None if wq is None else move(wq).to(dtype)
    )


def _dequantized(
    t: dict[str, torch.Tensor], side: str, layer: int, bits: int, group: int, dtype, target
) -> torch.Tensor:
    """[1, H, K, C] of one layer and side: the dequantized rows, then any residual rows."""
    what = "keys" if side == "k" else "values"
    codes = t[f"{side}.{layer}.codes"]
    if codes.shape[2]:
        parts = ([t[f"{side}.{layer}.{p}"]] for p in ("codes", "scale", "mn"))
        (rows,) = quant.dequantize_layers(what, *parts, bits, group, dtype, target)
    else:  # every kept row is in the residual window
        rows = torch.empty(
            (*codes.shape[:3], codes.shape[3] * 8 // bits), dtype=dtype, device=target
        )
    residual = t.get(f"{side}.{layer}.res")
    if residual is None:
        return rows
    return torch.cat((rows, residual.to(target, dtype, non_blocking=target.type == "cuda")), dim=2)


__all__ = ["decode", "encode", "needs_layers", "position_dtype", "stored_by_layers", "token_indices"]
