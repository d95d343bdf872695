"""int3 / int2 Triton kernels (packed codes) against the torch reference, bit for bit.

Off the GPU these run under Triton's CPU interpreter (TRITON_INTERPRET=1): small shapes.
The int8/int4 paths are tested in test_quant_kernels.py; here the packing is the new part:
int2 four codes a byte, int3 a 2-bit plane then a 1-bit plane (evicctl.manager.codecs.quant)."""

from __future__ import annotations

import evicctl.kernels.gather as kg  # noqa: E402
import evicctl.kernels.quant as kq  # noqa: E402
import pytest
from _kernel_env import CUDA, DEVICE, assert_same, kv_like, rel_err, torch

from evicctl.manager.codecs import quant as ref

pytestmark = pytest.mark.gpu

LOW_BITS = (3, 2)
# (heads, tokens, head_dim, group): one token, a partial last key group, head_dim 8 (one int3
# byte triple a row), a wider group
SHAPES = [(2, 1, 64, 32), (3, 45, 64, 32), (2, 21, 8, 8), (2, 70, 32, 16), (1, 40, 128, 64)]
if CUDA:
    SHAPES += [(8, 4097, 128, 32), (5, 1531, 64, 32)]


@pytest.mark.parametrize("bits", LOW_BITS)
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float32))
@pytest.mark.parametrize("shape", SHAPES)
def test_keys_and_values_match_reference(gen, bits, dtype, shape):
    heads, tokens, dim, group = shape
    x = kv_like((1, heads, tokens, dim), dtype, gen)
    sides = (
        (kq.quantize_keys, kq.dequantize_keys, ref.quantize_keys_ref, ref.dequantize_keys_ref),
        (kq.quantize_values, kq.dequantize_values, ref.quantize_values_ref, ref.dequantize_values_ref),
    )
    for quantize, dequantize, quantize_ref, dequantize_ref in sides:
        got = quantize(x, bits, group)
        want = quantize_ref(x.cpu(), bits, group)
        assert got[0].shape[-1] == dim * bits // 8  # packed exactly
        for g, w, what in zip(got, want, ("codes", "scale", "mn"), strict=True):
            assert_same(g, w, f"{quantize.__name__} {what}")
        for out_dtype in (torch.bfloat16, torch.float32):
            assert_same(
                dequantize(*(w.to(DEVICE) for w in want), bits, group, out_dtype),
                dequantize_ref(*want, bits, group, out_dtype),
                f"{dequantize.__name__} {out_dtype}",
            )


@pytest.mark.parametrize("bits", LOW_BITS)
def test_every_code_survives_the_packing(bits):
    """Each code value in each lane position: pack (kernel) -> unpack (reference) and back."""
    dim = 16
    tokens = 2**bits * 2
    lane = torch.arange(tokens * dim) % (2**bits)
    codes = lane.view(1, 1, tokens, dim).to(torch.uint8)
    # scale 1, mn 0: dequantizing gives the codes themselves, through the kernel's unpack
    packed = ref.pack_codes(codes, bits)
    ones = torch.ones(1, 1, tokens, dim // 8, dtype=torch.float16)
    got = kq.dequantize_values(packed.to(DEVICE), ones.to(DEVICE), (ones * 0).to(DEVICE), bits, 8, torch.float32)
    assert torch.equal(got.cpu(), codes.float())
    assert torch.equal(ref.unpack_codes(packed, bits), codes)


@pytest.mark.parametrize("bits", LOW_BITS)
def test_round_trip_error_within_half_a_step(gen, bits):
    x = kv_like((1, 2, 96, 64), torch.float32, gen, outliers=False)
    codes, scale, mn = kq.quantize_values(x, bits, 32)
    y = kq.dequantize_values(codes, scale, mn, bits, 32, torch.float32).double()
    step = scale.double().repeat_interleave(32, dim=3)
    slack = 2.0**-10 * (x.double().abs() + 1) + (2**bits - 1) * 2.0**-11 * step
    assert bool(((y - x.double()).abs() <= step / 2 + slack).all())
    assert rel_err(y, x) < (0.3 if bits == 3 else 0.6)  # N(0,1) groups of 32: ~0.2 / ~0.45


@pytest.mark.parametrize("bits", LOW_BITS)
def test_layers_and_fused_gather_forms(gen, bits):
    xs = [kv_like((1, 2, 50, 64), torch.float16, gen) for _ in range(2)]
    idx = [torch.sort(torch.randperm(50, generator=gen)[:23]).values.expand(1, 2, 23).contiguous().to(DEVICE) for _ in xs]
    codes, scale, mn = kq.quantize_values_layers(xs, bits, 32)
    gcodes, gscale, gmn = kg.gather_quantize_keys(xs, idx, bits, 32)
    for i, x in enumerate(xs):
        for g, w in zip((codes[i], scale[i], mn[i]), ref.quantize_values_ref(x.cpu(), bits, 32), strict=True):
            assert_same(g, w, f"values layer {i}")
        gathered = ref.gather_tokens_ref(x.cpu(), idx[i].cpu())
        for g, w in zip((gcodes[i], gscale[i], gmn[i]), ref.quantize_keys_ref(gathered, bits, 32), strict=True):
            assert_same(g, w, f"gathered keys layer {i}")
    keys = kq.dequantize_keys_layers(gcodes, gscale, gmn, bits, 32, torch.float16)
    for i in range(2):
        assert_same(keys[i], ref.dequantize_keys_ref(gcodes[i].cpu(), gscale[i].cpu(), gmn[i].cpu(), bits, 32, torch.float16))


def test_dequantize_into_the_head_of_a_residual_buffer(gen):
    """The codec's residual layout: dequantize into the first rows of [L, 1, H, K, D]."""
    x = kv_like((1, 2, 40, 64), torch.float32, gen)
    parts = kq.quantize_keys(x, 2, 32)
    full = torch.full((2, 1, 2, 56, 64), float("nan"), device=DEVICE)
    kq.dequantize_keys_layers([parts[0]] * 2, [parts[1]] * 2, [parts[2]] * 2, 2, 32, torch.float32, out=full[:, :, :, :40])
    want = ref.dequantize_keys_ref(*(p.cpu() for p in parts), 2, 32, torch.float32)
    for i in range(2):
        assert_same(full[i, :, :, :40].contiguous(), want)
    assert bool(torch.isnan(full[:, :, :, 40:]).all())


def test_shapes_that_do_not_pack_are_refused(gen):
    x = kv_like((1, 2, 8, 4), torch.float32, gen)  # int3 needs 8 channels to fill whole bytes
    with pytest.raises(ValueError, match="whole bytes"):
        kq.quantize_keys(x, 3, 4)
