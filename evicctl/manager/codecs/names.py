"""Codec names without torch: parsing, validation, and the exact stored size of a name.

The CLI validates codec names and `evicctl show` prices every codec of a context; neither
should pay seconds of CPU importing torch for that. codecs.py builds its codecs from the
parse here and predicts sizes with the arithmetic here, so that arithmetic exists once.

Names (DESIGN §3): ``none``; quantization ``int8`` / ``int4``; token dropping
``knorm@r`` / ``keydiff@r`` / ``snapkv@r`` (r = fraction of the context's tokens removed,
0 < r < 1); and drop then quantize, ``knorm@0.5+int8``. Canonical spelling: the ratio as
Python writes the float (``knorm@0.50`` and ``knorm@.5`` -> ``knorm@0.5``).

Token dropping keeps SINK_TOKENS first and WINDOW_TOKENS last positions whatever their
scores (scorers.py); a removed fraction r of a T-token context keeps
``kept_count(T, r) = min(T, max(int(T * (1 - r)), SINK_TOKENS + WINDOW_TOKENS))`` tokens
per head. Quantization groups (quant.py): keys per channel over DEFAULT_GROUP tokens,
values per token over ``value_group(head_dim)`` channels, an fp16 scale and min per group.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass

from evicctl.errors import UnknownNameError

SCORER_NAMES: tuple[str, ...] = ("knorm", "keydiff", "snapkv")  # scorers.SCORERS: one function each
QUANTIZERS: dict[str, int] = {"int8": 8, "int4": 4}  # name -> bits
FAMILIES = ("none", "drop", "quant", "drop+quant")
SINK_TOKENS = 4
WINDOW_TOKENS = 16
DEFAULT_GROUP = 32  # quantization group (tokens for keys, channels for values)
POS16_MAX_TOKENS = 32768  # positions < 32768 fit int16; longer contexts store int32
FP16_BYTES = 2  # quantization scale / min, and window queries, are stored in 16 bits

_NAME_RE = re.compile(
    rf"^(?:(?P<scorer>{'|'.join(SCORER_NAMES)})@(?P<ratio>[0-9]*\.?[0-9]+))?"
    rf"(?:(?(scorer)\+)(?P<quant>{'|'.join(QUANTIZERS)}))?$"
)
VALID_FORMS: tuple[str, ...] = (
    "none",
    *QUANTIZERS,
    *(f"{s}@R" for s in SCORER_NAMES),
    *(f"<scorer>@R+{q}" for q in QUANTIZERS),
    "R = fraction of tokens removed, 0 < R < 1 (e.g. snapkv@0.5+int8)",
)


# ---------------------------------------------------------------- size arithmetic


def kept_count(tokens: int, ratio: float) -> int:
    """Tokens a context of `tokens` keeps per head when the fraction `ratio` is removed."""
    return min(tokens, max(int(tokens * (1 - ratio)), SINK_TOKENS + WINDOW_TOKENS))


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


# ---------------------------------------------------------------- parsed names


@dataclass(frozen=True)
class CodecParts:
    """A codec name's parts: optional token dropping (scorer, ratio), optional quantization."""

    scorer: str | None = None
    ratio: float = 0.0  # fraction of tokens removed; 0.0 without a scorer
    bits: int | None = None  # quantization bits; None = stored in the KV's dtype

    @property
    def name(self) -> str:
        drop = f"{self.scorer}@{self.ratio!r}" if self.scorer else ""
        quant = f"int{self.bits}" if self.bits else ""
        return "+".join(p for p in (drop, quant) if p) or "none"

    @property
    def family(self) -> str:
        return {(False, False): "none", (True, False): "drop", (False, True): "quant"}.get(
            (bool(self.scorer), bool(self.bits)), "drop+quant"
        )

    @property
    def keep_fraction(self) -> float:
        """Nominal fraction of tokens kept (kept() is the exact count)."""
        return 1.0 - self.ratio if self.scorer else 1.0

    def kept(self, tokens: int) -> int:
        """Tokens per head this codec keeps of a `tokens`-token context."""
        return kept_count(tokens, self.ratio) if self.scorer else tokens

    def stored_bytes(
        self, tokens: int, layers: int, kv_heads: int, head_dim: int, dtype_bytes: int, *, window_numel: int = 0
    ) -> int:
        """Exact bytes of the stored form of a full (undropped) KV of that shape.

        window_numel: elements of the KV's window queries (layers*q_heads*window*head_dim),
        0 if none; they are stored in 16 bits."""
        kept = self.kept(tokens)
        cells = kv_heads * kept * head_dim  # elements of one layer's keys
        if self.bits:
            codes = cells * self.bits // 8
            key_side = 2 * FP16_BYTES * kv_heads * key_groups(kept) * head_dim  # scale + mn
            value_side = 2 * FP16_BYTES * kv_heads * kept * (head_dim // value_group(head_dim))
            per_layer = 2 * codes + key_side + value_side
        else:
            per_layer = 2 * cells * dtype_bytes
        pos = layers * kv_heads * kept * position_bytes(tokens) if kept < tokens else 0
        return layers * per_layer + pos + FP16_BYTES * window_numel


@functools.lru_cache(maxsize=256)
def _parse(name: str) -> CodecParts:
    if name == "none":
        return CodecParts()
    m = _NAME_RE.match(name)
    if m is None or not (m["scorer"] or m["quant"]):
        raise UnknownNameError("codec", name, VALID_FORMS)
    ratio = float(m["ratio"]) if m["ratio"] else 0.0
    if m["scorer"] and not 0.0 < ratio < 1.0:
        raise UnknownNameError("codec", name, VALID_FORMS)
    return CodecParts(m["scorer"], ratio, QUANTIZERS[m["quant"]] if m["quant"] else None)


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


def stored_bytes(
    name: str, tokens: int, layers: int, kv_heads: int, head_dim: int, dtype_bytes: int, *, window_numel: int = 0
) -> int:
    """Exact stored bytes of codec `name` on a full KV of that shape (= get_codec(name).stored_bytes)."""
    return parse_codec_name(name).stored_bytes(tokens, layers, kv_heads, head_dim, dtype_bytes, window_numel=window_numel)


# Shape the raw-bytes estimate scales by: one layer, one head, head_dim 64, 16-bit values.
_NOMINAL_SHAPE = (1, 1, 64, 2)


def scaled_bytes(name: str, tokens: int, raw_bytes: int) -> int:
    """Stored bytes estimated from the uncompressed size alone, when the KV's shape is not
    known: raw_bytes x the codec's size ratio to ``none`` on a nominal shape."""
    nominal = CodecParts().stored_bytes(tokens, *_NOMINAL_SHAPE)
    if nominal <= 0:
        return 0
    return math.ceil(raw_bytes * parse_codec_name(name).stored_bytes(tokens, *_NOMINAL_SHAPE) / nominal)


__all__ = [
    "CodecParts",
    "DEFAULT_GROUP",
    "FAMILIES",
    "QUANTIZERS",
    "SCORER_NAMES",
    "SINK_TOKENS",
    "VALID_FORMS",
    "WINDOW_TOKENS",
    "codec_family",
    "key_groups",
    "kept_count",
    "parse_codec_name",
    "scaled_bytes",
    "stored_bytes",
    "validate_codec_name",
    "value_group",
]
