"""layered.decode (PyramidKV layers, ThinK channels) against a decode written layer by layer.

The decode dequantizes every layer of a side in one call into one buffer, writes ThinK's
kept channels straight into their columns and the residual window behind the dequantized
rows. `_per_layer_decode` below is the decode it replaced, step by step per layer (each
layer dequantized on its own, the residual concatenated, the kept channels scattered into
zeros): the two must agree bit for bit, in both buffer layouts (one allocation a side, as
on CUDA; one a layer, as on the CPU). tests/kernels/test_layered_kernels.py runs the same
forms through the Triton kernels.
"""

from __future__ import annotations

import pytest
import torch
from test_codecs import make_kv

from evicctl.errors import CorruptDataError
from evicctl.manager.codecs import layered, quant
from evicctl.manager.codecs.codec import (
    Stored,
    from_safetensors_dict,
    get_codec,
    to_safetensors_dict,
)

# the menu's layered codecs, then forms that reach the other branches: a residual window
# (int2/int3 default one; -r40 is more than the last pyramid layer keeps, so that layer is
# all residual), ragged ThinK keys, unquantized ThinK, kept channels the kernels do not take
# (think@0.25 of 64 channels keeps 48)
MENU = ["think@0.5+int4", "snapkv@0.5+think@0.5+int4", "snapkv@0.5-pyramid", "snapkv@0.5-pyramid+int4"]
MORE = [
    "snapkv@0.5+think@0.5+int2",
    "knorm@0.5-pyramid+int3-r40",
    "snapkv@0.5-pyramid+think@0.5+int4",
    "keydiff@0.5-pyramid+think@0.5+int2",
    "think@0.5",
    "snapkv@0.5-pyramid+think@0.5",
    "think@0.25+int8",
]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _kv(dtype: torch.dtype):
    # 200 tokens over 4 layers: PyramidKV budgets (184, 128, 72, 20), all different
    return make_kv(layers=4, heads=2, tokens=200, dim=64, q_heads=4, dtype=dtype, seed=11)


def _per_layer_decode(stored: Stored) -> tuple[list, list, list]:
    """(keys, values, positions) of a layer-by-layer form, one layer at a time."""
    t, meta = stored.tensors, stored.meta
    layers, head_dim, dtype = int(meta["layers"]), int(meta["head_dim"]), getattr(torch, meta["dtype"])
    keys, values, positions = [], [], []
    for i in range(layers):
        k, v = (_layer(t, meta, side, i, dtype) for side in ("k", "v"))
        if "ch" in t:  # ThinK: the kept channels among zeros
            idx = t["ch"][i].long()[None, :, None, :].expand_as(k)
            k = torch.zeros(*k.shape[:3], head_dim, dtype=k.dtype).scatter_(3, idx, k)
        keys.append(k)
        values.append(v)
        positions.append(_positions(t, i, k.shape[1], k.shape[2]))
    return keys, values, positions


def _positions(t: dict, i: int, heads: int, kept: int) -> torch.Tensor:
    if "pos.0" in t:
        return t[f"pos.{i}"].long()
    return t["pos"][i].long() if "pos" in t else torch.arange(kept).expand(heads, kept)  # none dropped


def _layer(t: dict, meta: dict, side: str, i: int, dtype: torch.dtype) -> torch.Tensor:
    if "bits" not in meta:
        return t[f"{side}.{i}"]
    bits, group = int(meta["bits"]), int(meta["group" if side == "k" else "value_group"])
    codes = t[f"{side}.{i}.codes"]
    dequantize = quant.dequantize_keys_ref if side == "k" else quant.dequantize_values_ref
    rows = dequantize(codes, t[f"{side}.{i}.scale"], t[f"{side}.{i}.mn"], bits, group, dtype)
    residual = t.get(f"{side}.{i}.res")
    return rows if residual is None else torch.cat((rows, residual), dim=2)


def _assert_same(got, keys, values, positions) -> None:
    for a, b in zip((*got.keys, *got.values), (*keys, *values), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape and a.is_contiguous()
        assert torch.equal(a, b)
    for a, b in zip(got.positions, positions, strict=True):
        assert a.dtype == torch.int64 and torch.equal(a, b)


@pytest.fixture(params=[False, True], ids=["a-layer-each", "one-allocation"])
def one_allocation(request, monkeypatch) -> bool:
    """Both buffer layouts of the decode, whatever the device."""
    monkeypatch.setattr(layered, "one_allocation", lambda target: request.param)
    return request.param


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", MENU + MORE)
def test_decode_equals_the_layer_by_layer_decode(name: str, dtype: torch.dtype, one_allocation: bool) -> None:
    codec = get_codec(name)
    stored = codec.encode(_kv(dtype))
    assert layered.stored_by_layers(stored.tensors)
    got = codec.decode(stored)
    _assert_same(got, *_per_layer_decode(stored))
    assert got.layer_kept == codec.parts.layer_kept(200, 4)
    if "pyramid" in name:
        assert got.ragged and len(set(got.layer_kept)) == 4  # the ragged branch ran
    if "think" in name:
        pruned = (got.keys[0] == 0).all(dim=2)  # [1, H, D]: channels zero for every token
        assert int(pruned.sum()) == 2 * (64 - codec.parts.key_channels(64))


@pytest.mark.parametrize("name", ["snapkv@0.5-pyramid+int4", "snapkv@0.5+think@0.5+int4", "knorm@0.5-pyramid+int3-r40"])
def test_decode_of_a_reloaded_form_and_a_repeated_decode(name: str, one_allocation: bool) -> None:
    """A form read back from safetensors decodes alike, and decoding twice gives equal,
    separate tensors (the output buffers are the decode's own)."""
    codec = get_codec(name)
    stored = codec.encode(_kv(torch.bfloat16))
    reloaded = from_safetensors_dict(*to_safetensors_dict(stored))
    want = _per_layer_decode(stored)
    first, second = codec.decode(reloaded), codec.decode(reloaded)
    _assert_same(first, *want)
    _assert_same(second, *want)
    assert first.keys[0].data_ptr() != second.keys[0].data_ptr()


@pytest.mark.parametrize(
    "channels",
    [
        lambda ch: ch.index_fill(2, torch.tensor([0]), 64),  # past head_dim
        lambda ch: ch.index_fill(2, torch.tensor([0]), -1),
        lambda ch: ch.flip(2),  # descending: not as prune stores them
        lambda ch: ch.index_fill(2, torch.tensor([1]), 0).index_fill(2, torch.tensor([0]), 0),  # repeated
    ],
)
def test_damaged_kept_channels_are_refused(channels) -> None:
    """The decode writes at the kept channels (the kernels unchecked): a form whose indices
    are out of range, repeated or out of order is corrupt, not a write elsewhere."""
    codec = get_codec("think@0.5+int4")
    stored = codec.encode(_kv(torch.float32))
    damaged = Stored(stored.codec, {**stored.tensors, "ch": channels(stored.tensors["ch"])}, stored.meta)
    with pytest.raises(CorruptDataError, match="kept key channels"):
        codec.decode(damaged)


def test_meta_that_disagrees_with_the_tensors_is_refused() -> None:
    codec = get_codec("snapkv@0.5-pyramid+int4")
    stored = codec.encode(_kv(torch.float32))
    kept = stored.meta["layer_kept"].split(",")
    for meta in (
        {**stored.meta, "layer_kept": ",".join(kept[:-1])},  # a layer short
        {**stored.meta, "layer_kept": ",".join([kept[1], kept[0], *kept[2:]])},  # counts swapped
    ):
        with pytest.raises(CorruptDataError):
            codec.decode(Stored(stored.codec, stored.tensors, meta))


@pytest.mark.parametrize("name", ["knorm@0.5-pyramid+int3-r40", "snapkv@0.5+think@0.5+int2"])
def test_residual_rows_that_disagree_are_refused(name: str, one_allocation: bool) -> None:
    """A residual of one row must not be broadcast over the window, nor a shifted split
    between quantized and residual rows decode."""
    codec = get_codec(name)
    stored = codec.encode(_kv(torch.float32))
    one_row = {**stored.tensors, "k.1.res": stored.tensors["k.1.res"][:, :, :1]}
    with pytest.raises(CorruptDataError):
        codec.decode(Stored(stored.codec, one_row, stored.meta))
    shifted = {**stored.meta, "residual": str(int(stored.meta["residual"]) - 1)}
    with pytest.raises(CorruptDataError):
        codec.decode(Stored(stored.codec, stored.tensors, shifted))


def test_layout_reads_the_counts_from_the_meta() -> None:
    stored = get_codec("knorm@0.5-pyramid+int3-r40").encode(_kv(torch.float32))
    layout = layered.Layout.of(stored.meta)
    assert layout.kept == (184, 128, 72, 20) and not layout.uniform
    assert layout.quantized == (144, 88, 32, 0) and layout.residual == 40
    uniform = layered.Layout.of(get_codec("think@0.5+int4").encode(_kv(torch.float32)).meta)
    assert uniform.uniform and uniform.kept == (200,) * 4 and uniform.residual == 0
