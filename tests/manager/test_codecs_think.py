"""ThinK (think@c): kept key channels stored for real, parity with kvpress's ThinKPress, sizes,
composition with token dropping and quantization, and the partial order."""

from __future__ import annotations

import importlib

import pytest
import torch
from test_codecs import _kvpress_presses, make_kv

from evicctl.manager.codecs import names as cn
from evicctl.manager.codecs.budgets import kept_channels
from evicctl.manager.codecs.channels import channel_scores
from evicctl.manager.codecs.codec import decode, get_codec
from evicctl.manager.codecs.scorers import WINDOW_TOKENS
from evicctl.manager.kv import KV


def _think_press():
    _kvpress_presses()  # kvpress's package without its __init__ (and the skip when it is missing)
    return importlib.import_module("kvpress.presses.think_press").ThinKPress


def _llama_layer(tokens: int, head_dim: int, seed: int = 0):
    """A random Llama attention layer (6 query heads over 2 kv heads): its hidden states,
    rotary embedding, post-RoPE keys [1, 2, T, D], queries [1, 6, T, D] and random values."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import (
        LlamaAttention,
        LlamaRotaryEmbedding,
        apply_rotary_pos_emb,
    )

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=96, num_attention_heads=6, num_key_value_heads=2, head_dim=head_dim
    )
    attn, rope = LlamaAttention(config, layer_idx=0).eval(), LlamaRotaryEmbedding(config)
    hidden = torch.randn(1, tokens, 96)
    cos, sin = rope(hidden, torch.arange(tokens)[None])
    with torch.no_grad():
        q = attn.q_proj(hidden).view(1, tokens, 6, head_dim).transpose(1, 2)
        k = attn.k_proj(hidden).view(1, tokens, 2, head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
    return attn, hidden, (cos, sin), k, q, torch.randn_like(k)


def _kvpress_think(press, attn, hidden, pos_emb, keys, values) -> torch.Tensor:
    """kvpress's ThinK on `keys` (a copy: it zeroes channels in place): the zeroed keys."""
    with torch.no_grad():
        out, _ = press.compress(
            attn,
            hidden,
            keys.clone(),
            values,
            None,
            {"hidden_states": hidden, "position_embeddings": pos_emb},
        )
    return out


def _pruned(keys: torch.Tensor) -> torch.Tensor:
    """[H, D] bool: channels that are zero for every token."""
    return (keys[0] == 0).all(dim=1)


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_think_keeps_kvpress_channels_and_values(ratio: float, head_dim: int) -> None:
    """think@c decodes to exactly the keys ThinKPress(c, window_size=W) leaves: same pruned
    channels per head, the kept ones untouched, the pruned ones zero."""
    press = _think_press()(key_channel_compression_ratio=ratio, window_size=WINDOW_TOKENS)
    attn, hidden, pos_emb, k, q, v = _llama_layer(120, head_dim)
    # the window queries the engine captures are the ones kvpress recomputes
    theirs_q = press.compute_window_queries(attn, hidden, pos_emb)
    assert torch.allclose(theirs_q, q[:, :, -WINDOW_TOKENS:], atol=1e-6)
    want = _kvpress_think(press, attn, hidden, pos_emb, k, v)
    kv = KV.full([k], [v], q[0, None, :, -WINDOW_TOKENS:])  # window_queries [1 layer, 6, W, D]
    stored = get_codec(f"think@{ratio}").encode(kv)
    kept = head_dim - int(head_dim * ratio)
    assert stored.tensors["k.0"].shape == (1, 2, 120, kept) and stored.tensors["ch"].shape == (
        1,
        2,
        kept,
    )
    ours = decode(stored)
    assert torch.equal(ours.keys[0], want)
    assert int(_pruned(want).sum()) == 2 * (
        head_dim - kept
    )  # ThinK really pruned (the test can fail)
    assert torch.equal(ours.values[0], v)


def test_think_scores_are_kvpress_arithmetic() -> None:
    """mean_w(q^2) over the GQA group x mean_t(k^2), per (kv head, channel)."""
    _, _, _, k, q, _ = _llama_layer(50, 64)
    wq = q[0, None, :, -WINDOW_TOKENS:]  # [1, 6, W, D]
    q2 = (
        wq[0].pow(2).mean(dim=1).view(2, 3, 64).mean(dim=1)
    )  # [H, D]: query head h*3 + r reads kv head h
    want = q2 * k[0].pow(2).mean(dim=1)
    assert torch.allclose(channel_scores([k], wq)[0], want, rtol=1e-6)


def test_think_after_snapkv_scores_the_kept_tokens_as_kvpress_composes() -> None:
    """snapkv@0.5+think@0.5 = kvpress's ComposedPress([SnapKV, ThinK]) order: ThinK scores
    the keys SnapKV kept (given our kept rows, ThinKPress on them gives our keys)."""
    press = _think_press()(key_channel_compression_ratio=0.5, window_size=WINDOW_TOKENS)
    attn, hidden, pos_emb, k, q, v = _llama_layer(200, 64, seed=1)
    kv = KV.full([k], [v], q[0, None, :, -WINDOW_TOKENS:])
    ours = decode(get_codec("snapkv@0.5+think@0.5").encode(kv))
    rows = ours.positions[0][None, :, :, None].expand(-1, -1, -1, 64)  # [1, H, K, D]
    dropped_k, dropped_v = k.gather(2, rows), v.gather(2, rows)
    assert ours.kept_tokens == 100
    assert torch.equal(
        ours.keys[0], _kvpress_think(press, attn, hidden, pos_emb, dropped_k, dropped_v)
    )
    # channels chosen on the kept tokens differ from those chosen on all of them
    alone = decode(get_codec("think@0.5").encode(kv)).keys[0]
    assert not torch.equal(_pruned(alone), _pruned(ours.keys[0]))


@pytest.mark.parametrize("bits", [8, 4, 3, 2])
def test_think_then_quantize_keeps_the_same_channels(bits: int) -> None:
    """+int<bits> quantizes only the kept channels: the pruned ones come back exactly zero,
    the kept ones within the width's error of the unquantized ThinK keys."""
    kv = make_kv(layers=3, heads=2, tokens=150, dim=64, q_heads=6, seed=3)
    exact = get_codec("snapkv@0.25+think@0.5").encode(kv)
    stored = get_codec(f"snapkv@0.25+think@0.5+int{bits}").encode(kv)
    assert torch.equal(stored.tensors["ch"], exact.tensors["ch"]) and torch.equal(
        stored.tensors["pos"], exact.tensors["pos"]
    )
    assert stored.tensors["k.0.codes"].shape[-1] == 32 * bits // 8  # 32 of 64 channels, packed
    got, want = decode(stored), decode(exact)
    tol = {8: 0.1, 4: 1.0, 3: 1.5, 2: 3.0}[bits]
    for a, b in zip(got.keys, want.keys, strict=True):
        assert torch.equal(_pruned(a), _pruned(b)) and (a - b).abs().max() < tol
    for a, b in zip(got.values, want.values, strict=True):
        assert (a - b).abs().max() < tol


def test_think_stores_less_and_its_size_is_exact() -> None:
    """Stored bytes shrink by the pruned key channels (kvpress's zeroing saves nothing)."""
    kv = make_kv(layers=2, heads=3, tokens=300, dim=64, q_heads=6)
    size = {
        n: get_codec(n).encode(kv).nbytes
        for n in ("none", "think@0.5", "int4", "think@0.5+int4", "think@0.75+int4")
    }
    assert (
        size["think@0.75+int4"]
        < size["think@0.5+int4"]
        < size["int4"]
        < size["think@0.5"]
        < size["none"]
    )
    # half the key channels: ~3/4 of the KV (+ channel indices)
    assert 0.74 < size["think@0.5"] / size["none"] < 0.77
    for name, nbytes in size.items():
        assert nbytes == get_codec(name).predict_bytes(kv), name


def test_think_needs_window_queries() -> None:
    with pytest.raises(ValueError, match="window_queries"):
        get_codec("think@0.5").encode(make_kv(q_heads=0))


def test_harder_think_prunes_what_an_easier_one_pruned() -> None:
    """A decoded think copy's pruned channels are zeros, scored lowest: recompressing it at a
    harder ratio prunes them again (what names.derivable promises)."""
    kv = make_kv(layers=2, heads=3, tokens=120, dim=64, q_heads=6, seed=4)
    easier = decode(get_codec("think@0.25").encode(kv))
    harder = decode(get_codec("think@0.5+int4").encode(easier))
    assert (_pruned(easier.keys[0]) <= _pruned(harder.keys[0])).all()
    direct = get_codec("think@0.5+int4").encode(kv)
    assert get_codec("think@0.5+int4").encode(easier).nbytes == direct.nbytes


def test_kept_channel_counts() -> None:
    assert (
        kept_channels(64, 0.5) == 32
        and kept_channels(128, 0.75) == 32
        and kept_channels(64, 0.0) == 64
    )
    # rounded up to whole bytes for every width (8 channels): 64 - int(64 * 0.3) = 45 -> 48
    assert (
        kept_channels(64, 0.3) == 48
        and kept_channels(80, 0.25) == 64
        and kept_channels(4, 0.5) == 4
    )


def test_think_names_and_order() -> None:
    assert cn.validate_codec_name("snapkv@0.50+think@.5+int4") == "snapkv@0.5+think@0.5+int4"
    for bad in ("think@0.5+snapkv@0.5", "int4+think@0.5", "think@1", "think@0", "think"):
        with pytest.raises(cn.UnknownNameError):
            cn.parse_codec_name(bad)
    assert (
        cn.codec_family("think@0.5") == "drop" and cn.codec_family("think@0.5+int4") == "drop+quant"
    )
    assert cn.is_harder("think@0.5+int4", "int4") and cn.is_harder("think@0.75", "think@0.5")
    assert not cn.is_harder("int4", "think@0.5+int4") and not cn.is_harder("think@0.5", "int4")
    assert cn.derivable("think@0.25", "snapkv@0.5+think@0.5+int4") and cn.derivable(
        "snapkv@0.5+int4", "snapkv@0.5+think@0.5+int4"
    )
    assert not cn.derivable("think@0.5", "snapkv@0.5") and not cn.derivable(
        "think@0.5+int4", "int4"
    )
