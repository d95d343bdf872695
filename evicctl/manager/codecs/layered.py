"""Encode and decode layer by layer: PyramidKV budgets, ThinK channels, ragged KVs.

codec.py's fast path treats every layer alike (one kept count, full key channels: a few
kernel launches for the whole context on CUDA). The forms here do not fit it: with
``-pyramid`` every layer keeps its own count (names.layer_budgets), with ``think@c`` the
keys lose channels (channels.py) while the values keep all of theirs, and a KV that is
already ragged (a decoded PyramidKV form) has layers of different lengths. So each layer is
gathered, pruned and quantized on its own, with the same quant.py functions (they dispatch
to the kernels on CUDA where the shapes suit them, else run the torch reference). Decoding
takes every layer of a side at once, ragged or not (see the decode section below).

Stored layout, beside codec.py's (same names, same meaning):
- ``k.{i}`` / ``k.{i}.codes`` / ``k.{i}.scale`` / ``k.{i}.mn`` / ``k.{i}.res``: layer i's
  keys as in codec.py, over the C kept key channels instead of head_dim when ThinK prunes;
- ``ch`` [L, H, C] int16: the kept key channels of every layer and kv head (ThinK only);
- ``pos.{i}`` [H, K_i] int16 (int32 past 32,768 tokens) per layer when the layers keep
  different counts; ``pos`` [L, H, K] as in codec.py when they keep the same.
Meta adds ``layer_kept`` (comma-separated K_i, ragged only) and ``key_channels`` (ThinK only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from evicctl.manager.codecs import channels, decode_plan, quant
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
#
# Layer by layer, a decode was a launch or more per layer and side, a torch.cat per layer
# for the residual window and a zeros tensor and a scatter per layer for ThinK: host-bound
# on a GPU (32 layers x several launches), with two extra passes over the keys. Now each
# side of every layer goes into one buffer allocated once (on CUDA; one per layer on the
# CPU, see one_allocation): [L, 1, H, K, D] when the layers keep one count, else one flat
# allocation cut into contiguous [1, H, K_l, D] layers. One dequantize call fills every
# layer (one kernel launch on CUDA, ragged layers too), ThinK's kept key channels going
# straight to their columns (zeros written between them), and the residual rows are put
# behind the dequantized ones. The CPU runs the same steps with the torch reference
# (quant.dequantize_layers decides which runs).


@dataclass(frozen=True)
class Layout:
    """The shapes a stored form decodes to, from its meta (codec.py's and encode's)."""

    layers: int
    heads: int
    head_dim: int
    kept: tuple[int, ...]  # tokens per head, per layer
    residual: int  # rows a layer keeps unquantized (at most its kept count)

    @classmethod
    def of(cls, meta: dict[str, str]) -> Layout:
        layers = int(meta["layers"])
        if "layer_kept" in meta:
            kept = tuple(int(n) for n in meta["layer_kept"].split(","))
        else:
            kept = (int(meta["kept"]),) * layers
        if len(kept) != layers:
            raise ValueError(f"layer_kept names {len(kept)} layers, not {layers}")
        return cls(layers, int(meta["kv_heads"]), int(meta["head_dim"]), kept, int(meta.get("residual", 0)))

    @property
    def uniform(self) -> bool:
        return len(set(self.kept)) == 1

    @property
    def quantized(self) -> tuple[int, ...]:
        return tuple(quantized_count(n, self.residual) for n in self.kept)


def decode(
    t: dict[str, torch.Tensor],
    meta: dict[str, str],
    bits: int | None,
    dtype: torch.dtype,
    target: torch.device,
    owner=None,
) -> KV:
    """The KV of a form written by `encode` (tensors `t`, meta as codec.py writes it), on `target`.

    owner: the Stored the tensors belong to, whose decode plan (decode_plan.py) is reused."""
    layout = Layout.of(meta)
    kept_channels = _kept_channels(t, layout.head_dim, target, owner)  # [L, H, C] int16
    if bits:
        keys = _dequantized(t, "k", layout, bits, int(meta["group"]), dtype, target, kept_channels, owner)
        values = _dequantized(t, "v", layout, bits, int(meta["value_group"]), dtype, target, None, owner)
    else:
        keys = [_move(t[f"k.{i}"], target) for i in range(layout.layers)]
        values = [_move(t[f"v.{i}"], target) for i in range(layout.layers)]
        if kept_channels is not None:
            keys = _restored(keys, kept_channels, layout, dtype, target)
    wq = t.get("wq")
    return KV(
        tuple(keys), tuple(values), _positions(t, layout, target), int(meta["tokens"]),
        None if wq is None else _move(wq, target).to(dtype),
    )  # fmt: skip


def _move(x: torch.Tensor, target: torch.device) -> torch.Tensor:
    # async only host -> GPU (ordered before any use on the stream); GPU -> host must finish
    # before the CPU reads it
    return x.to(target, non_blocking=target.type == "cuda")


def _kept_channels(t: dict[str, torch.Tensor], head_dim: int, target: torch.device, owner) -> torch.Tensor | None:
    """ThinK's kept key channels [L, H, C] int16 on `target`, checked in range (once per form
    where it sits on the GPU), or None."""
    ch = t.get("ch")
    if ch is None:
        return None
    return decode_plan.cached(owner, "ch", ch, target, lambda: _move(channels.check_indices(ch, head_dim), target))


def _channel_columns(
    t: dict[str, torch.Tensor], kept_channels: torch.Tensor | None, head_dim: int, target: torch.device, owner
) -> torch.Tensor | None:
    """The key kernel's column map of ThinK's kept channels ([L, H, head_dim] int32: each
    column's position among the kept channels, or -1), once per form where it sits on the
    GPU; None without kept channels or where the kernels do not run (the reference scatters)."""
    if kept_channels is None or quant.kernels_for(kept_channels) is None:
        return None
    from evicctl.kernels.quant import channel_columns  # (the kernels run here: Triton is present)

    return decode_plan.cached(owner, "ch.columns", t["ch"], target, lambda: channel_columns(kept_channels, head_dim))


def one_allocation(target: torch.device) -> bool:
    """Whether a side's layers share one allocation: on CUDA, where the caching allocator
    hands it out at once and the kernels address a uniform side as one stacked tensor; not
    on the CPU, where a whole side (268 MB at 4k tokens of Llama-8B) is fresh pages on every
    decode (~40 ms of page faults) while blocks of one layer's size are reused from the heap."""
    return target.type == "cuda"


def _layer_buffers(
    kept: tuple[int, ...], heads: int, width: int, dtype: torch.dtype, target: torch.device, zeroed: bool
) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    """(the stacked [L, 1, H, K, width] buffer when every layer keeps K and they share one
    allocation, else None; the L contiguous [1, H, K_l, width] layers); zeroed for
    unquantized ThinK keys (the pruned channels stay 0)."""
    new = torch.zeros if zeroed else torch.empty
    if not one_allocation(target):
        return None, [new((1, heads, n, width), dtype=dtype, device=target) for n in kept]
    if len(set(kept)) == 1:
        whole = new((len(kept), 1, heads, kept[0], width), dtype=dtype, device=target)
        return whole, list(whole.unbind(0))
    flat = new(heads * width * sum(kept), dtype=dtype, device=target)
    sizes = [heads * n * width for n in kept]
    return None, [x.view(1, heads, n, width) for x, n in zip(flat.split(sizes), kept, strict=True)]


def _dequantized(
    t: dict[str, torch.Tensor],
    side: str,
    layout: Layout,
    bits: int,
    group: int,
    dtype: torch.dtype,
    target: torch.device,
    kept_channels: torch.Tensor | None,
    owner,
) -> list[torch.Tensor]:
    """[1, H, K_l, D] per layer of one side: every layer's dequantized rows in one call, then
    the residual rows behind them."""
    what = "keys" if side == "k" else "values"
    codes, scales, mns, residual = decode_plan.quantized_parts(owner, t, side, layout.layers, target, ragged=True)
    # (no zeroing for ThinK: the dequantize writes whole rows, the residual _put its own)
    whole, layers = _layer_buffers(layout.kept, layout.heads, layout.head_dim, dtype, target, zeroed=False)
    quantized = layout.quantized
    if max(quantized):
        head = _head_rows(whole, layers, quantized, layout)
        columns = _channel_columns(t, kept_channels, layout.head_dim, target, owner)
        quant.dequantize_layers(
            what, codes, scales, mns, bits, group, dtype, target, out=head, channels=kept_channels, columns=columns
        )
    if residual is not None:
        _write_residual(whole, layers, quantized, residual, kept_channels, dtype, target)
    return layers


def _head_rows(
    whole: torch.Tensor | None, layers: list[torch.Tensor], quantized: tuple[int, ...], layout: Layout
) -> torch.Tensor | list[torch.Tensor]:
    """Where the dequantized rows go: the first rows of every layer (stacked when uniform:
    the kernels then address the L layers from one tensor, with no per-layer checks)."""
    if not layout.residual:
        return whole if whole is not None else layers
    if whole is not None:
        return whole[:, :, :, : quantized[0]]
    return [x[:, :, :q] for x, q in zip(layers, quantized, strict=True)]


def _write_residual(
    whole: torch.Tensor | None,
    layers: list[torch.Tensor],
    quantized: tuple[int, ...],
    residual: torch.Tensor | list[torch.Tensor],
    kept_channels: torch.Tensor | None,
    dtype: torch.dtype,
    target: torch.device,
) -> None:
    """The residual rows (a list, or stacked [L, 1, H, R, C]) behind the dequantized ones:
    one copy (or ThinK scatter) for all layers when they keep one count, else per layer."""
    if whole is not None:
        # the residual is small (R rows): stacked where it is (once, when planned), then one
        # copy (async host -> GPU, ordered before any use)
        stacked = residual if isinstance(residual, torch.Tensor) else torch.stack(residual)
        _put(whole[:, :, :, quantized[0]:], stacked, kept_channels, dtype, target)
        return
    for layer, (x, q) in enumerate(zip(layers, quantized, strict=True)):
        _put(x[:, :, q:], residual[layer], None if kept_channels is None else kept_channels[layer], dtype, target)


def _put(
    dst: torch.Tensor, src: torch.Tensor, kept_channels: torch.Tensor | None, dtype: torch.dtype, target: torch.device
) -> None:
    """dst <- src (a copy), or src's kept channels into their columns of dst, zeros elsewhere (ThinK)."""
    if src.shape[:-1] != dst.shape[:-1]:  # (a copy would broadcast a damaged form's rows)
        raise ValueError(f"residual rows {tuple(src.shape[:-1])} where {tuple(dst.shape[:-1])} belong")
    if kept_channels is None:
        dst.copy_(src, non_blocking=target.type == "cuda")
    else:
        channels.restore_into(dst.zero_(), src.to(target, dtype, non_blocking=target.type == "cuda"), kept_channels)


def _restored(
    keys: list[torch.Tensor], kept_channels: torch.Tensor, layout: Layout, dtype: torch.dtype, target: torch.device
) -> list[torch.Tensor]:
    """Unquantized ThinK keys [1, H, K_l, C] -> [1, H, K_l, head_dim], pruned channels 0: one
    scatter for every layer when they keep one count, else one per layer."""
    whole, layers = _layer_buffers(layout.kept, layout.heads, layout.head_dim, dtype, target, zeroed=True)
    if whole is not None:
        channels.restore_into(whole, torch.stack(keys), kept_channels)
    else:
        for x, k, idx in zip(layers, keys, kept_channels, strict=True):
            channels.restore_into(x, k, idx)
    return layers


def _positions(
    t: dict[str, torch.Tensor], layout: Layout, target: torch.device
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Original positions: [L, H, K] int64, or one [H, K_l] per layer when they keep
    different counts (then converted together: one copy and one cast instead of one per layer)."""
    if "pos.0" in t:
        per_layer = [t[f"pos.{i}"] for i in range(layout.layers)]
        flat = _move(torch.cat([p.reshape(-1) for p in per_layer]), target).long()
        counts = [p.shape[1] for p in per_layer]
        sizes = [p.numel() for p in per_layer]
        return tuple(x.view(layout.heads, n) for x, n in zip(flat.split(sizes), counts, strict=True))
    if "pos" in t:
        return _move(t["pos"], target).long()
    return torch.arange(layout.kept[0], device=target).expand(layout.layers, layout.heads, layout.kept[0])


__all__ = ["Layout", "decode", "encode", "needs_layers", "position_dtype", "stored_by_layers", "token_indices"]
