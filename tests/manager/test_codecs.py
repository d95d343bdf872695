"""Codecs, quantization and scorers: round trips, exact sizes, error bounds, kept sets."""

from __future__ import annotations

import dataclasses
import importlib
import math
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from needs import missing

from evicctl.config import DEFAULT_CODECS
from evicctl.errors import CorruptDataError, UnknownNameError, UsageError
from evicctl.manager.codecs import quant
from evicctl.manager.codecs.codec import (
    Stored,
    codec_family,
    codec_names,
    combined_name,
    decode,
    example_codec_names,
    from_safetensors_dict,
    get_codec,
    to_safetensors_dict,
    validate_codec_name,
)
from evicctl.manager.codecs.scorers import SCORERS, SINK_TOKENS, WINDOW_TOKENS, kept_count, snapkv
from evicctl.manager.kv import KV

ALL_CODECS = sorted({*example_codec_names(), *example_codec_names(0.3), *DEFAULT_CODECS})


def make_kv(layers=2, heads=3, tokens=100, dim=64, q_heads=6, window=16, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen).to(dtype)  # noqa: E731
    keys = [rand(1, heads, tokens, dim) * (1 + torch.rand(1, 1, 1, dim, generator=gen)) for _ in range(layers)]
    values = [rand(1, heads, tokens, dim) for _ in range(layers)]
    wq = rand(layers, q_heads, window, dim) if q_heads else None
    kv = KV.full([k.to(dtype) for k in keys], values, wq)
    # the engine's per-token scores (expected, kvzip): float32, any positive values
    scores = {name: torch.rand(layers, heads, tokens, generator=gen) for name in ("expected", "kvzip")}
    return dataclasses.replace(kv, token_scores=scores)


@pytest.fixture(scope="module")
def kv() -> KV:
    return make_kv()


# ---------------------------------------------------------------- the registry matrix


@pytest.mark.parametrize("name", ALL_CODECS)
def test_round_trip_shapes_and_positions(name: str, kv: KV) -> None:
    codec = get_codec(name)
    out = decode(codec.encode(kv))
    kept = codec.parts.layer_kept(kv.tokens, kv.layers)  # one count, or PyramidKV's per layer
    assert out.tokens == kv.tokens and out.layers == kv.layers and out.kv_heads == kv.kv_heads
    assert out.layer_kept == kept and out.head_dim == kv.head_dim and out.dtype == kv.dtype
    assert out.ragged == (len(set(kept)) > 1) and out.kept_tokens == sum(kept) // kv.layers
    must = torch.cat((torch.arange(SINK_TOKENS), torch.arange(kv.tokens - WINDOW_TOKENS, kv.tokens)))
    for layer, n in enumerate(kept):
        positions = out.positions[layer]
        assert out.keys[layer].shape == (1, kv.kv_heads, n, kv.head_dim)
        assert positions.shape == (kv.kv_heads, n) and positions.dtype == torch.int64
        assert (positions.diff(dim=-1) > 0).all(), "kept positions ascend"
        assert torch.isin(must, positions).all() and bool((positions[:, :SINK_TOKENS] == torch.arange(4)).all())
    assert torch.equal(out.window_queries, kv.window_queries.half().float())


@pytest.mark.parametrize("name", ALL_CODECS)
def test_round_trip_values(name: str, kv: KV) -> None:
    codec = get_codec(name)
    stored = codec.encode(kv)
    out = decode(stored)
    for layer in range(kv.layers):
        idx = out.positions[layer][None, :, :, None].expand(-1, -1, -1, kv.head_dim)
        for got, ref in ((out.keys[layer], kv.keys[layer]), (out.values[layer], kv.values[layer])):
            want = ref.gather(2, idx)  # the original rows of the kept tokens
            if ref is kv.keys[layer] and "ch" in stored.tensors:  # ThinK: pruned key channels are zeros
                pruned = torch.ones(kv.kv_heads, kv.head_dim, dtype=torch.bool)
                pruned.scatter_(1, stored.tensors["ch"][layer].long(), False)
                want = want.masked_fill(pruned[None, :, None, :], 0.0)
            if codec.family in ("none", "drop"):
                assert torch.equal(got, want)
            else:  # half a step: int8 ~ range/255 ... int2 ~ range/3 of N(0, ~2) data
                tol = {8: 0.1, 4: 1.0, 3: 1.5, 2: 3.0}[codec.bits]
                quantized = max(got.shape[2] - codec.residual, 0)
                assert (got - want).abs().max() < tol
                assert quantized == 0 or not torch.equal(got[:, :, :quantized], want[:, :, :quantized])
                # KIVI's residual window: the most recent kept tokens come back exactly
                assert torch.equal(got[:, :, quantized:], want[:, :, quantized:])


SHAPES = [  # (layers, heads, tokens, head_dim, dtype, q_heads)
    (1, 1, 1, 32, torch.float32, 0),
    (2, 3, 19, 64, torch.float32, 6),
    (2, 3, 20, 64, torch.bfloat16, 3),
    (1, 2, 33, 80, torch.float16, 4),  # value groups of 16 (gcd(80, 32))
    (2, 3, 100, 64, torch.float32, 9),
    (3, 2, 257, 128, torch.bfloat16, 0),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:4])) + str(s[4])[-7:])
@pytest.mark.parametrize("name", ALL_CODECS)
def test_stored_bytes_is_exact(name: str, shape) -> None:
    layers, heads, tokens, dim, dtype, q_heads = shape
    codec = get_codec(name)
    if codec.scorer == "snapkv" or codec.parts.channel_ratio:  # they need window queries; the others are sized without them too
        q_heads = q_heads or heads
    kv = make_kv(layers, heads, tokens, dim, q_heads, window=min(tokens, 8), dtype=dtype)
    stored = codec.encode(kv)
    predicted = codec.stored_bytes(tokens, layers, heads, dim, dtype.itemsize, window_numel=kv.side_numel)
    assert predicted == stored.nbytes == codec.predict_bytes(kv)
    assert all(t.is_contiguous() for t in stored.tensors.values())


def test_sizes_shrink_as_expected(kv: KV) -> None:
    size = {n: get_codec(n).encode(kv).nbytes for n in ("none", "int8", "int4", "knorm@0.5", "knorm@0.5+int8")}
    assert size["knorm@0.5+int8"] < size["int8"] < size["knorm@0.5"] < size["none"]
    assert size["int4"] < size["int8"]
    assert size["int8"] / size["none"] < 0.4 and size["int4"] / size["none"] < 0.26


def test_long_context_positions_use_int32() -> None:
    codec = get_codec("knorm@0.5")
    small = codec.stored_bytes(32768, 1, 1, 64, 2)
    large = codec.stored_bytes(32769, 1, 1, 64, 2)
    assert small - 2 * 16384 * 64 * 2 == 16384 * 2
    assert large - 2 * 16384 * 64 * 2 == 16384 * 4


def test_short_context_keeps_everything() -> None:
    kv = make_kv(tokens=12)
    stored = get_codec("keydiff@0.75+int4").encode(kv)
    assert "pos" not in stored.tensors
    assert decode(stored).kept_tokens == 12


def test_safetensors_dict_round_trip(kv: KV) -> None:
    from safetensors.torch import load, save

    stored = get_codec("snapkv@0.5+int4").encode(kv)
    tensors, meta = to_safetensors_dict(stored)
    raw = save(tensors, meta)
    back = from_safetensors_dict(load(raw), meta)
    assert back.codec == stored.codec and back.meta == {**stored.meta, "codec": stored.codec}
    assert all(torch.equal(back.tensors[k], stored.tensors[k]) for k in stored.tensors)
    with pytest.raises(CorruptDataError):
        from_safetensors_dict(tensors, {})


def test_decode_rejects_damaged_forms(kv: KV) -> None:
    stored = get_codec("int8").encode(kv)
    missing = Stored(stored.codec, {k: v for k, v in stored.tensors.items() if k != "v.1.codes"}, stored.meta)
    with pytest.raises(CorruptDataError):
        decode(missing)
    with pytest.raises(CorruptDataError):
        decode(Stored("bogus@codec", stored.tensors, stored.meta))
    bad_dtype = Stored(stored.codec, stored.tensors, {**stored.meta, "dtype": "Tensor"})
    with pytest.raises(CorruptDataError):
        decode(bad_dtype)


def test_decode_to_device(kv: KV) -> None:
    out = decode(get_codec("int4").encode(kv), device="cpu")
    assert out.device.type == "cpu"


def test_a_codec_decodes_a_form_another_codec_wrote(kv: KV) -> None:
    stored = get_codec("knorm@0.5+int4").encode(kv)
    out = get_codec("none").decode(stored)
    assert out.kept_tokens == 50 and torch.equal(out.keys[1], decode(stored).keys[1])


def test_gather_tokens_picks_rows_per_head() -> None:
    x = torch.arange(2 * 10 * 4, dtype=torch.float32).view(1, 2, 10, 4)
    idx = torch.tensor([[[0, 3, 9], [1, 2, 8]]])
    out = quant.gather_tokens(x, idx)
    assert out.shape == (1, 2, 3, 4)
    assert torch.equal(out[0, 0], x[0, 0, [0, 3, 9]]) and torch.equal(out[0, 1], x[0, 1, [1, 2, 8]])


# ---------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("raw", "canonical", "family", "keep"),
    [
        ("none", "none", "none", 1.0),
        ("int8", "int8", "quant", 1.0),
        (" int4 ", "int4", "quant", 1.0),
        ("knorm@0.50", "knorm@0.5", "drop", 0.5),
        ("keydiff@.25", "keydiff@0.25", "drop", 0.75),
        ("snapkv@0.5+int8", "snapkv@0.5+int8", "drop+quant", 0.5),
        ("knorm@0.2+int4", "knorm@0.2+int4", "drop+quant", 0.8),
    ],
)
def test_names_parse(raw: str, canonical: str, family: str, keep: float) -> None:
    codec = get_codec(raw)
    assert validate_codec_name(raw) == codec.name == canonical
    assert codec.family == codec_family(raw) == family
    assert codec.keep_fraction == pytest.approx(keep)


@pytest.mark.parametrize(
    "bad",
    ["", "foo", "knorm", "knorm@", "knorm@0", "knorm@1", "knorm@1.5", "knorm@-0.5", "int16",
     "int8+knorm@0.5", "knorm@0.5int8", "knorm@0.5+", "none+int8", "KNORM@0.5", "h2o@0.5", "knorm@0.5+int8+int4"],
)  # fmt: skip
def test_unknown_names_list_the_valid_forms(bad: str) -> None:
    with pytest.raises(UnknownNameError) as info:
        get_codec(bad)
    err = info.value
    assert isinstance(err, UsageError) and isinstance(err, KeyError)
    for form in ("none", "int8", "int4", "knorm@R", "keydiff@R", "snapkv@R", "+int8"):
        assert form in str(err)


def test_menu_is_the_config_default_and_valid() -> None:
    assert codec_names() == DEFAULT_CODECS
    assert all(validate_codec_name(n) == n for n in codec_names())
    assert {get_codec(n).family for n in example_codec_names()} == {"none", "drop", "quant", "drop+quant"}


def test_combined_name() -> None:
    assert combined_name("none", "int8") == "int8"
    assert combined_name("knorm@0.5", "int8") == "knorm@0.5+int8"
    assert combined_name("knorm@0.5+int4", "int8") == "knorm@0.5+int8"
    assert combined_name("knorm@0.5", "snapkv@0.75") == "snapkv@0.75"
    assert combined_name("knorm@0.75", "snapkv@0.5+int4") == "knorm@0.75+int4"


# ---------------------------------------------------------------- quantization format


def _groups_keys(x: torch.Tensor, group: int):
    """Per (group of tokens, channel): fp32 min and max, by plain slicing."""
    t = x.shape[2]
    slices = [x[:, :, g : g + group].float() for g in range(0, t, group)]
    return torch.stack([s.amin(2) for s in slices], 2), torch.stack([s.amax(2) for s in slices], 2)


def _spec_scale_min(mn, mx, bits):
    scale = (mx - mn) / (2**bits - 1)
    scale16 = scale.half()
    scale16 = torch.where(scale16 == 0, torch.ones_like(scale16), scale16)
    return scale, scale16, mn.half()


@settings(max_examples=60, deadline=None)
@given(
    bits=st.sampled_from([8, 4]),
    heads=st.integers(1, 3),
    tokens=st.integers(1, 80),
    dim=st.sampled_from([32, 64]),
    magnitude=st.sampled_from([1e-3, 1.0, 30.0]),
    offset=st.floats(-50, 50),
    seed=st.integers(0, 2**31 - 1),
)
def test_key_quantization_error_bound(bits, heads, tokens, dim, magnitude, offset, seed) -> None:
    gen = torch.Generator().manual_seed(seed)
    k = torch.randn(1, heads, tokens, dim, generator=gen) * magnitude + offset
    codes, scale, mn = quant.quantize_keys(k, bits, 32)
    groups = math.ceil(tokens / 32)
    assert codes.dtype == torch.uint8 and codes.shape == (1, heads, tokens, dim * bits // 8)
    assert scale.shape == mn.shape == (1, heads, groups, dim) and scale.dtype == mn.dtype == torch.float16
    lo, hi = _groups_keys(k, 32)
    scale32, scale16, mn16 = _spec_scale_min(lo, hi, bits)
    assert torch.equal(scale, scale16) and torch.equal(mn, mn16)
    out = quant.dequantize_keys(codes, scale, mn, bits, 32, torch.float32)
    per_token = lambda g: g.float().repeat_interleave(32, dim=2)[:, :, :tokens]  # noqa: E731
    # scale16/2, plus the fp16 rounding of the range's ends for elements clamped at them
    bound = per_token(scale16) / 2 + per_token((lo - mn16.float()).abs()) + (2**bits - 1) * per_token(
        (scale32 - scale16.float()).abs()
    )
    assert bool(((out - k).abs() <= bound * (1 + 1e-5) + 1e-6 * k.abs()).all())


@settings(max_examples=60, deadline=None)
@given(
    bits=st.sampled_from([8, 4]),
    heads=st.integers(1, 3),
    tokens=st.integers(1, 40),
    dim=st.sampled_from([32, 64, 128]),
    magnitude=st.sampled_from([1e-3, 1.0, 30.0]),
    offset=st.floats(-50, 50),
    seed=st.integers(0, 2**31 - 1),
)
def test_value_quantization_error_bound(bits, heads, tokens, dim, magnitude, offset, seed) -> None:
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(1, heads, tokens, dim, generator=gen) * magnitude + offset
    codes, scale, mn = quant.quantize_values(v, bits, 32)
    assert codes.shape == (1, heads, tokens, dim * bits // 8) and scale.shape == (1, heads, tokens, dim // 32)
    grouped = v.view(1, heads, tokens, dim // 32, 32)
    lo, hi = grouped.amin(-1), grouped.amax(-1)
    scale32, scale16, mn16 = _spec_scale_min(lo, hi, bits)
    assert torch.equal(scale, scale16) and torch.equal(mn, mn16)
    out = quant.dequantize_values(codes, scale, mn, bits, 32, torch.float32).view_as(grouped)
    bound = (scale16.float() / 2 + (lo - mn16.float()).abs() + (2**bits - 1) * (scale32 - scale16.float()).abs())
    assert bool(((out - grouped).abs() <= bound[..., None] * (1 + 1e-5) + 1e-6 * grouped.abs()).all())


@pytest.mark.parametrize("bits", [8, 4])
def test_codes_follow_the_spec_bit_for_bit(bits: int) -> None:
    gen = torch.Generator().manual_seed(1)
    k = torch.randn(1, 2, 45, 64, generator=gen)
    codes, scale, mn = quant.quantize_keys(k, bits, 32)
    s = scale.float().repeat_interleave(32, 2)[:, :, :45]
    m = mn.float().repeat_interleave(32, 2)[:, :, :45]
    want = torch.round((k - m) / s).clamp(0, 2**bits - 1).to(torch.uint8)
    if bits == 4:  # low nibble = even channel, high nibble = odd channel
        assert torch.equal(codes & 0x0F, want[..., 0::2]) and torch.equal(codes >> 4, want[..., 1::2])
    else:
        assert torch.equal(codes, want)
    assert torch.equal(quant.dequantize_keys(codes, scale, mn, bits, 32, torch.float32), want.float() * s + m)


@pytest.mark.parametrize("bits", [8, 4])
def test_degenerate_groups_stay_finite(bits: int) -> None:
    const = torch.full((1, 1, 40, 32), 3.25)
    tiny = 1.0 + torch.arange(40 * 32, dtype=torch.float32).view(1, 1, 40, 32) * 1e-12
    for x in (const, tiny):
        for q, dq in ((quant.quantize_keys, quant.dequantize_keys), (quant.quantize_values, quant.dequantize_values)):
            codes, scale, mn = q(x, bits, 32)
            out = dq(codes, scale, mn, bits, 32, torch.float32)
            assert torch.isfinite(out).all() and (out - x).abs().max() < 1e-3


def test_bad_quantization_arguments() -> None:
    x = torch.zeros(1, 1, 4, 32)
    with pytest.raises(ValueError):
        quant.quantize_keys(x, 5, 32)
    with pytest.raises(ValueError, match="multiple of 8"):
        quant.quantize_keys(torch.zeros(1, 1, 4, 36), 3, 32)  # int3 packs 8 channels in 3 bytes
    with pytest.raises(ValueError):
        quant.quantize_values(torch.zeros(1, 1, 4, 48), 8, 32)
    with pytest.raises(ValueError):
        quant.quantize_keys(torch.zeros(2, 1, 4, 32), 8, 32)


def test_cpu_tensors_never_reach_the_kernels() -> None:
    assert quant._cuda_kernel(torch.zeros(1), "quantize_keys") is None
    assert quant.kernels_for(torch.zeros(1)) is None


@settings(max_examples=40, deadline=None)
@given(
    bits=st.sampled_from([8, 4]),
    rows=st.integers(1, 4000),
    magnitude=st.sampled_from([1e-4, 1.0, 300.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_scale_is_the_correctly_rounded_quotient(bits, rows, magnitude, seed) -> None:
    """scale = fl32(fl32(mx - mn) / (2**bits - 1)), then fp16: the IEEE quotient (float64
    division rounded to fp32 is exactly that), the same bytes the CUDA kernels write."""
    gen = torch.Generator().manual_seed(seed)
    mn = torch.randn(rows, generator=gen) * magnitude
    mx = mn + torch.rand(rows, generator=gen) * magnitude
    scale16, mn16 = quant._scale_min(mn, mx, bits)
    want = ((mx - mn).double() / (2**bits - 1)).float().half()
    want = torch.where(want == 0, torch.ones_like(want), want)
    assert torch.equal(scale16, want) and torch.equal(mn16, mn.half())


# ---------------------------------------------------------------- the all-layer kernel dispatch


class _FakeKernels:
    """evicctl.kernels' all-layer signatures computed with the torch reference (stacked [L, ...]
    outputs, as the kernels return), counting calls: the dispatch plumbing, checked on CPU."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def _stack(self, name, parts):
        self.calls.append(name)
        return tuple(torch.stack(p) for p in zip(*parts, strict=True))

    def quantize_keys_layers(self, ks, bits, group=32):
        return self._stack("quantize_keys_layers", [quant.quantize_keys_ref(k, bits, group) for k in ks])

    def quantize_values_layers(self, vs, bits, group=32):
        return self._stack("quantize_values_layers", [quant.quantize_values_ref(v, bits, group) for v in vs])

    def gather_quantize_keys(self, ks, idx, bits, group=32):
        assert idx.dim() == 4 and idx.dtype == torch.int64 and idx.is_contiguous()
        parts = [quant.quantize_keys_ref(quant.gather_tokens_ref(k, i), bits, group) for k, i in zip(ks, idx, strict=True)]
        return self._stack("gather_quantize_keys", parts)

    def gather_quantize_values(self, vs, idx, bits, group=32):
        parts = [quant.quantize_values_ref(quant.gather_tokens_ref(v, i), bits, group) for v, i in zip(vs, idx, strict=True)]
        return self._stack("gather_quantize_values", parts)

    def gather_tokens_layers(self, xs, idx):
        return self._stack("gather_tokens_layers", [(quant.gather_tokens_ref(x, i),) for x, i in zip(xs, idx, strict=True)])[0]

    def as_layers(self, x, rank, what, **kw):
        # the layer checks decode plans keep are pure torch: the real ones
        return importlib.import_module("evicctl.kernels._layers").as_layers(x, rank, what, **kw)

    def dequantize_keys_layers(self, codes, scale, mn, bits, group=32, dtype=torch.float32, out=None):
        parts = [(quant.dequantize_keys_ref(*p, bits, group, dtype),) for p in zip(codes, scale, mn, strict=True)]
        stacked = self._stack("dequantize_keys_layers", parts)[0]
        return stacked if out is None else out.copy_(stacked)

    def dequantize_values_layers(self, codes, scale, mn, bits, group=32, dtype=torch.float32, out=None):
        parts = [(quant.dequantize_values_ref(*p, bits, group, dtype),) for p in zip(codes, scale, mn, strict=True)]
        stacked = self._stack("dequantize_values_layers", parts)[0]
        return stacked if out is None else out.copy_(stacked)

    def quantize_keys(self, k, bits, group=32):
        self.calls.append("quantize_keys")
        return quant.quantize_keys_ref(k, bits, group)

    def dequantize_values(self, codes, scale, mn, bits, group=32, dtype=torch.float32):
        self.calls.append("dequantize_values")
        return quant.dequantize_values_ref(codes, scale, mn, bits, group, dtype)

    def gather_tokens(self, x, idx):
        self.calls.append("gather_tokens")
        return quant.gather_tokens_ref(x, idx)

    def _scores(self, name, ks, scorer, **kv_args):
        kv = KV(tuple(ks), tuple(ks), kv_args.get("positions", torch.arange(ks[0].shape[2]).expand(len(ks), ks[0].shape[1], -1)),
                kv_args.get("tokens", ks[0].shape[2]), kv_args.get("wq"))  # fmt: skip
        return self._stack(name, [(SCORERS[scorer](kv, i),) for i in range(len(ks))])[0]

    def knorm_scores_layers(self, ks):
        return self._scores("knorm_scores_layers", ks, "knorm")

    def keydiff_scores_layers(self, ks):
        return self._scores("keydiff_scores_layers", ks, "keydiff")

    def snapkv_scores_layers(self, ks, wq, positions, tokens):
        assert wq.dim() == 4 and positions.shape == (len(ks), ks[0].shape[1], ks[0].shape[2])
        return self._scores("snapkv_scores_layers", ks, "snapkv", positions=positions, tokens=tokens, wq=wq)


@pytest.mark.parametrize(
    "name", ["int8", "int4", "int2", "knorm@0.5", "keydiff@0.3+int8", "snapkv@0.75+int4", "snapkv@0.5", "keydiff@0.25+int3-g64-r8"]
)
def test_kernel_dispatch_gives_the_reference_bytes_in_one_call_per_side(name, kv, monkeypatch) -> None:
    codec = get_codec(name)
    want = codec.encode(kv)
    ref_back = codec.decode(want)
    fake = _FakeKernels()
    monkeypatch.setattr(quant, "kernels_for", lambda x: fake)
    got = codec.encode(kv)
    assert got.meta == want.meta and list(got.tensors) == list(want.tensors)
    assert all(torch.equal(got.tensors[k], want.tensors[k]) for k in want.tensors)
    encode_calls = list(fake.calls)
    expect = [f"{codec.scorer}_scores_layers"] if codec.scorer else []
    if codec.bits:
        verb = "gather_quantize" if codec.scorer else "quantize"
        for side in ("keys", "values"):
            expect.append(f"{verb}_{side}" + ("" if codec.scorer else "_layers"))
            if codec.scorer and codec.residual:  # the residual window's rows, gathered as they are
                expect.append("gather_tokens_layers")
    else:
        expect += ["gather_tokens_layers", "gather_tokens_layers"]
    assert encode_calls == expect  # one call for every layer, per step and side
    back = codec.decode(got)
    if codec.bits:
        assert fake.calls[len(encode_calls) :] == ["dequantize_keys_layers", "dequantize_values_layers"]
    for a, b in zip((*back.keys, *back.values), (*ref_back.keys, *ref_back.values), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(back.positions, ref_back.positions)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "name",
    ["int8", "int4", "knorm@0.5+int8", "keydiff@0.5+int4", "knorm@0.5", "snapkv@0.5+int8", "int3", "int2-g64", "knorm@0.5+int2", "snapkv@0.25+int3-r0"],
)
def test_cuda_encode_and_decode_match_the_cpu(name, dtype) -> None:
    """On CUDA (through the kernels where they run) a codec writes the CPU's bytes."""
    cpu = make_kv(layers=3, heads=4, tokens=300, dim=128, q_heads=8, dtype=dtype, seed=5)
    cuda = cpu.to("cuda")
    codec = get_codec(name)
    want, got = codec.encode(cpu), codec.encode(cuda)
    assert set(got.tensors) == set(want.tensors) and got.meta == want.meta
    assert all(t.is_cuda for t in got.tensors.values())
    if codec.scorer in ("keydiff", "snapkv") and not torch.equal(got.tensors["pos"].cpu(), want.tensors["pos"]):
        # scores agree to ~1e-5 (knorm's to fp32 rounding): a near-tie at the cut may differ
        a, b = got.tensors["pos"].cpu().flatten(0, 1), want.tensors["pos"].flatten(0, 1)  # [L*H, keep]
        shared = sum(int(torch.isin(x, y).sum()) for x, y in zip(a, b, strict=True))
        assert shared / b.numel() > 0.97
        return
    for key, t in want.tensors.items():
        assert torch.equal(got.tensors[key].cpu(), t), key
    back, ref = codec.decode(got), codec.decode(want)
    assert back.keys[0].is_cuda and back.dtype == dtype
    for a, b in zip((*back.keys, *back.values), (*ref.keys, *ref.values), strict=True):
        assert torch.equal(a.cpu(), b)
    host = codec.decode(want, device="cuda")  # CPU-held form, decoded onto the GPU
    assert all(torch.equal(a.cpu(), b) for a, b in zip(host.keys, ref.keys, strict=True))


def test_kernel_dispatch_skips_shapes_the_kernels_do_not_take(monkeypatch) -> None:
    fake = _FakeKernels()
    monkeypatch.setattr(quant, "kernels_for", lambda x: fake)
    x64, x80 = torch.randn(1, 2, 40, 64), torch.randn(1, 2, 40, 80)
    idx = torch.arange(0, 40, 2).expand(1, 2, 20)
    for x in (x64, x80):
        parts = quant.quantize_keys(x, 4, 32)
        quant.dequantize_values(*quant.quantize_values_ref(x, 8, 16), 8, 16, torch.float16)
        quant.gather_tokens(x, idx)
    assert fake.calls == ["quantize_keys", "dequantize_values", "gather_tokens"]  # head_dim 64 only
    assert torch.equal(parts[0], quant.quantize_keys_ref(x80, 4, 32)[0])
    quant.dequantize_values(*quant.quantize_values_ref(x64, 8, 32), 8, 32, torch.float64)
    assert fake.calls[-1] == "gather_tokens"  # float64 output: not a kernel dtype
    fake.calls.clear()
    odd = make_kv(layers=2, heads=2, tokens=40, dim=80, q_heads=4)  # head_dim 80: not a power of two
    want_parts = [quant.quantize_keys_ref(k, 8, 32) for k in odd.keys]
    got = get_codec("knorm@0.5+int8").encode(odd)
    assert fake.calls == []
    assert torch.equal(get_codec("int8").encode(odd).tensors["k.1.codes"], want_parts[1][0])
    assert got.meta["kept"] == "20"


def test_importing_storage_modules_is_light() -> None:
    code = (
        "import sys, evicctl.manager.codecs.codec, evicctl.manager.tiers.tier, evicctl.manager.costs, "
        "evicctl.manager.codecs.scorers, evicctl.manager.codecs.quant, torch\n"
        "bad = [m for m in ('triton', 'redis', 'safetensors', 'scipy', 'textual', 'typer') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "assert not torch.cuda.is_initialized()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- token dropping


def _expected_kept(scores: torch.Tensor, tokens: int, keep: int) -> list[list[int]]:
    """Per head: the protected positions plus the best-scored others, by plain sorting."""
    out = []
    for head_scores in scores[0].tolist():
        protected = [i for i in range(tokens) if i < SINK_TOKENS or i >= tokens - WINDOW_TOKENS]
        others = sorted((i for i in range(tokens) if i not in protected), key=lambda i: -head_scores[i])
        out.append(sorted(protected + others[: keep - len(protected)]))
    return out


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75, 0.9])
@pytest.mark.parametrize("scorer", list(SCORERS))
def test_drop_keeps_the_scorers_top_set(scorer: str, ratio: float, kv: KV) -> None:
    out = decode(get_codec(f"{scorer}@{ratio}").encode(kv))
    keep = kept_count(kv.tokens, ratio)
    assert keep == max(int(kv.tokens * (1 - ratio)), SINK_TOKENS + WINDOW_TOKENS)
    for layer in range(kv.layers):
        want = _expected_kept(SCORERS[scorer](kv, layer), kv.tokens, keep)
        assert out.positions[layer].tolist() == want


def test_knorm_keeps_low_norm_keys(kv: KV) -> None:
    out = decode(get_codec("knorm@0.5").encode(kv))
    norms = kv.keys[0][0, 0].norm(dim=-1)  # head 0
    free = torch.arange(SINK_TOKENS, kv.tokens - WINDOW_TOKENS)
    kept = set(out.positions[0, 0].tolist())
    assert int(free[norms[free].argmin()]) in kept and int(free[norms[free].argmax()]) not in kept


def test_keydiff_keeps_the_odd_key_out() -> None:
    kv = make_kv(layers=1, heads=1, tokens=60, q_heads=0)
    keys = kv.keys[0].clone()
    keys[0, 0, 4:44] = keys[0, 0, 4:5] + 0.01 * torch.randn(40, 64)  # near-duplicates
    odd = 30
    keys[0, 0, odd] = -keys[0, 0, 4] * 3  # the opposite direction
    kv2 = KV.full([keys], list(kv.values))
    out = decode(get_codec("keydiff@0.5").encode(kv2))
    assert odd in out.positions[0, 0].tolist()


def test_snapkv_keeps_what_the_window_attends() -> None:
    kv = make_kv(layers=1, heads=2, tokens=80, q_heads=4, window=8)
    target = 37
    keys = kv.keys[0].clone()
    wq = kv.window_queries.clone()
    direction = torch.nn.functional.normalize(torch.randn(64), dim=0)
    wq[:] = direction * 4
    keys[0, :, target] = direction * 8  # the one key every window query looks at
    kv2 = KV.full([keys], list(kv.values), wq)
    scores = snapkv(kv2, 0)
    assert scores.shape == (1, 2, 80)
    free = scores[0, :, SINK_TOKENS : 80 - WINDOW_TOKENS]
    assert (free.argmax(dim=-1) + SINK_TOKENS - target).abs().max() <= 2  # pooled over 5 neighbours
    out = decode(get_codec("snapkv@0.5").encode(kv2))
    assert all(target in row for row in out.positions[0].tolist())


def test_snapkv_needs_window_queries() -> None:
    kv = make_kv(q_heads=0)
    with pytest.raises(ValueError, match="window_queries"):
        get_codec("snapkv@0.5").encode(kv)
    bad = KV.full(list(kv.keys), list(kv.values), torch.zeros(2, 4, 8, 32))  # wrong head_dim
    with pytest.raises(ValueError, match="window_queries"):
        get_codec("snapkv@0.5").encode(bad)


def test_dropping_again_respects_the_full_context_ratio(kv: KV) -> None:
    half = decode(get_codec("knorm@0.5").encode(kv))
    again = decode(get_codec("knorm@0.5").encode(half))
    assert torch.equal(again.positions, half.positions)
    quarter_from_half = decode(get_codec("knorm@0.75").encode(half))
    quarter = decode(get_codec("knorm@0.75").encode(kv))
    assert torch.equal(quarter_from_half.positions, quarter.positions)  # knorm scores per token
    requant = get_codec("int8").encode(half)
    assert decode(requant).kept_tokens == half.kept_tokens and "pos" in requant.tensors
    assert requant.nbytes == get_codec(combined_name("knorm@0.5", "int8")).predict_bytes(kv)


# ---------------------------------------------------------------- kvpress parity


def _kvpress_presses():
    """kvpress's press modules, imported without its package __init__ (which pulls in its
    pipeline's dependencies: datasets, cachetools, ...); only torch and transformers are needed."""
    import importlib
    import importlib.util
    import types

    if "kvpress" not in sys.modules:
        spec = importlib.util.find_spec("kvpress")
        if spec is None:
            missing("kvpress is not installed (make install puts it in .venv)")
        package = types.ModuleType("kvpress")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["kvpress"] = package
    return (
        importlib.import_module("kvpress.presses.knorm_press").KnormPress,
        importlib.import_module("kvpress.presses.keydiff_press").KeyDiffPress,
        importlib.import_module("kvpress.presses.snapkv_press").SnapKVPress,
    )


def _tiny_llama_layer(tokens: int, seed: int = 0):
    """A random Llama attention layer, its hidden states, post-RoPE keys and queries."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import (
        LlamaAttention,
        LlamaRotaryEmbedding,
        apply_rotary_pos_emb,
    )

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=96, num_attention_heads=6, num_key_value_heads=2, head_dim=16)
    attn, rope = LlamaAttention(config, layer_idx=0).eval(), LlamaRotaryEmbedding(config)
    hidden = torch.randn(1, tokens, 96)
    cos, sin = rope(hidden, torch.arange(tokens)[None])
    q = attn.q_proj(hidden).view(1, tokens, 6, 16).transpose(1, 2)
    k = attn.k_proj(hidden).view(1, tokens, 2, 16).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    return attn, hidden, (cos, sin), k.detach(), q.detach()


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.75])
def test_scorers_keep_the_same_tokens_as_kvpress(ratio: float) -> None:
    knorm_press, keydiff_press, snapkv_press = _kvpress_presses()
    tokens, window = 120, WINDOW_TOKENS
    attn, hidden, pos_emb, k, q = _tiny_llama_layer(tokens)
    v = torch.randn_like(k)
    kv = KV.full([k], [v], q[:, :, -window:].detach())  # window_queries [1 layer, 6, W, 16]
    presses = {
        "knorm": knorm_press(compression_ratio=ratio),
        "keydiff": keydiff_press(compression_ratio=ratio),
        "snapkv": snapkv_press(compression_ratio=ratio, window_size=window),
    }
    keep = kept_count(tokens, ratio)
    with torch.no_grad():
        for name, press in presses.items():
            theirs = press.score(attn, hidden, k, v, None, {"position_embeddings": pos_emb})
            ours = SCORERS[name](kv, 0)
            assert torch.allclose(ours, theirs.float(), rtol=1e-4, atol=1e-6), name
            # kvpress keeps the top-k of its scores; we also protect sinks and the last window
            protected = torch.zeros(tokens, dtype=torch.bool)
            protected[:SINK_TOKENS] = protected[tokens - WINDOW_TOKENS :] = True
            want = theirs.masked_fill(protected, float("inf")).topk(keep, dim=-1).indices.sort(-1).values
            got = decode(get_codec(f"{name}@{ratio}").encode(kv)).positions[0]
            assert torch.equal(got, want[0]), name


@pytest.mark.parametrize(("name", "tokens"), [("keydiff@0.25+int2", 100), ("int3-g64", 100), ("int2", 20)])
def test_low_bit_forms_survive_safetensors(name: str, tokens: int) -> None:
    """Packed codes and the residual window through safetensors; 20 tokens < the 32-token
    window: every row is residual and the code tensors are empty."""
    from safetensors.torch import load, save

    kv = make_kv(tokens=tokens, dtype=torch.bfloat16)
    stored = get_codec(name).encode(kv)
    assert stored.nbytes == get_codec(name).predict_bytes(kv)
    back = from_safetensors_dict(load(save(*to_safetensors_dict(stored))), stored.meta)
    a, b = decode(stored), decode(back)
    assert all(torch.equal(x, y) for x, y in zip((*a.keys, *a.values), (*b.keys, *b.values), strict=True))
    if tokens <= 32:
        assert stored.tensors["k.0.codes"].numel() == 0 and torch.equal(a.keys[0], kv.keys[0])
