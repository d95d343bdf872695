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
    return KV(tuple(keys), tuple(values), torch.arange(tokens).expand(layers, heads, tokens), tokens, wq)


@pytest.mark.parametrize("name", example_codec_names(0.3) + ("none", "int4"))
@pytest.mark.parametrize(("tokens", "dim", "dtype", "window"), [(150, 64, torch.float32, 8), (99, 80, torch.bfloat16, 16)])
def test_torch_free_size_is_what_encoding_stores(name: str, tokens: int, dim: int, dtype, window: int) -> None:
    """Not only equal to the codec's prediction: equal to the bytes an encode really holds."""
    kv = _kv(tokens, 2, 2, dim, dtype, window)
    predicted = cn.stored_bytes(name, tokens, 2, 2, dim, kv.keys[0].element_size(), window_numel=kv.window_queries.numel())
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
