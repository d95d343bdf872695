"""Triton quantize/dequantize kernels against the torch reference (evicctl.manager.codecs.quant).

The reference runs on the CPU: there ``(mx - mn) / (2**bits - 1)`` is an IEEE division, as
the format says, while PyTorch on CUDA multiplies by the reciprocal of a Python-scalar
divisor, which moves a scale by one fp16 step in rare groups. The kernels divide exactly,
so a context quantizes to the same bytes on either device."""

from __future__ import annotations

import evicctl.kernels.quant as kq  # noqa: E402
import pytest
from _kernel_env import CUDA, DEVICE, assert_same, kv_like, rel_err, torch

from evicctl.manager.codecs import quant as ref

pytestmark = pytest.mark.gpu

DTYPES = (torch.bfloat16, torch.float16, torch.float32)
# (heads, tokens, head_dim, group): odd token counts, a partial last key group, one token
SHAPES = [(8, 1, 128, 32), (3, 33, 64, 32), (2, 77, 32, 16), (4, 100, 128, 64)]
if CUDA:
    SHAPES += [(8, 4097, 128, 32), (5, 1531, 64, 32)]


@pytest.mark.parametrize("bits", (8, 4))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_keys_match_reference(gen, bits, dtype, shape):
    heads, tokens, dim, group = shape
    k = kv_like((1, heads, tokens, dim), dtype, gen)
    got = kq.quantize_keys(k, bits, group)
    want = ref.quantize_keys_ref(k.cpu(), bits, group)
    for g, w, what in zip(got, want, ("codes", "scale", "mn"), strict=True):
        assert_same(g, w, what)
    # dequantize from the reference's codes into every output dtype
    for out_dtype in DTYPES:
        assert_same(
            kq.dequantize_keys(*(w.to(DEVICE) for w in want), bits, group, out_dtype),
            ref.dequantize_keys_ref(*want, bits, group, out_dtype),
            f"dequantized {out_dtype}",
        )


@pytest.mark.parametrize("bits", (8, 4))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_values_match_reference(gen, bits, dtype, shape):
    heads, tokens, dim, group = shape
    v = kv_like((1, heads, tokens, dim), dtype, gen, outliers=False)
    got = kq.quantize_values(v, bits, group)
    want = ref.quantize_values_ref(v.cpu(), bits, group)
    for g, w, what in zip(got, want, ("codes", "scale", "mn"), strict=True):
        assert_same(g, w, what)
    for out_dtype in DTYPES:
        assert_same(
            kq.dequantize_values(*(w.to(DEVICE) for w in want), bits, group, out_dtype),
            ref.dequantize_values_ref(*want, bits, group, out_dtype),
            f"dequantized {out_dtype}",
        )


@pytest.mark.parametrize("side", ("keys", "values"))
@pytest.mark.parametrize("bits", (8, 4))
def test_round_trip_error_within_half_a_step(gen, side, bits):
    """|x - dequant(quant(x))| <= scale/2 (+ fp16 rounding of mn): the function is right, not
    only equal to the reference."""
    x = kv_like((1, 4, 257, 128), torch.float32, gen)
    quantize = kq.quantize_keys if side == "keys" else kq.quantize_values
    dequantize = kq.dequantize_keys if side == "keys" else kq.dequantize_values
    codes, scale, mn = quantize(x, bits, 32)
    y = dequantize(codes, scale, mn, bits, 32, torch.float32).double()
    if side == "keys":
        step = scale.double().repeat_interleave(32, dim=2)[:, :, : x.shape[2]]
    else:
        step = scale.double().repeat_interleave(32, dim=3)
    # fp16 rounding: of mn (relative 2**-11), and of scale, which clamps the group's top
    # element by up to (2**bits - 1) * scale * 2**-11
    slack = 2.0**-10 * (x.double().abs() + 1) + (2**bits - 1) * 2.0**-11 * step
    assert bool(((y - x.double()).abs() <= step / 2 + slack).all())
    assert rel_err(y, x) < (0.01 if bits == 8 else 0.15)


@pytest.mark.parametrize("bits", (8, 4))
def test_layers_forms_equal_the_per_layer_calls(gen, bits):
    separate = [kv_like((1, 4, 45, 64), torch.bfloat16, gen) for _ in range(3)]  # separate allocations
    stacked = torch.stack(separate)  # [L, 1, H, T, D]
    for layers in (separate, stacked):
        codes, scale, mn = kq.quantize_keys_layers(layers, bits, 32)
        vcodes, vscale, vmn = kq.quantize_values_layers(layers, bits, 32)
        for i, x in enumerate(separate):
            for g, w in zip((codes[i], scale[i], mn[i]), ref.quantize_keys_ref(x.cpu(), bits, 32), strict=True):
                assert_same(g, w, f"keys layer {i}")
            for g, w in zip((vcodes[i], vscale[i], vmn[i]), ref.quantize_values_ref(x.cpu(), bits, 32), strict=True):
                assert_same(g, w, f"values layer {i}")
        keys = kq.dequantize_keys_layers(list(codes), list(scale), list(mn), bits, 32, torch.bfloat16)
        values = kq.dequantize_values_layers(vcodes, vscale, vmn, bits, 32, torch.bfloat16)
        for i in range(3):
            assert_same(keys[i], ref.dequantize_keys_ref(codes[i], scale[i], mn[i], bits, 32, torch.bfloat16))
            assert_same(values[i], ref.dequantize_values_ref(vcodes[i], vscale[i], vmn[i], bits, 32, torch.bfloat16))


@pytest.mark.parametrize("side", ("keys", "values"))
def test_dequantize_writes_only_its_slice_of_a_cache(gen, side):
    """out= a strided slice of a bigger NaN-filled buffer: the slice is written, nothing else."""
    x = kv_like((1, 4, 50, 64), torch.float32, gen)
    quantize = kq.quantize_keys if side == "keys" else kq.quantize_values
    dequantize = kq.dequantize_keys if side == "keys" else kq.dequantize_values
    parts = quantize(x, 4, 32)
    cache = torch.full((1, 4, 80, 64), float("nan"), device=DEVICE)
    got = dequantize(*parts, 4, 32, torch.float32, out=cache[:, :, 10:60])
    want = (ref.dequantize_keys_ref if side == "keys" else ref.dequantize_values_ref)(*parts, 4, 32, torch.float32)
    assert got.data_ptr() == cache[:, :, 10:60].data_ptr()
    assert_same(cache[:, :, 10:60].contiguous(), want, "slice")
    assert bool(torch.isnan(cache[:, :, :10]).all() and torch.isnan(cache[:, :, 60:]).all())


def test_quantize_into_poisoned_out(gen):
    k = kv_like((1, 2, 40, 64), torch.bfloat16, gen)
    want = [w.to(DEVICE) for w in ref.quantize_keys_ref(k.cpu(), 8, 32)]
    for poison in (0x00, 0xFF):
        out = (
            torch.full(want[0].shape, poison, dtype=torch.uint8, device=DEVICE),
            torch.full(want[1].shape, float("nan"), dtype=torch.float16, device=DEVICE),
            torch.full(want[2].shape, float("nan"), dtype=torch.float16, device=DEVICE),
        )
        got = kq.quantize_keys(k, 8, 32, out=out)
        assert all(g is o for g, o in zip(got, out, strict=True))
        for g, w in zip(out, want, strict=True):
            assert_same(g, w, f"poison {poison}")


@pytest.mark.skipif(not CUDA, reason="pinned host memory needs CUDA")
@pytest.mark.parametrize("bits", (8, 4))
def test_dequantize_reads_pinned_host_codes(gen, bits):
    """The fused load path: codes in pinned host memory, output on the GPU."""
    k = kv_like((1, 8, 300, 128), torch.bfloat16, gen)
    parts = kq.quantize_keys(k, bits, 32)
    host = [p.cpu().pin_memory() for p in parts]
    got = kq.dequantize_keys(*host, bits, 32, torch.bfloat16, device="cuda")
    assert got.is_cuda
    assert_same(got, ref.dequantize_keys_ref(*parts, bits, 32, torch.bfloat16))
    vparts = kq.quantize_values(k, bits, 32)
    vhost = [p.cpu().pin_memory() for p in vparts]
    got = kq.dequantize_values_layers([vhost[0]], [vhost[1]], [vhost[2]], bits, 32, torch.bfloat16, device="cuda")[0]
    assert_same(got, ref.dequantize_values_ref(*vparts, bits, 32, torch.bfloat16))


def test_empty_context(gen):
    k = kv_like((1, 2, 0, 64), torch.bfloat16, gen)
    codes, scale, mn = kq.quantize_keys(k, 8, 32)
    assert codes.shape == (1, 2, 0, 64) and scale.shape == (1, 2, 0, 64)
    assert kq.dequantize_keys(codes, scale, mn, 8, 32, torch.bfloat16).shape == (1, 2, 0, 64)


def test_bad_arguments_raise(gen):
    k = kv_like((1, 2, 40, 64), torch.bfloat16, gen)
    with pytest.raises(ValueError, match="bits"):
        kq.quantize_keys(k, 5, 32)
    with pytest.raises(ValueError, match="group"):
        kq.quantize_keys(k, 8, 24)
    with pytest.raises(ValueError, match="multiple"):
        kq.quantize_values(k, 8, 128)
    with pytest.raises(ValueError, match=r"\[B, H, T, D\]"):
        kq.quantize_keys(k[0], 8, 32)
    codes, scale, mn = kq.quantize_keys(k, 8, 32)
    with pytest.raises(ValueError, match="scale"):
        kq.dequantize_keys(codes, scale[:, :, :1], mn, 8, 32, torch.bfloat16)
    with pytest.raises(ValueError, match="dtype"):
        kq.dequantize_keys(codes, scale, mn, 8, 32, torch.int32)
    with pytest.raises(ValueError, match="out"):
        kq.dequantize_keys(codes, scale, mn, 8, 32, torch.bfloat16, out=torch.empty(1, 2, 41, 64, device=DEVICE))


def test_reference_entry_points_use_the_kernels_on_cuda(gen):
    """evicctl.manager.codecs.quant's public functions give the kernels' bytes for CUDA tensors."""
    if not CUDA:
        pytest.skip("the reference dispatches only for CUDA tensors")
    k = kv_like((1, 2, 40, 64), torch.bfloat16, gen)
    for g, w in zip(ref.quantize_keys(k, 4), kq.quantize_keys(k, 4), strict=True):
        assert g.is_cuda
        assert_same(g, w)
    parts = [kq.quantize_values(kv_like((1, 2, 40, 64), torch.bfloat16, gen), 8) for _ in range(3)]
    host = [[p.cpu().pin_memory() for p in layer] for layer in parts]
    got = ref.dequantize_layers("values", *([h[i] for h in host] for i in range(3)), 8, 32, torch.bfloat16, "cuda")
    for layer, g in zip(parts, got, strict=True):
        assert g.is_cuda
        assert_same(g, ref.dequantize_values_ref(*(p.cpu() for p in layer), 8, 32, torch.bfloat16))
