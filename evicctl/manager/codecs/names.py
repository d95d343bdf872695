"""Codec names without torch: parsing, validation, and the exact stored size of a name.

The CLI validates codec names and `evicctl show` prices every codec of a context; neither
should pay seconds of CPU importing torch for that. codecs.py builds its codecs from the
parse here and predicts sizes with the arithmetic here, so that arithmetic exists once.

Names (DESIGN §3): ``none``, or up to three parts joined by ``+``, in this order, each optional:

1. token dropping ``knorm@r`` / ``keydiff@r`` / ``snapkv@r`` (r = fraction of the context's
   tokens removed, 0 < r < 1), optionally ``-pyramid``: PyramidKV's per-layer budgets
   (more tokens in low layers, the same total; budgets.py), e.g. ``snapkv@0.5-pyramid``;
2. key-channel pruning ``think@c`` (ThinK: c = fraction of key channels removed per layer
   and kv head, 0 < c < 1; channels.py);
3. quantization ``int8`` / ``int4`` / ``int3`` / ``int2``, each optionally followed by
   ``-g<G>`` (group size) and ``-r<R>`` (full-precision residual window, tokens).

So ``knorm@0.5+int8``, ``snapkv@0.25+int2-g64``, ``think@0.5+int4``,
``snapkv@0.5-pyramid+think@0.5+int2``. Canonical spelling: ratios as Python writes the float
(``knorm@0.50`` and ``knorm@.5`` -> ``knorm@0.5``), and a default group or residual left out.

Token dropping keeps SINK_TOKENS first and WINDOW_TOKENS last positions whatever their
scores (scorers.py); a removed fraction r of a T-token context keeps
``kept_count(T, r) = min(T, max(int(T * (1 - r)), SINK_TOKENS + WINDOW_TOKENS))`` tokens
per head. Quantization groups (quant.py): keys per channel over G tokens (DEFAULT_GROUP
unless ``-g``), values per token over ``value_group(head_dim, G)`` channels, an fp16 scale
and min per group. The last ``residual`` kept tokens (KIVI's residual window: the tokens the
next query attends most) stay in the KV's dtype; int2/int3 keep DEFAULT_RESIDUAL of them,
int8/int4 none (their stored format predates the window and needs none at ~1% quality loss).
Codes are packed exactly: ``head_dim * bits / 8`` bytes per token row (int3 as a 2-bit and a
1-bit plane, quant.py), so ``stored_bytes`` is exact for every width.

``-pyramid`` keeps ``budgets.pyramid_budgets`` tokens in each layer instead (the layers of
such a KV differ in length; positions are stored per layer). ``think@c`` stores only the
kept key channels (``budgets.kept_channels``) of every kept token, and their indices
(int16 [layers, kv_heads, kept channels]); values keep every channel. Both are exact in
``stored_bytes``, which is why it takes the layer count.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass

from evicctl.errors import UnknownNameError
from evicctl.manager.codecs.budgets import kept_channels, pyramid_budgets

SCORER_NAMES: tuple[str, ...] = ("knorm", "keydiff", "snapkv", "expected", "kvzip")  # scorers.SCORERS
# Scorers that read per-token scores the engine computes when it stores a context (KV.token_scores):
# a context stored without them cannot take these codecs.
TOKEN_SCORERS: tuple[str, ...] = ("expected", "kvzip")
QUANTIZERS: dict[str, int] = {"int8": 8, "int4": 4, "int3": 3, "int2": 2}  # name -> bits
FAMILIES = ("none", "drop", "quant", "drop+quant")
SINK_TOKENS = 4
WINDOW_TOKENS = 16
DEFAULT_GROUP = 32  # quantization group (tokens for keys, channels for values)
# Full-precision residual window of int2/int3, in tokens: one key group. At 2-3 bits the most
# recent tokens, which the next query attends most, are where quantization error costs most
# (KIVI keeps 32-128); 32 of a 1k-token context add 0.5 bit per element.
DEFAULT_RESIDUAL = 32
LOW_BIT_WIDTHS = (3, 2)  # widths that keep a residual window by default
MAX_GROUP = 4096  # bounds a name's group: the kernels hold one group in registers
POS16_MAX_TOKENS = 32768  # positions < 32768 fit int16; longer contexts store int32
FP16_BYTES = 2  # quantization scale / min, and window queries, are stored in 16 bits
CHANNEL_INDEX_BYTES = 2  # ThinK's kept channel indices are int16
PYRAMID = "-pyramid"  # suffix of a drop part with PyramidKV's per-layer budgets
THINK = "think"

_RATIO = r"(?P<ratio>[0-9]*\.?[0-9]+)"
# one regex per part; a name is up to one of each, joined by "+", in this order
_PART_RES: tuple[tuple[str, re.Pattern], ...] = (
    ("drop", re.compile(rf"^(?P<scorer>{'|'.join(SCORER_NAMES)})@{_RATIO}(?P<pyramid>{PYRAMID})?$")),
    ("think", re.compile(rf"^{THINK}@{_RATIO}$")),
    ("quant", re.compile(rf"^(?P<quant>{'|'.join(QUANTIZERS)})(?:-g(?P<group>[0-9]+))?(?:-r(?P<residual>[0-9]+))?$")),
)
VALID_FORMS: tuple[str, ...] = (
    "none",
    *QUANTIZERS,
    *(f"{s}@R" for s in SCORER_NAMES),
    *(f"<scorer>@R+{q}" for q in QUANTIZERS),
    "R = fraction of tokens removed, 0 < R < 1 (e.g. snapkv@0.5+int8)",
    f"<scorer>@R{PYRAMID}: PyramidKV's per-layer budgets (e.g. snapkv@0.5{PYRAMID}+int4)",
    f"{THINK}@C: ThinK, fraction C of key channels removed, after any drop, before any int<bits> "
    f"(e.g. snapkv@0.5+{THINK}@0.5+int4)",
    f"int<bits>-g<G>-r<N>: group of G (power of two, default {DEFAULT_GROUP}), N full-precision recent tokens",
)


# ---------------------------------------------------------------- size arithmetic


def kept_count(tokens: int, ratio: float) -> int:
    """Tokens a context of `tokens` keeps per head when the fraction `ratio` is removed."""
    return min(tokens, max(int(tokens * (1 - ratio)), SINK_TOKENS + WINDOW_TOKENS))


def default_residual(bits: int | None) -> int:
    """Residual window (tokens) a width keeps when its name says nothing."""
    return DEFAULT_RESIDUAL if bits in LOW_BIT_WIDTHS else 0


def quantized_count(kept: int, residual: int) -> int:
    """Tokens of a `kept`-token KV that are quantized; the last `residual` stay full precision."""
    return max(kept - residual, 0)


def key_groups(tokens: int, group: int = DEFAULT_GROUP) -> int:
    """Number of token groups of a key tensor of `tokens` tokens."""
    return math.ceil(tokens / group)


def value_group(head_dim: int, group: int = DEFAULT_GROUP) -> int:
    """Channel group the value codec uses for `head_dim`: `group` if it divides head_dim,
    else gcd(head_dim, group) (e.g. 16 for head_dim 80) so every group is whole."""
    return math.gcd(head_dim, group)


def position_bytes(tokens: int) -> int:
    """Bytes of one stored position of a `tokens`-token context (int16, else int32)."""
    return 2 if tokens <= POS16_MAX_TOKENS else 4


def layer_budgets(tokens: int, layers: int, ratio: float) -> tuple[int, ...]:
    """Tokens per head each layer of a PyramidKV codec keeps (budgets.pyramid_budgets with
    evicctl's window, protected tokens and uniform fallback)."""
    return pyramid_budgets(
        tokens, layers, ratio, window=WINDOW_TOKENS, floor=min(tokens, SINK_TOKENS + WINDOW_TOKENS),
        uniform=kept_count(tokens, ratio),
    )  # fmt: skip


# ---------------------------------------------------------------- parsed names


@dataclass(frozen=True)
class CodecParts:
    """A codec name's parts: optional token dropping (scorer, ratio, pyramid), optional
    key-channel pruning (channel_ratio), optional quantization."""

    scorer: str | None = None
    ratio: float = 0.0  # fraction of tokens removed; 0.0 without a scorer
    bits: int | None = None  # quantization bits; None = stored in the KV's dtype
    group: int = DEFAULT_GROUP  # quantization group (tokens for keys; values: value_group)
    residual: int = 0  # most recent kept tokens left in the KV's dtype (quantized codecs only)
    pyramid: bool = False  # PyramidKV: per-layer budgets instead of one count (scorer only)
    channel_ratio: float = 0.0  # ThinK: fraction of key channels removed; 0.0 = none

    @property
    def name(self) -> str:
        drop = f"{self.scorer}@{self.ratio!r}{PYRAMID if self.pyramid else ''}" if self.scorer else ""
        think = f"{THINK}@{self.channel_ratio!r}" if self.channel_ratio else ""
        return "+".join(p for p in (drop, think, self.quant_name) if p) or "none"

    @property
    def quant_name(self) -> str:
        """``int2``, ``int4-g64``, ``int3-r0``, ... ('' unquantized): defaults left out."""
        if not self.bits:
            return ""
        group = f"-g{self.group}" if self.group != DEFAULT_GROUP else ""
        residual = f"-r{self.residual}" if self.residual != default_residual(self.bits) else ""
        return f"int{self.bits}{group}{residual}"

    @property
    def stored_bits(self) -> int:
        """Bits per stored element before overheads (16 = the KV's dtype, for ordering)."""
        return self.bits or 16

    @property
    def family(self) -> str:
        """none | drop | quant | drop+quant: dropping channels (ThinK) counts as dropping."""
        drops = bool(self.scorer or self.channel_ratio)
        return {(False, False): "none", (True, False): "drop", (False, True): "quant"}.get(
            (drops, bool(self.bits)), "drop+quant"
        )

    @property
    def keep_fraction(self) -> float:
        """Nominal fraction of tokens kept (kept() is the exact count)."""
        return 1.0 - self.ratio if self.scorer else 1.0

    def kept(self, tokens: int) -> int:
        """Tokens per head this codec keeps of a `tokens`-token context (with -pyramid: the
        uniform count of the same ratio, which the layers keep on average; layer_kept is exact)."""
        return kept_count(tokens, self.ratio) if self.scorer else tokens

    def layer_kept(self, tokens: int, layers: int) -> tuple[int, ...]:
        """Tokens per head each layer keeps of a `tokens`-token context of `layers` layers."""
        if self.pyramid:
            return layer_budgets(tokens, layers, self.ratio)
        return (self.kept(tokens),) * layers

    def key_channels(self, head_dim: int) -> int:
        """Key channels stored per token (head_dim unless ThinK prunes some)."""
        return kept_channels(head_dim, self.channel_ratio)

    def stored_bytes(
        self, tokens: int, layers: int, kv_heads: int, head_dim: int, dtype_bytes: int, *, window_numel: int = 0
    ) -> int:
        """Exact bytes of the stored form of a full (undropped) KV of that shape.

        window_numel: elements of the KV's 16-bit side tensors (KV.side_numel): its window
        queries (layers*q_heads*window*head_dim) and token scores (layers*kv_heads*tokens each),
        0 if none; they are stored in 16 bits."""
        shape = (kv_heads, head_dim, self.key_channels(head_dim), dtype_bytes)
        if self.pyramid:
            counts = self.layer_kept(tokens, layers)
            body = sum(self._layer_bytes(kept, *shape) for kept in counts)
        else:
            counts = (self.kept(tokens),)
            body = layers * self._layer_bytes(counts[0], *shape)
        kept_total = sum(counts) if self.pyramid else layers * counts[0]
        pos = kv_heads * kept_total * position_bytes(tokens) if min(counts) < tokens else 0
        channels = CHANNEL_INDEX_BYTES * layers * kv_heads * shape[2] if self.channel_ratio else 0
        return body + pos + channels + FP16_BYTES * window_numel

    def _layer_bytes(self, kept: int, kv_heads: int, head_dim: int, key_dim: int, dtype_bytes: int) -> int:
        """Keys (key_dim channels) + values (head_dim) of one layer keeping `kept` tokens."""
        if not self.bits:
            return kv_heads * kept * (key_dim + head_dim) * dtype_bytes
        return self._quantized_layer_bytes(kept, kv_heads, head_dim, key_dim, dtype_bytes)

    def _quantized_layer_bytes(self, kept: int, kv_heads: int, head_dim: int, key_dim: int, dtype_bytes: int) -> int:
        """Keys + values of one layer: packed codes (channels*bits/8 bytes a row), fp16 scale
        and min per group, and the residual rows in the KV's dtype."""
        quantized = quantized_count(kept, self.residual)
        codes = kv_heads * quantized * (key_dim + head_dim) * self.bits // 8
        key_side = 2 * FP16_BYTES * kv_heads * key_groups(quantized, self.group) * key_dim
        value_side = 2 * FP16_BYTES * kv_heads * quantized * (head_dim // value_group(head_dim, self.group))
        residual = kv_heads * (kept - quantized) * (key_dim + head_dim) * dtype_bytes
        return codes + key_side + value_side + residual


def _split(name: str) -> dict[str, re.Match]:
    """Part kind -> its match, each kind at most once and in _PART_RES's order; raises
    UnknownNameError otherwise."""
    found: dict[str, re.Match] = {}
    start = 0
    for piece in name.split("+"):
        for k, (kind, regex) in enumerate(_PART_RES[start:], start):
            m = regex.match(piece)
            if m is not None:
                found[kind], start = m, k + 1
                break
        else:
            raise UnknownNameError("codec", name, VALID_FORMS)
    return found


def _ratio(m: re.Match | None, name: str) -> float:
    ratio = float(m["ratio"]) if m is not None else 0.0
    if m is not None and not 0.0 < ratio < 1.0:
        raise UnknownNameError("codec", name, VALID_FORMS)
    return ratio


@functools.lru_cache(maxsize=256)
def _parse(name: str) -> CodecParts:
    if name == "none":
        return CodecParts()
    parts = _split(name)
    drop, quant = parts.get("drop"), parts.get("quant")
    bits = QUANTIZERS[quant["quant"]] if quant else None
    group = int(quant["group"]) if quant and quant["group"] else DEFAULT_GROUP
    if not (2 <= group <= MAX_GROUP and group & (group - 1) == 0):
        raise UnknownNameError("codec", name, VALID_FORMS)
    residual = int(quant["residual"]) if quant and quant["residual"] else default_residual(bits)
    return CodecParts(
        drop["scorer"] if drop else None, _ratio(drop, name), bits, group, residual,
        pyramid=bool(drop and drop["pyramid"]), channel_ratio=_ratio(parts.get("think"), name),
    )  # fmt: skip


def parse_codec_name(name: str) -> CodecParts:
    """The parts of ``none``, ``int4``, ``keydiff@0.4``, ``knorm@0.5+int8``, ...

    Surrounding spaces are ignored. Raises UnknownNameError (a UsageError) listing the valid forms."""
    if not isinstance(name, str):
        raise UnknownNameError("codec", repr(name), VALID_FORMS)
    return _parse(name.strip())


def validate_codec_name(name: str) -> str:
    """The canonical spelling of a codec name (``knorm@0.50`` -> ``knorm@0.5``); raises UnknownNameError."""
    return parse_codec_name(name).name


def codec_family(name: str) -> str:
    """none | drop | quant | drop+quant."""
    return parse_codec_name(name).family


# ---------------------------------------------------------------- the menu's partial order


def _keeps_no_more_tokens(harder: CodecParts, easier: CodecParts) -> bool:
    """Whether `harder` keeps at most `easier`'s tokens in every layer, whatever the context.

    Uniform drops compare by ratio. PyramidKV budgets compare only at equal ratios: a harder
    ratio can fall back to uniform budgets (budgets.py), which keep more in the top layers
    than the pyramid of an easier ratio did. Uniform and pyramid budgets are incomparable
    (the pyramid keeps more in low layers, fewer in high ones); anything is harder than
    keeping every token."""
    if not easier.scorer:
        return True
    if harder.pyramid != easier.pyramid:
        return False
    return harder.ratio == easier.ratio if harder.pyramid else harder.ratio >= easier.ratio


def at_least_as_hard(harder: CodecParts, easier: CodecParts) -> bool:
    """Whether `harder` keeps no more tokens in any layer than `easier` (_keeps_no_more_tokens),
    prunes at least its fraction of key channels and stores no more bits per element.
    "Harder" (the placer's in-place moves) is this and not equality: a partial order, since
    int4 and knorm@0.5 are incomparable."""
    return (
        _keeps_no_more_tokens(harder, easier)
        and harder.channel_ratio >= easier.channel_ratio
        and harder.stored_bits <= easier.stored_bits
    )


def _order_key(p: CodecParts) -> tuple:
    return (p.ratio, p.pyramid, p.channel_ratio, p.stored_bits)


def is_harder(a: str, b: str) -> bool:
    """Codec `a` is strictly harder than `b`: at least as hard, at least one part strictly."""
    pa, pb = parse_codec_name(a), parse_codec_name(b)
    return at_least_as_hard(pa, pb) and _order_key(pa) != _order_key(pb)


def derivable(current: str, target: str) -> bool:
    """Whether a copy stored at codec `current` can be recompressed to `target`.

    From ``none`` (the full KV) everything; otherwise `target` must be at least as hard, and
    drop the same scorer's tokens (another scorer would keep tokens already gone: the result
    would not be the codec its name says). Pruned key channels are zeros once decoded, so
    ThinK scores them lowest and a harder ThinK prunes them again first."""
    if current == target or current == "none":
        return True
    cur, tgt = parse_codec_name(current), parse_codec_name(target)
    same_drop = cur.scorer is None or cur.scorer == tgt.scorer
    return same_drop and at_least_as_hard(tgt, cur)


def stored_bytes(
    name: str, tokens: int, layers: int, kv_heads: int, head_dim: int, dtype_bytes: int, *, window_numel: int = 0
) -> int:
    """Exact stored bytes of codec `name` on a full KV of that shape (= get_codec(name).stored_bytes)."""
    return parse_codec_name(name).stored_bytes(tokens, layers, kv_heads, head_dim, dtype_bytes, window_numel=window_numel)


# Shape the raw-bytes estimate scales by: one layer, one head, head_dim 64, 16-bit values
# (PyramidKV's budgets need layers: 30, SmolLM2's depth).
_NOMINAL_SHAPE = (1, 1, 64, 2)
_NOMINAL_PYRAMID_LAYERS = 30


def scaled_bytes(name: str, tokens: int, raw_bytes: int) -> int:
    """Stored bytes estimated from the uncompressed size alone, when the KV's shape is not
    known: raw_bytes x the codec's size ratio to ``none`` on a nominal shape."""
    parts = parse_codec_name(name)
    shape = (_NOMINAL_PYRAMID_LAYERS, *_NOMINAL_SHAPE[1:]) if parts.pyramid else _NOMINAL_SHAPE
    nominal = CodecParts().stored_bytes(tokens, *shape)
    if nominal <= 0:
        return 0
    return math.ceil(raw_bytes * parts.stored_bytes(tokens, *shape) / nominal)


__all__ = [
    "PYRAMID",
    "THINK",
    "CodecParts",
    "DEFAULT_GROUP",
    "DEFAULT_RESIDUAL",
    "FAMILIES",
    "QUANTIZERS",
    "SCORER_NAMES",
    "SINK_TOKENS",
    "VALID_FORMS",
    "WINDOW_TOKENS",
    "at_least_as_hard",
    "codec_family",
    "default_residual",
    "derivable",
    "is_harder",
    "key_groups",
    "kept_count",
    "layer_budgets",
    "parse_codec_name",
    "quantized_count",
    "scaled_bytes",
    "stored_bytes",
    "validate_codec_name",
    "value_group",
]
