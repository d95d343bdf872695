"""Codecs: one compression configuration each, as a pure pair encode(kv) -> Stored, decode.

Names (DESIGN §3; parsed, validated and sized in names.py, which needs no torch):
``none``; quantization ``int8`` / ``int4`` / ``int3`` / ``int2`` (group-wise, quant.py; a
``-g<G>`` group and ``-r<R>`` residual window may follow); token dropping
``knorm@r`` / ``keydiff@r`` / ``snapkv@r`` (r = fraction of the context's tokens removed,
0 < r < 1, scorers.py), with ``-pyramid`` per-layer budgets (budgets.py); key-channel
pruning ``think@c`` (channels.py); and drop, prune, quantize in that order,
``knorm@0.5+int8``, ``snapkv@0.5-pyramid+think@0.5+int4``. Pyramid and ThinK forms are
encoded layer by layer (layered.py, which documents their extra tensors).

Stored layout (flat, so safetensors saves it as is):
- ``k.{i}`` / ``v.{i}``: layer i's keys / values [1, H, K, D] in the KV's dtype, or when
  quantized ``k.{i}.codes`` [1, H, K, D*bits/8] uint8, ``k.{i}.scale`` / ``k.{i}.mn`` fp16
  (and the same for ``v.{i}``), shapes as in quant.py, of all but the last R kept tokens;
  ``k.{i}.res`` / ``v.{i}.res`` [1, H, R, D] in the KV's dtype: those last R tokens (KIVI's
  full-precision residual window), present only for a codec with a residual (int2/int3 by
  default; R = min(residual, kept)).
- ``pos`` [L, H, K] int16 (int32 past 32,768 tokens): original positions of the kept tokens,
  present only when tokens were dropped (K < tokens); absent means arange(tokens).
- ``wq`` [L, q_heads, W, D] fp16 (bf16 stays bf16): the KV's window queries, when it has
  them. They are kept so that a stored context can still be re-scored with ``snapkv``
  later (recompress, after a restart). They are counted in ``Stored.nbytes`` (the tiers
  account true bytes); ``stored_bytes`` counts them through ``window_numel`` (0 = none).
  For SmolLM2 (30 layers, 9 query heads, head_dim 64) a 16-query window is 0.55 MB in
  fp16, against 46 MB of fp32 KV for a 1k-token context.
- ``ts.{name}`` [L, H, T] fp16: the KV's per-token scores (``expected``, ``kvzip``; the
  engine computes them when it stores the context), of every original position whatever
  was dropped, so a stored copy can be re-scored (recompress, after a restart). Counted like
  ``wq``: ``window_numel`` is the elements of both (KV.side_numel). For SmolLM2 (30 layers,
  3 kv heads) one score set of a 1k-token context is 0.18 MB.

Encoding a KV whose tokens were already dropped keeps them dropped (positions travel), and
a drop codec's ratio is of the full context, so ``knorm@0.5`` applied to a ``knorm@0.5``
KV drops nothing more: the result of encoding with ``int8`` is then effectively
``knorm@0.5+int8`` (see ``combined_name``).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field

import torch

from evicctl.config import DEFAULT_CODECS
from evicctl.errors import CorruptDataError, UnknownNameError
from evicctl.manager.codecs import decode_plan, layered, quant
from evicctl.manager.codecs.names import (
    FAMILIES,
    QUANTIZERS,
    VALID_FORMS,
    CodecParts,
    codec_family,
    parse_codec_name,
    quantized_count,
    validate_codec_name,
)
from evicctl.manager.codecs.scorers import SCORERS, keep_indices
from evicctl.manager.kv import KV


@dataclass(frozen=True, eq=False)
class Stored:
    """A context's KV in one codec's stored form.

    tensors: flat name -> tensor (layout in the module docstring); may share memory with
        the KV it was encoded from (``none`` does), so tiers copy what they keep.
    meta: strings: codec, tokens, kept, layers, kv_heads, head_dim, dtype (+ bits, group,
        value_group when quantized).
    """

    codec: str
    tensors: dict[str, torch.Tensor]
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


class Codec:
    """One compression configuration. Subclasses fill in encode/decode/stored_bytes."""

    name: str = ""
    family: str = "none"  # none | drop | quant | drop+quant
    keep_fraction: float = 1.0  # nominal fraction of tokens kept

    def kept(self, tokens: int) -> int:
        """Tokens per head this codec keeps of a `tokens`-token context."""
        return tokens

    def encode(self, kv: KV) -> Stored:
        raise NotImplementedError

    def decode(self, stored: Stored, device: torch.device | str | None = None) -> KV:
        """The KV of a stored form, on `device` (default: where the stored tensors are)."""
        raise NotImplementedError

    def stored_bytes(
        self, tokens: int, layers: int, kv_heads: int, head_dim: int, dtype_bytes: int, *, window_numel: int = 0
    ) -> int:
        """Exact ``encode(kv).nbytes`` of a full (undropped) KV of that shape, predicted.

        window_numel: elements of the KV's window_queries (layers*q_heads*window*head_dim), 0 if none."""
        raise NotImplementedError

    def predict_bytes(self, kv: KV) -> int:
        """stored_bytes for this KV (full, or already dropped by at most this codec's ratio)."""
        return self.stored_bytes(
            kv.tokens, kv.layers, kv.kv_heads, kv.head_dim, kv.keys[0].element_size(),
            window_numel=kv.side_numel,
        )

    def __repr__(self) -> str:
        return f"<codec {self.name}>"


class PipelineCodec(Codec):
    """Optional token dropping, then optional quantization; ``none`` when neither."""

    def __init__(self, scorer: str | None = None, ratio: float = 0.0, bits: int | None = None, **more) -> None:
        """more: ``group`` and ``residual`` of a quantized codec, ``pyramid`` and
        ``channel_ratio`` (CodecParts' defaults otherwise)."""
        self.parts = CodecParts(scorer, ratio if scorer else 0.0, bits, **more)
        self.scorer, self.ratio, self.bits = scorer, self.parts.ratio, bits
        self.group, self.residual = self.parts.group, self.parts.residual
        self.name, self.family = self.parts.name, self.parts.family
        self.keep_fraction = self.parts.keep_fraction

    # ------------------------------------------------------------ sizes

    def kept(self, tokens: int) -> int:
        return self.parts.kept(tokens)

    def stored_bytes(
        self, tokens: int, layers: int, kv_heads: int, head_dim: int, dtype_bytes: int, *, window_numel: int = 0
    ) -> int:
        return self.parts.stored_bytes(tokens, layers, kv_heads, head_dim, dtype_bytes, window_numel=window_numel)

    # ------------------------------------------------------------ encode

    def encode(self, kv: KV) -> Stored:
        """Drop (per layer and head), then quantize, every layer at once: on CUDA with the
        kernels that is a few launches for the whole context, the gather fused into the
        quantizer; on CPU the torch reference, layer by layer. PyramidKV budgets, ThinK
        channels and ragged KVs go layer by layer (layered.py)."""
        if layered.needs_layers(self.parts, kv):
            tensors, counts, meta = layered.encode(kv, self.parts)
            kept = sum(counts) // len(counts)
        else:
            (tensors, kept), meta = self._encode_uniform(kv), {}
        tensors |= _side_tensors(kv)
        return Stored(self.name, tensors, self._meta(kv, kept) | meta)

    def _encode_uniform(self, kv: KV) -> tuple[dict[str, torch.Tensor], int]:
        """(tensors, kept tokens per head) of a KV that keeps one count in every layer."""
        idx = keep_indices(kv, self.scorer, self.ratio) if self.scorer else None  # [L, 1, H, keep]
        positions = kv.positions if idx is None else kv.positions.gather(2, idx[:, 0].to(kv.positions.device))
        tensors: dict[str, torch.Tensor] = {}
        if self.bits:
            tensors |= self._quantized(kv, idx, positions.shape[-1])
        else:
            keys = kv.keys if idx is None else quant.gather_layers(kv.keys, idx)
            values = kv.values if idx is None else quant.gather_layers(kv.values, idx)
            for i, (k, v) in enumerate(zip(keys, values, strict=True)):
                tensors[f"k.{i}"], tensors[f"v.{i}"] = k.contiguous(), v.contiguous()
        kept = positions.shape[-1]
        if kept < kv.tokens:
            tensors["pos"] = positions.to(layered.position_dtype(kv.tokens)).contiguous()  # [L, H, K]
        return tensors, kept

    def _quantized(self, kv: KV, idx: torch.Tensor | None, kept: int) -> dict[str, torch.Tensor]:
        """Quantized tensors of the kept tokens: the first `kept - R` as (codes, scale, mn) per
        layer and side, the last R (the residual window) as they are.

        idx [L, 1, H, kept] (rows of kv.keys to keep) or None (every row). The split is by
        row position, so without idx the quantizer reads a view of each layer (no copy)."""
        quantized = quantized_count(kept, self.residual)
        groups = {"k": self.group, "v": quant.value_group(kv.head_dim, self.group)}
        tensors: dict[str, torch.Tensor] = {}
        for side, xs, what in (("k", kv.keys, "keys"), ("v", kv.values, "values")):
            if idx is None:
                head = [x[:, :, :quantized] for x in xs]
                parts = quant.quantize_layers(what, head, self.bits, groups[side])
                # one stack for every layer: a copy per layer costs a launch each on CUDA
                residual = list(torch.stack([x[:, :, quantized:] for x in xs]))
            else:
                parts = quant.quantize_layers(what, xs, self.bits, groups[side], idx[..., :quantized])
                residual = quant.gather_layers(xs, idx[..., quantized:]) if quantized < kept else []
            for i in range(kv.layers):
                for part, layers in zip(("codes", "scale", "mn"), parts, strict=True):
                    tensors[f"{side}.{i}.{part}"] = layers[i]
                if self.residual:
                    tensors[f"{side}.{i}.res"] = residual[i].contiguous()
        return tensors

    def _meta(self, kv: KV, kept: int) -> dict[str, str]:
        meta = {
            "codec": self.name,
            "tokens": str(kv.tokens),
            "kept": str(kept),
            "layers": str(kv.layers),
            "kv_heads": str(kv.kv_heads),
            "head_dim": str(kv.head_dim),
            "dtype": str(kv.dtype).removeprefix("torch."),
        }
        if self.bits:
            meta |= {
                "bits": str(self.bits),
                "group": str(self.group),
                "value_group": str(quant.value_group(kv.head_dim, self.group)),
            }
            if self.residual:
                meta["residual"] = str(self.residual)
        return meta

    # ------------------------------------------------------------ decode

    def decode(self, stored: Stored, device: torch.device | str | None = None) -> KV:
        """The KV of a stored form, on `device` (default: where the stored tensors are).

        A form another codec wrote is decoded by that codec; a damaged one raises CorruptDataError."""
        if stored.codec != self.name:
            return decode(stored, device)
        try:
            return self._decode(stored, device)
        except (KeyError, ValueError, RuntimeError, TypeError, StopIteration) as exc:
            raise CorruptDataError(f"cannot decode a {stored.codec!r} KV: {exc}") from exc

    def _decode(self, stored: Stored, device) -> KV:
        meta, t = stored.meta, stored.tensors
        layers, tokens = int(meta["layers"]), int(meta["tokens"])
        dtype = _dtype(meta["dtype"])
        target = torch.device(device) if device is not None else next(iter(t.values())).device
        # async only host -> GPU (ordered before any use on the stream); GPU -> host must
        # finish before the CPU reads it
        move = lambda x: x.to(target, non_blocking=target.type == "cuda")  # noqa: E731
        if layered.stored_by_layers(t):  # PyramidKV layers or ThinK channels
            return dataclasses.replace(layered.decode(t, meta, self.bits, dtype, target, stored), token_scores=_scores(t, move))
        if self.bits:
            keys = self._dequantized(t, "k", int(meta["group"]), layers, dtype, target, stored)
            values = self._dequantized(t, "v", int(meta["value_group"]), layers, dtype, target, stored)
        else:
            keys = [move(t[f"k.{i}"]) for i in range(layers)]
            values = [move(t[f"v.{i}"]) for i in range(layers)]
        heads, kept = keys[0].shape[1], keys[0].shape[2]
        if "pos" in t:
            positions = move(t["pos"]).long()
        else:
            positions = torch.arange(kept, device=target).expand(layers, heads, kept)
        wq = t.get("wq")
        if wq is not None:
            wq = move(wq).to(dtype)
        return KV(tuple(keys), tuple(values), positions, tokens, wq, _scores(t, move))


    def _dequantized(
        self, t: dict[str, torch.Tensor], side: str, group: int, layers: int, dtype, target, owner=None
    ) -> list:
        """Layer tensors [1, H, K, D] of one side: the dequantized rows, then the residual rows.

        With a residual, one [L, 1, H, K, D] buffer is allocated and the kernels write its
        first rows directly; the residual is copied behind them (no concatenation pass).
        owner: the Stored the tensors belong to, whose decode plan (decode_plan.py) is reused."""
        what = "keys" if side == "k" else "values"
        codes, scales, mns, residual = decode_plan.quantized_parts(owner, t, side, layers, target)
        if residual is None:
            return quant.dequantize_layers(what, codes, scales, mns, self.bits, group, dtype, target)
        # the residual is small (R rows): stacked where it is (once, when planned), then one
        # copy (async host -> GPU, ordered before any use) instead of a launch per layer
        residual = residual if isinstance(residual, torch.Tensor) else torch.stack(residual)
        _, heads, quantized, _ = codes[0].shape
        res_rows, dim = residual.shape[-2], residual.shape[-1]
        full = torch.empty((layers, 1, heads, quantized + res_rows, dim), dtype=dtype, device=target)
        if quantized:
            quant.dequantize_layers(what, codes, scales, mns, self.bits, group, dtype, target, out=full[:, :, :, :quantized])
        full[:, :, :, quantized:].copy_(residual, non_blocking=target.type == "cuda")
        return list(full.unbind(0))  # one call for the L views


def _side_tensors(kv: KV) -> dict[str, torch.Tensor]:
    """What a stored form keeps beside keys and values so it can be re-scored later: ``wq``
    (the window queries, 16-bit) and ``ts.{name}`` [L, H, T] fp16 (the token scores)."""
    out: dict[str, torch.Tensor] = {}
    if kv.window_queries is not None:
        wq = kv.window_queries
        out["wq"] = wq.to(wq.dtype if wq.element_size() == 2 else torch.float16).contiguous()
    return out | {f"ts.{name}": s.to(torch.float16).contiguous() for name, s in kv.token_scores.items()}


def carried_scores(stored: Stored) -> frozenset[str]:
    """Names of the token scores a stored form carries (the scorers that can re-score it)."""
    return frozenset(name[3:] for name in stored.tensors if name.startswith("ts."))


def _scores(tensors: dict[str, torch.Tensor], move) -> dict[str, torch.Tensor]:
    """The token scores of a stored form, float32 (fp16 -> float32 -> fp16 is exact)."""
    return {name[3:]: move(t).float() for name, t in tensors.items() if name.startswith("ts.")}


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dtype


# ---------------------------------------------------------------- registry and names


@functools.lru_cache(maxsize=256)
def _codec(parts: CodecParts) -> PipelineCodec:
    return PipelineCodec(
        parts.scorer, parts.ratio, parts.bits, group=parts.group, residual=parts.residual,
        pyramid=parts.pyramid, channel_ratio=parts.channel_ratio,
    )  # fmt: skip


def get_codec(name: str) -> Codec:
    """The codec called `name` (``none``, ``int4``, ``int2``, ``keydiff@0.4``, ``knorm@0.5+int2-g64``, ...).

    Raises UnknownNameError (a UsageError) listing the valid forms."""
    return _codec(parse_codec_name(name))


def codec_names() -> tuple[str, ...]:
    """The default menu the placer chooses from (config.DEFAULT_CODECS)."""
    return DEFAULT_CODECS


def example_codec_names(ratio: float = 0.5) -> tuple[str, ...]:
    """One codec of every form: none, each quantizer, each scorer, each scorer+quantizer."""
    drops = [f"{s}@{ratio!r}" for s in SCORERS]
    return ("none", *QUANTIZERS, *drops, *(f"{d}+{q}" for d in drops for q in QUANTIZERS))


def combined_name(current: str, target: str) -> str:
    """The effective codec of encoding a KV held in `current` with `target`.

    Dropped tokens stay dropped, and the harder drop wins (same scorer family or not, the
    tokens already gone are gone; a PyramidKV drop keeps its per-layer budgets); pruned key
    channels stay zeros, so the larger ThinK ratio wins (a target that prunes fewer stores
    those zeros: its size is the target's); quantization is the target's."""
    cur, tgt = parse_codec_name(current), parse_codec_name(target)
    scorer, ratio, pyramid = tgt.scorer, tgt.ratio, tgt.pyramid
    if cur.scorer and (not tgt.scorer or cur.ratio >= tgt.ratio):
        scorer, ratio, pyramid = cur.scorer, cur.ratio, cur.pyramid
    channel_ratio = max(cur.channel_ratio, tgt.channel_ratio)
    return dataclasses.replace(tgt, scorer=scorer, ratio=ratio, pyramid=pyramid, channel_ratio=channel_ratio).name


def decode(stored: Stored, device: torch.device | str | None = None) -> KV:
    """Decode with the codec named in the stored form."""
    try:
        codec = get_codec(stored.codec)
    except UnknownNameError as exc:
        raise CorruptDataError(f"stored KV names an unknown codec {stored.codec!r}") from exc
    return codec.decode(stored, device)


# ---------------------------------------------------------------- safetensors


def to_safetensors_dict(stored: Stored) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) ready for safetensors.torch.save: contiguous CPU tensors, string meta."""
    tensors = {name: t.detach().contiguous().cpu() for name, t in stored.tensors.items()}
    return tensors, {**stored.meta, "codec": stored.codec}


def from_safetensors_dict(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> Stored:
    """Inverse of to_safetensors_dict; raises CorruptDataError without a codec name."""
    meta = dict(metadata or {})
    codec = meta.get("codec")
    if not codec:
        raise CorruptDataError("stored KV has no codec in its metadata")
    return Stored(codec, dict(tensors), meta)


def raw_stored_bytes(kv: KV) -> int:
    """Bytes the ``none`` codec stores for this KV (keys, values and any positions/window)."""
    return get_codec("none").predict_bytes(kv)


__all__ = [
    "Codec",
    "FAMILIES",
    "PipelineCodec",
    "QUANTIZERS",
    "Stored",
    "VALID_FORMS",
    "codec_family",
    "codec_names",
    "combined_name",
    "decode",
    "example_codec_names",
    "from_safetensors_dict",
    "get_codec",
    "raw_stored_bytes",
    "to_safetensors_dict",
    "validate_codec_name",
]
