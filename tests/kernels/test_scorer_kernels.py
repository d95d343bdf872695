"""Scorer kernels (knorm, keydiff, snapkv) against evicctl.manager.codecs.scorers."""

from __future__ import annotations

import evicctl.kernels.scorers as ks  # noqa: E402
import pytest
from _kernel_env import CUDA, DEVICE, kv_like, rel_err, torch

from evicctl.manager.codecs import scorers as ref
from evicctl.manager.kv import KV

pytestmark = pytest.mark.gpu

# (kv heads, tokens, head_dim)
SHAPES = [(2, 1, 64), (3, 77, 64), (8, 100, 128), (1, 33, 16)]
if CUDA:
    SHAPES += [(8, 8191, 128), (8, 32768, 128)]


def full_kv(keys, window_queries=None) -> KV:
    return KV.full(keys, keys, window_queries=window_queries)


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float32))
@pytest.mark.parametrize("shape", SHAPES)
def test_knorm_and_keydiff(gen, dtype, shape):
    heads, tokens, dim = shape
    keys = [kv_like((1, heads, tokens, dim), dtype, gen) for _ in range(2)]
    kv = full_kv(keys)
    for layer in range(2):
        got, want = ks.knorm_scores(keys[layer]), ref.knorm(kv, layer)
        assert not torch.isnan(got).any() and rel_err(got, want) < 1e-6
        got, want = ks.keydiff_scores(keys[layer]), ref.keydiff(kv, layer)
        assert not torch.isnan(got).any() and rel_err(got, want) < 1e-5
    stacked = ks.knorm_scores_layers(keys)
    assert rel_err(stacked, torch.stack([ref.knorm(kv, i) for i in range(2)])) < 1e-6
    stacked = ks.keydiff_scores_layers(keys)
    assert rel_err(stacked, torch.stack([ref.keydiff(kv, i) for i in range(2)])) < 1e-5


def test_keydiff_of_a_dropped_kv_uses_its_kept_keys(gen):
    keys = [kv_like((1, 2, 60, 64), torch.float32, gen)]
    idx = torch.arange(0, 60, 2, device=DEVICE).expand(1, 2, 30)
    kept = keys[0][:, :, ::2]
    kv = KV((kept,), (kept,), idx[0][None].expand(1, 2, 30), 60)
    assert rel_err(ks.keydiff_scores(kept), ref.keydiff(kv, 0)) < 1e-5


# (kv heads, q heads, window, tokens, head_dim)
SNAP_SHAPES = [(2, 4, 16, 50, 64), (2, 6, 8, 133, 64), (1, 1, 70, 70, 16), (8, 32, 16, 300, 128), (2, 2, 5, 37, 32)]
if CUDA:
    SNAP_SHAPES += [(8, 32, 16, 8191, 128), (8, 32, 64, 4096, 128)]


@pytest.mark.parametrize("precision", ("native", "tf32x3"))
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16, torch.float32))
@pytest.mark.parametrize("shape", SNAP_SHAPES)
def test_snapkv(gen, monkeypatch, precision, dtype, shape):
    heads, q_heads, window, tokens, dim = shape
    if precision == "native" and (dtype == torch.float32 or not CUDA):
        pytest.skip("native tensor-core path: bf16/fp16 on CUDA (the interpreter's bf16 dot truncates)")
    monkeypatch.setattr(ks, "_FORCE_TF32", precision != "native")
    keys = [kv_like((1, heads, tokens, dim), dtype, gen)]
    wq = kv_like((1, q_heads, window, dim), dtype, gen)
    kv = full_kv(keys, wq)
    got = ks.snapkv_scores(keys[0], wq[0], kv.positions[0], kv.tokens)
    want = ref.snapkv(kv, 0)
    assert not torch.isnan(got).any()
    assert rel_err(got, want) < 1e-4, rel_err(got, want)


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float32))
def test_snapkv_every_layer_in_one_launch(gen, monkeypatch, dtype):
    monkeypatch.setattr(ks, "_FORCE_TF32", not CUDA or dtype == torch.float32)
    tokens = 3000 if CUDA else 150
    keys = [kv_like((1, 4, tokens, 64), dtype, gen) for _ in range(3)]
    wq = kv_like((3, 8, 16, 64), dtype, gen)
    kv = full_kv(keys, wq)
    got = ks.snapkv_scores_layers(keys, wq, kv.positions, tokens)
    assert got.shape == (3, 1, 4, tokens) and not torch.isnan(got).any()
    assert rel_err(got, torch.stack([ref.snapkv(kv, i) for i in range(3)])) < 1e-4


def test_snapkv_of_a_dropped_kv(gen):
    """Kept keys carry their original positions: the causal mask and the window use them."""
    tokens, kept = 200, 90
    full = kv_like((1, 2, tokens, 64), torch.float32, gen)
    rows = [torch.cat((torch.arange(4), torch.randperm(tokens - 20, generator=gen)[: kept - 20].sort().values + 4, torch.arange(tokens - 16, tokens))).sort().values for _ in range(2)]
    idx = torch.stack(rows).to(DEVICE)  # [H, K]
    keys = full.gather(2, idx[None, :, :, None].expand(1, 2, kept, 64))
    wq = kv_like((1, 4, 16, 64), torch.float32, gen)
    kv = KV((keys,), (keys,), idx[None], tokens, wq)
    got = ks.snapkv_scores(keys, wq[0], idx, tokens)
    assert rel_err(got, ref.snapkv(kv, 0)) < 1e-4


def test_selection_from_kernel_scores_matches(gen, monkeypatch):
    """What matters downstream: the kept set chosen from kernel scores is the reference's."""
    monkeypatch.setattr(ks, "_FORCE_TF32", not CUDA)  # the interpreter's bf16 dot truncates
    heads, tokens, dim = 8, 3000 if CUDA else 300, 128
    keys = [kv_like((1, heads, tokens, dim), torch.bfloat16, gen)]
    wq = kv_like((1, 4 * heads, 16, dim), torch.bfloat16, gen)
    kv = full_kv(keys, wq)
    keep = ref.kept_count(tokens, 0.5)
    pos = kv.positions[0]
    pairs = (
        (ks.knorm_scores(keys[0]), ref.knorm(kv, 0)),
        (ks.keydiff_scores(keys[0]), ref.keydiff(kv, 0)),
        (ks.snapkv_scores(keys[0], wq[0], pos, tokens), ref.snapkv(kv, 0)),
    )
    for got, want in pairs:
        a = ref.select(got, pos, tokens, keep)
        b = ref.select(want, pos, tokens, keep)
        agree = sum(len(set(a[0, h].tolist()) & set(b[0, h].tolist())) for h in range(heads)) / (heads * keep)
        assert agree > 0.995, agree


def test_snapkv_checks_shapes(gen):
    keys = kv_like((1, 2, 40, 64), torch.float32, gen)
    pos = torch.arange(40, device=DEVICE).expand(2, 40)
    with pytest.raises(ValueError, match="multiple"):
        ks.snapkv_scores(keys, kv_like((3, 8, 64), torch.float32, gen), pos, 40)
    with pytest.raises(ValueError, match="window"):
        ks.snapkv_scores(keys, kv_like((2, 41, 64), torch.float32, gen), pos, 40)
    with pytest.raises(ValueError, match="key_positions"):
        ks.snapkv_scores(keys, kv_like((2, 8, 64), torch.float32, gen), pos[:, :10], 40)
