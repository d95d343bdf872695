"""Codec names without torch: the parse, validation and size agree with the codecs themselves."""

from __future__ import annotations

import pytest
import torch

from evicctl.config import DEFAULT_CODECS
from evicctl.errors import UnknownNameError, UsageError
from evicctl.manager.codecs import codec as codecs
from evicctl.manager.codecs import names as cn
from evicctl.manager.codecs.codec import example_codec_names, get_codec
from evicctl.manager.codecs.scorers import SCORERS
from evicctl.manager.kv import KV

# (tokens, layers, kv_heads, head_dim, dtype_bytes, window_numel): SmolLM2-like, head_dim 80
# (value group 16), a partial key group, fewer tokens than the protected 20, past int16 positions
SHAPES = [
    (1024, 30, 3, 64, 2, 0),
    (1000, 4, 2, 64, 4, 0),
    (777, 2, 5, 80, 2, 2 * 9 * 16 * 80),
    (17, 3, 1, 32, 2, 0),
    (40_000, 1, 1, 32, 2, 0),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", DEFAULT_CODECS)
def test_torch_free_size_is_the_codec_size(name: str, shape: tuple[int, ...]) -> None:
    tokens, layers, heads, dim, dtype_bytes, window = shape
    expected = get_codec(name).stored_bytes(tokens, layers, heads, dim, dtype_bytes, window_numel=window)
    assert cn.stored_bytes(name, tokens, layers, heads, dim, dtype_bytes, window_numel=window) == expected
    assert cn.parse_codec_name(name).kept(tokens) == get_codec(name).kept(tokens)


def _kv(tokens: int, layers: int, heads: int, dim: int, dtype: torch.dtype, window: int) -> KV:
    gen = torch.Generator().manual_seed(tokens)
    keys = [torch.randn(1, heads, tokens, dim, generator=gen).to(dtype) for _ in range(layers)]
    values = [torch.randn(1, heads, tokens, dim, generator=gen).to(dtype) for _ in range(layers)]
    wq = torch.randn(layers, 2 * heads, window, dim, generator=gen).to(dtype)  # snapkv scores with them
    scores = {name: torch.rand(layers, heads, tokens, generator=gen) for name in ("expected", "kvzip")}  # the engine's
    return KV(tuple(keys), tuple(values), torch.arange(tokens).expand(layers, heads, tokens), tokens, wq, scores)


@pytest.mark.parametrize("name", example_codec_names(0.3) + ("none", "int4"))
@pytest.mark.parametrize(("tokens", "dim", "dtype", "window"), [(150, 64, torch.float32, 8), (99, 80, torch.bfloat16, 16)])
def test_torch_free_size_is_what_encoding_stores(name: str, tokens: int, dim: int, dtype, window: int) -> None:
    """Not only equal to the codec's prediction: equal to the bytes an encode really holds."""
    kv = _kv(tokens, 2, 2, dim, dtype, window)
    predicted = cn.stored_bytes(name, tokens, 2, 2, dim, kv.keys[0].element_size(), window_numel=kv.side_numel)
    assert predicted == get_codec(name).encode(kv).nbytes


@pytest.mark.parametrize(
    ("raw", "canonical", "family", "scorer", "ratio", "bits"),
    [
        ("none", "none", "none", None, 0.0, None),
        (" int8", "int8", "quant", None, 0.0, 8),
        ("knorm@0.50", "knorm@0.5", "drop", "knorm", 0.5, None),
        ("keydiff@.25", "keydiff@0.25", "drop", "keydiff", 0.25, None),
        ("snapkv@0.5+int4", "snapkv@0.5+int4", "drop+quant", "snapkv", 0.5, 4),
    ],
)
def test_parts_of_a_name(raw, canonical, family, scorer, ratio, bits) -> None:
    parts = cn.parse_codec_name(raw)
    assert (parts.scorer, parts.ratio, parts.bits) == (scorer, ratio, bits)
    assert parts.name == cn.validate_codec_name(raw) == codecs.validate_codec_name(raw) == canonical
    assert parts.family == cn.codec_family(raw) == get_codec(raw).family == family
    assert parts.keep_fraction == get_codec(raw).keep_fraction


@pytest.mark.parametrize("bad", ["", "zip", "knorm", "knorm@1", "knorm@0", "int16", "int8+knorm@0.5", "none+int8", None])
def test_unknown_names_are_usage_errors_listing_the_forms(bad) -> None:
    with pytest.raises(UnknownNameError) as info:
        cn.validate_codec_name(bad)
    assert isinstance(info.value, UsageError)
    assert all(form in str(info.value) for form in ("none", "int8", "int4", "knorm@R", "snapkv@R", "+int8"))


def test_codecs_module_shares_the_names() -> None:
    assert codecs.validate_codec_name is cn.validate_codec_name
    assert codecs.VALID_FORMS == cn.VALID_FORMS and codecs.QUANTIZERS == cn.QUANTIZERS
    assert tuple(SCORERS) == cn.SCORER_NAMES  # every scorer has a name, every name a scorer


def test_scaled_bytes_follows_the_codec_ratio() -> None:
    raw = 1000 * 23_040
    assert cn.scaled_bytes("none", 1000, raw) == raw
    assert cn.scaled_bytes("knorm@0.5", 1000, raw) < raw // 2 + raw // 50  # half the tokens + positions
    assert cn.scaled_bytes("int8", 1000, raw) < cn.scaled_bytes("none", 1000, raw)
    assert cn.scaled_bytes("int4", 1000, raw) < cn.scaled_bytes("int8", 1000, raw)
    assert cn.scaled_bytes("none", 0, 0) == 0


# ---------------------------------------------------------------- low-bit widths and the menu


@pytest.mark.parametrize(
    ("raw", "canonical", "bits", "group", "residual"),
    [
        ("int2", "int2", 2, 32, cn.DEFAULT_RESIDUAL),
        ("int3-g32", "int3", 3, 32, cn.DEFAULT_RESIDUAL),
        ("int2-g64-r0", "int2-g64-r0", 2, 64, 0),
        ("int4-r16", "int4-r16", 4, 32, 16),
        ("int4-r0", "int4", 4, 32, 0),
        ("snapkv@.5+int2-r32", "snapkv@0.5+int2", 2, 32, cn.DEFAULT_RESIDUAL),
    ],
)
def test_quantizer_options_parse_to_canonical_names(raw, canonical, bits, group, residual) -> None:
    parts = cn.parse_codec_name(raw)
    assert (parts.bits, parts.group, parts.residual) == (bits, group, residual)
    assert parts.name == canonical == get_codec(raw).name


@pytest.mark.parametrize("bad", ["int2-g24", "int2-g1", "int2-g8192", "int2-r", "int5", "int2-r8-g64", "knorm@0.5+int3-"])
def test_bad_quantizer_options_are_refused(bad) -> None:
    with pytest.raises(UnknownNameError):
        cn.validate_codec_name(bad)


def test_low_bit_sizes_are_packed_exactly() -> None:
    """1024 tokens, head_dim 64, fp16: codes are head_dim*bits/8 bytes a row, the residual is
    stored as it was, and the overheads are 2 fp16 per group on each side."""
    tokens, dim = 1024, 64
    for bits in (2, 3):
        quantized = tokens - cn.DEFAULT_RESIDUAL
        codes = 2 * quantized * dim * bits // 8
        keys_side = 4 * (quantized // 32) * dim
        values_side = 4 * quantized * (dim // 32)
        residual = 2 * cn.DEFAULT_RESIDUAL * dim * 2
        assert cn.stored_bytes(f"int{bits}", tokens, 1, 1, dim, 2) == codes + keys_side + values_side + residual
    sizes = [cn.stored_bytes(n, tokens, 1, 1, dim, 2) for n in ("none", "int8", "int4", "int3", "int2", "int2-g64-r0")]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)


def test_the_menu_is_generated_and_holds_the_combinations() -> None:
    from evicctl import config

    assert config.generate_menu() == DEFAULT_CODECS
    assert len(DEFAULT_CODECS) == len(set(DEFAULT_CODECS)) == 1 + 4 + 9 * 3 + 2 + 2 + 2 * 3 * 3  # + pyramid, think, kvzip/expected
    assert all(cn.validate_codec_name(n) == n for n in DEFAULT_CODECS)
    parts = [cn.parse_codec_name(n) for n in DEFAULT_CODECS]
    for scorer in cn.SCORER_NAMES:
        for ratio in config.MENU_RATIOS if scorer in config.MENU_SCORERS else config.MENU_MODEL_RATIOS:
            for bits in (None, 4, 2):
                assert cn.CodecParts(scorer, ratio, bits, residual=cn.default_residual(bits)) in parts
    assert {p.bits for p in parts} == {None, 8, 4, 3, 2}


def test_harder_is_the_partial_order_of_ratio_and_bits() -> None:
    assert cn.is_harder("int2", "int4") and cn.is_harder("snapkv@0.5+int4", "snapkv@0.5")
    assert cn.is_harder("knorm@0.75+int2", "keydiff@0.25+int4")  # harder in both, other scorer
    assert not cn.is_harder("int4", "knorm@0.5") and not cn.is_harder("knorm@0.5", "int4")  # incomparable
    assert not cn.is_harder("int4", "int4-g64") and not cn.is_harder("int4", "int4")  # equal parts: not strictly
    # derivable adds the scorer: tokens another scorer dropped cannot come back
    assert cn.derivable("int4", "knorm@0.5+int2") and cn.derivable("knorm@0.25+int4", "knorm@0.5+int2")
    assert not cn.derivable("knorm@0.25", "snapkv@0.5") and not cn.derivable("int2", "int4")


def test_derivable_matrix_follows_the_partial_order_over_the_menu() -> None:
    import numpy as np

    from evicctl.manager.placer.types import derivable_matrix

    d = derivable_matrix(DEFAULT_CODECS)
    for a, x in enumerate(DEFAULT_CODECS):
        for b, y in enumerate(DEFAULT_CODECS):
            px, py = cn.parse_codec_name(x), cn.parse_codec_name(y)
            harder_or_same = a == b or cn.is_harder(y, x)
            same_drop = px.scorer is None or px.scorer == py.scorer
            assert d[a, b] == (x == "none" or (harder_or_same and same_drop)), (x, y)
    assert np.all(d[DEFAULT_CODECS.index("none")])
