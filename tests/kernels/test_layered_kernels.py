"""The dequantize kernels on layer-by-layer forms: ragged layers (PyramidKV: a token count per
layer) and ThinK's kept key channels, one launch a side, against the torch reference; and
layered.decode through the kernels against the same decode on the CPU's torch reference."""

from __future__ import annotations

import sys
from pathlib import Path

import evicctl.kernels as kernels
import evicctl.kernels.quant as kq
import pytest
from _kernel_env import CUDA, DEVICE, INTERPRET, assert_same, kv_like, torch

from evicctl.manager.codecs import channels as ch
from evicctl.manager.codecs import layered
from evicctl.manager.codecs import quant as ref
from evicctl.manager.codecs.codec import Stored, get_codec
from evicctl.manager.kv import KV

pytestmark = pytest.mark.gpu

HEADS, DIM, GROUP = 2, 64, 32
ROWS = (45, 7, 64, 0, 33)  # a partial key group, a layer under one group, an empty layer


def _quantized(side: str, rows, dim: int, bits: int, gen):
    """Per layer (codes, scale, mn) of random [1, H, T_l, dim] tensors (the reference's bytes)."""
    quantize = ref.quantize_keys_ref if side == "keys" else ref.quantize_values_ref
    return [quantize(kv_like((1, HEADS, n, dim), torch.float32, gen), bits, GROUP) for n in rows]


def _on_device(parts):
    return [[p[i].to(DEVICE) for p in parts] for i in range(3)]


def _flat_out(rows, width: int, dtype=torch.float32):
    """NaN-filled contiguous [1, H, T_l, width] layers cut from one allocation (as the decode's)."""
    flat = torch.full((HEADS * width * sum(rows),), float("nan"), dtype=dtype, device=DEVICE)
    return [x.view(1, HEADS, n, width) for x, n in zip(flat.split([HEADS * n * width for n in rows]), rows, strict=True)]


def _kept_channels(layers: int, keep: int, gen) -> torch.Tensor:
    """[L, H, keep] int16 ascending channel indices of DIM."""
    idx = [torch.randperm(DIM, generator=gen)[:keep].sort().values for _ in range(layers * HEADS)]
    return torch.stack(idx).view(layers, HEADS, keep).to(torch.int16)


@pytest.mark.parametrize("bits", (8, 4, 3, 2))
@pytest.mark.parametrize("side", ("keys", "values"))
def test_ragged_layers_in_one_launch(gen, side, bits):
    """Layers of different token counts (and one of none) into NaN-poisoned outputs: every
    row written, each layer the reference's."""
    parts = _quantized(side, ROWS, DIM, bits, gen)
    out = _flat_out(ROWS, DIM)
    dequantize = kq.dequantize_keys_layers if side == "keys" else kq.dequantize_values_layers
    assert dequantize(*_on_device(parts), bits, GROUP, torch.float32, out=out) is out
    one = ref.dequantize_keys_ref if side == "keys" else ref.dequantize_values_ref
    for layer, (got, p) in enumerate(zip(out, parts, strict=True)):
        assert_same(got, one(*p, bits, GROUP, torch.float32), f"layer {layer}")


@pytest.mark.parametrize("side", ("keys", "values"))
def test_ragged_rows_ahead_of_a_residual_window(gen, side):
    """out = the first rows of each layer (the residual's rows behind them stay untouched)."""
    residual = 5
    parts = _quantized(side, ROWS, DIM, 4, gen)
    layers = _flat_out([n + residual for n in ROWS], DIM)
    dequantize = kq.dequantize_keys_layers if side == "keys" else kq.dequantize_values_layers
    dequantize(*_on_device(parts), 4, GROUP, torch.float32, out=[x[:, :, :n] for x, n in zip(layers, ROWS, strict=True)])
    one = ref.dequantize_keys_ref if side == "keys" else ref.dequantize_values_ref
    for x, n, p in zip(layers, ROWS, parts, strict=True):
        assert_same(x[:, :, :n].contiguous(), one(*p, 4, GROUP, torch.float32))
        assert bool(torch.isnan(x[:, :, n:]).all())


@pytest.mark.parametrize("bits", (8, 4, 2))
@pytest.mark.parametrize("rows", [(40, 40, 40), ROWS], ids=["uniform", "ragged"])
def test_kept_channels_go_to_their_columns_among_zeros(gen, bits, rows):
    """ThinK keys: codes of C channels -> rows of DIM, the kept channels at their columns,
    zeros in the others (written by the kernel: the output starts as NaN)."""
    keep = 32
    parts = _quantized("keys", rows, keep, bits, gen)
    idx = _kept_channels(len(rows), keep, gen)
    out = _flat_out(rows, DIM)
    kq.dequantize_keys_layers(*_on_device(parts), bits, GROUP, torch.float32, out=out, channels=idx.to(DEVICE))
    for layer, (got, p) in enumerate(zip(out, parts, strict=True)):
        want = ch.restore(ref.dequantize_keys_ref(*p, bits, GROUP, torch.float32), idx[layer], DIM)
        assert_same(got, want, f"layer {layer}")
    # the column map built beforehand (as a decode plan keeps it) writes the same rows
    columns = kq.channel_columns(idx.to(DEVICE), DIM)
    again = _flat_out(rows, DIM)
    kq.dequantize_keys_layers(*_on_device(parts), bits, GROUP, torch.float32, out=again, columns=columns)
    for got, want in zip(again, out, strict=True):
        assert_same(got, want.cpu())
    if rows[0] == rows[1]:  # a stacked output takes them too
        stacked = torch.full((len(rows), 1, HEADS, rows[0], DIM), float("nan"), device=DEVICE)
        kq.dequantize_keys_layers(*_on_device(parts), bits, GROUP, torch.float32, out=stacked, channels=idx.to(DEVICE))
        assert_same(stacked, torch.stack([o.cpu() for o in out]))


def test_channel_columns_map_each_column_to_its_kept_channel():
    """channel_columns: column c of a full row -> the position of channel c among the kept
    ones, -1 where it was pruned (the key kernel writes 0 there)."""
    idx = torch.tensor([[[1, 4, 6], [0, 2, 7]]], dtype=torch.int16)
    got = kq.channel_columns(idx, 8)
    assert got.dtype == torch.int32
    assert got.tolist() == [[[-1, 0, -1, -1, 1, -1, 2, -1], [0, -1, 1, -1, -1, -1, -1, 2]]]


def test_layered_arguments_are_checked(gen):
    parts = _on_device(_quantized("keys", ROWS, DIM, 4, gen))
    with pytest.raises(ValueError, match="ragged layers need out"):
        kq.dequantize_keys_layers(*parts, 4, GROUP, torch.float32)
    with pytest.raises(ValueError, match="rows"):
        kq.dequantize_keys_layers(*parts, 4, GROUP, torch.float32, out=_flat_out([*ROWS[:-1], 34], DIM))
    with pytest.raises(ValueError, match="ragged codes must be contiguous"):
        # the first layer's codes contiguous, the others rows of wider heads
        strided = [torch.zeros(1, HEADS, n + 3, DIM // 2, dtype=torch.uint8, device=DEVICE)[:, :, :n] for n in ROWS[1:]]
        kq.dequantize_keys_layers([parts[0][0], *strided], *parts[1:], 4, GROUP, torch.float32, out=_flat_out(ROWS, DIM))
    uniform = _on_device(_quantized("keys", (40, 40), 32, 4, gen))
    out = _flat_out((40, 40), DIM)
    idx = _kept_channels(2, 32, gen).to(DEVICE)
    with pytest.raises(ValueError, match="channels must be"):
        kq.dequantize_keys_layers(*uniform, 4, GROUP, torch.float32, out=out, channels=idx[:, :, :16])
    with pytest.raises(ValueError, match="channels need out"):
        kq.dequantize_keys_layers(*uniform, 4, GROUP, torch.float32, channels=idx)
    with pytest.raises(ValueError, match="not both"):
        kq.dequantize_keys_layers(*uniform, 4, GROUP, torch.float32, out=out, channels=idx, columns=kq.channel_columns(idx, DIM))
    with pytest.raises(ValueError, match="columns must be"):
        kq.dequantize_keys_layers(*uniform, 4, GROUP, torch.float32, out=out, columns=kq.channel_columns(idx, DIM).long())
    with pytest.raises(ValueError, match="power of two"):
        kq.dequantize_keys_layers(*uniform, 4, GROUP, torch.float32, out=[x[..., :48] for x in out], channels=idx)


# ---------------------------------------------------------------- the codec path

CODECS = [
    "think@0.5+int4",
    "snapkv@0.5+think@0.5+int4",
    "snapkv@0.5-pyramid+int4",
    "snapkv@0.5-pyramid",
    "knorm@0.5-pyramid+int3-r40",
    "snapkv@0.5-pyramid+think@0.5+int2",
]


def _through_kernels(monkeypatch) -> list[str]:
    """Route the codecs' CPU tensors to the kernels under the interpreter (on CUDA they go
    there anyway), and count the launches: a layered decode makes one a side, and never
    falls back to a layer at a time."""
    calls: list[str] = []
    for name in ("dequantize_keys_layers", "dequantize_values_layers"):
        real = getattr(kq, name)
        monkeypatch.setattr(kq, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))

    def per_layer(*args, **kwargs):
        raise AssertionError("a layer at a time")

    monkeypatch.setattr(ref, "dequantize_keys", per_layer)
    monkeypatch.setattr(ref, "dequantize_values", per_layer)
    if INTERPRET and not CUDA:
        monkeypatch.setattr(ref, "kernels_for", lambda x: kernels)
    return calls


@pytest.mark.parametrize("one_allocation", [True, False], ids=["one-allocation", "a-layer-each"])
@pytest.mark.parametrize("name", CODECS)
def test_decode_through_the_kernels_equals_the_reference(name, one_allocation, monkeypatch):
    """Every quantized layer of a side in one launch, bit for bit the CPU reference's
    decode, on a first decode (the plan built) and a repeated one (the plan reused)."""
    codec = get_codec(name)
    stored = codec.encode(_kv())
    want = _cpu_decode(codec, stored)
    calls = _through_kernels(monkeypatch)
    monkeypatch.setattr(layered, "one_allocation", lambda target: one_allocation)
    on_device = Stored(stored.codec, {k: t.to(DEVICE) for k, t in stored.tensors.items()}, stored.meta)
    for attempt in range(2):
        got = codec.decode(on_device)
        assert calls == (["dequantize_keys_layers", "dequantize_values_layers"] * (attempt + 1) if codec.bits else [])
        for a, b in zip((*got.keys, *got.values), (*want.keys, *want.values), strict=True):
            assert a.is_contiguous() and a.device.type == torch.device(DEVICE).type
            assert_same(a, b, name)
        for a, b in zip(got.positions, want.positions, strict=True):
            assert torch.equal(a.cpu(), b)


@pytest.mark.skipif(not CUDA, reason="a host-held form decoded onto the GPU needs CUDA")
@pytest.mark.parametrize("name", CODECS)
def test_a_host_held_form_decodes_onto_the_gpu(name):
    cpu = _kv()
    codec = get_codec(name)
    stored = codec.encode(cpu)
    want = _cpu_decode(codec, stored)
    pinned = Stored(stored.codec, {k: t.pin_memory() for k, t in stored.tensors.items()}, stored.meta)
    for form in (stored, pinned):
        got = codec.decode(form, device="cuda")
        for a, b in zip((*got.keys, *got.values, *got.positions), (*want.keys, *want.values, *want.positions), strict=True):
            assert a.is_cuda and torch.equal(a.cpu(), b)


def _kv() -> KV:
    """fp32: the interpreter rounds bf16 by truncation (conftest), so exact checks use fp32."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "manager"))
    from test_codecs import make_kv

    return make_kv(layers=4, heads=HEADS, tokens=200, dim=DIM, q_heads=4, seed=2)


def _cpu_decode(codec, stored):
    """The torch reference's decode of a CPU-held form (the kernels out of the way)."""
    return codec.decode(Stored(stored.codec, dict(stored.tensors), stored.meta))


# ---------------------------------------------------------------- the decode bench's kernel timing


@pytest.mark.parametrize("name", ["snapkv@0.5-pyramid+int4", "think@0.5+int4", "int4"])
def test_the_decode_bench_times_the_kernels_of_layered_forms(name, monkeypatch):
    """benchmarks/gpu_decode_bench.py's kernels-only timing takes ragged layers and ThinK
    keys (one launch a side, no fallback) and counts the bytes those launches move."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import gpu_decode_bench as bench

    monkeypatch.setattr(bench, "DEVICE", DEVICE)
    monkeypatch.setattr(bench, "DTYPE", torch.float32)
    monkeypatch.setattr(bench, "time_device_s", lambda fn: fn() or 1.0)
    codec = get_codec(name)
    stored = codec.encode(_kv())
    on_device = Stored(stored.codec, {k: t.to(DEVICE) for k, t in stored.tensors.items()}, stored.meta)
    seconds, moved = bench.kernel_only_s(on_device, codec)
    read = sum(t.nbytes for k, t in stored.tensors.items() if k.endswith((".codes", ".scale", ".mn")))
    kept = codec.parts.layer_kept(200, 4)
    written = sum(kept) * HEADS * 2 * DIM * 4  # float32 keys and values, ThinK's keys whole rows
    assert seconds == 1.0 and moved == read + written
