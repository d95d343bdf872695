"""Token compaction kernels (gather, gather fused with quantization) against the references."""

from __future__ import annotations

import evicctl.kernels.gather as kg  # noqa: E402
import pytest
from _kernel_env import CUDA, DEVICE, assert_same, kv_like, torch

from evicctl.manager.codecs import quant as ref

pytestmark = pytest.mark.gpu

# (heads, tokens, kept, head_dim)
SHAPES = [(2, 1, 1, 64), (3, 77, 39, 64), (8, 100, 100, 128), (2, 65, 21, 32)]
if CUDA:
    SHAPES += [(8, 8191, 4095, 128)]


def kept_indices(heads: int, tokens: int, kept: int, gen) -> torch.Tensor:
    """[1, H, K] int64: each head its own ascending subset (as scorers.select makes)."""
    rows = [torch.randperm(tokens, generator=gen)[:kept].sort().values for _ in range(heads)]
    return torch.stack(rows)[None].to(DEVICE)


def reference_gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return x.gather(2, idx.unsqueeze(-1).expand(-1, -1, -1, x.shape[3]))


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float32))
@pytest.mark.parametrize("shape", SHAPES)
def test_gather_matches_torch(gen, dtype, shape):
    heads, tokens, kept, dim = shape
    x = kv_like((1, heads, tokens, dim), dtype, gen)
    idx = kept_indices(heads, tokens, kept, gen)
    assert_same(kg.gather_tokens(x, idx), reference_gather(x, idx))


def test_gather_layers_one_launch(gen):
    xs = [kv_like((1, 4, 50, 64), torch.bfloat16, gen) for _ in range(3)]
    idx = [kept_indices(4, 50, 17, gen) for _ in range(3)]
    got = kg.gather_tokens_layers(xs, torch.stack(idx))  # [L, 1, H, K] indices, stacked
    for i in range(3):
        assert_same(got[i], reference_gather(xs[i], idx[i]), f"layer {i}")


@pytest.mark.parametrize("bits", (8, 4))
@pytest.mark.parametrize("shape", SHAPES)
def test_gather_quantize_equals_quantize_of_gather(gen, bits, shape):
    heads, tokens, kept, dim = shape
    x = kv_like((1, heads, tokens, dim), torch.bfloat16, gen)
    idx = kept_indices(heads, tokens, kept, gen)
    gathered = reference_gather(x, idx).cpu()  # quantized on the CPU: see test_quant_kernels
    for fused, plain, name in (
        (kg.gather_quantize_keys, ref.quantize_keys_ref, "keys"),
        (kg.gather_quantize_values, ref.quantize_values_ref, "values"),
    ):
        for g, w, part in zip(fused(x, idx, bits, 32), plain(gathered, bits, 32), ("codes", "scale", "mn"), strict=True):
            assert_same(g, w, f"{name} {part}")


def test_gather_quantize_layers(gen):
    xs = [kv_like((1, 2, 70, 64), torch.float16, gen) for _ in range(2)]
    idx = [kept_indices(2, 70, 33, gen) for _ in range(2)]
    codes, scale, mn = kg.gather_quantize_keys(xs, idx, 4, 32)
    for i in range(2):
        for g, w in zip((codes[i], scale[i], mn[i]), ref.quantize_keys_ref(reference_gather(xs[i], idx[i]).cpu(), 4, 32), strict=True):
            assert_same(g, w, f"layer {i}")


def test_gather_checks_shapes(gen):
    x = kv_like((1, 2, 10, 64), torch.bfloat16, gen)
    with pytest.raises(ValueError, match="idx"):
        kg.gather_tokens(x, torch.zeros(1, 3, 4, dtype=torch.int64, device=DEVICE))
    with pytest.raises(ValueError, match="idx"):
        kg.gather_tokens(x, torch.zeros(1, 2, 4, dtype=torch.int32, device=DEVICE))
    with pytest.raises(ValueError, match="index layers"):
        kg.gather_tokens_layers([x, x], [torch.zeros(1, 2, 4, dtype=torch.int64, device=DEVICE)])
