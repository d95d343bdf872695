"""PyramidKV (<scorer>@r-pyramid): per-layer budgets as kvpress's PyramidKVPress computes
them, its kept sets, ragged KVs through the codecs, sizes, and the partial order."""

from __future__ import annotations

import importlib

import pytest
import torch
from test_codecs import _kvpress_presses, make_kv

from evicctl.manager.codecs import names as cn
from evicctl.manager.codecs.codec import (
    decode,
    from_safetensors_dict,
    get_codec,
    to_safetensors_dict,
)
from evicctl.manager.codecs.scorers import SINK_TOKENS, WINDOW_TOKENS
from evicctl.manager.kv import KV

FLOOR = SINK_TOKENS + WINDOW_TOKENS


def _pyramid_press():
    _kvpress_presses()  # kvpress's package without its __init__ (and the skip when it is missing)
    return importlib.import_module("kvpress.presses.pyramidkv_press").PyramidKVPress


def _llama_layers(layers: int, tokens: int, seed: int = 0):
    """Random Llama attention layers (6 query heads over 2 kv heads, head_dim 16) with their
    own hidden states: per layer (module, hidden, rotary embedding, post-RoPE keys, queries)."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import (
        LlamaAttention,
        LlamaRotaryEmbedding,
        apply_rotary_pos_emb,
    )

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=96,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=16,
        num_hidden_layers=layers,
    )
    rope = LlamaRotaryEmbedding(config)
    out = []
    for layer in range(layers):
        attn = LlamaAttention(config, layer_idx=layer).eval()
        hidden = torch.randn(1, tokens, 96)
        cos, sin = rope(hidden, torch.arange(tokens)[None])
        with torch.no_grad():
            q = attn.q_proj(hidden).view(1, tokens, 6, 16).transpose(1, 2)
            k = attn.k_proj(hidden).view(1, tokens, 2, 16).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
        out.append((attn, hidden, (cos, sin), k, q))
    return out


@pytest.mark.parametrize(
    ("tokens", "layers", "ratio"),
    [
        (700, 8, 0.5),
        (700, 8, 0.25),
        (1100, 30, 0.5),
        (1100, 30, 0.25),
        (2048, 30, 0.75),
        (4000, 24, 0.6),
    ],
)
def test_budgets_are_kvpress_budgets(tokens: int, layers: int, ratio: float) -> None:
    """Each layer keeps what PyramidKVPress(r, window_size=W).get_layer_budget says, except
    that no layer keeps fewer than the protected tokens; the pyramid really slopes."""
    press = _pyramid_press()(compression_ratio=ratio, window_size=WINDOW_TOKENS)
    config = type("Config", (), {"num_hidden_layers": layers})()
    theirs = [
        press.get_layer_budget(type("Module", (), {"config": config, "layer_idx": i})(), tokens)
        for i in range(layers)
    ]
    ours = cn.layer_budgets(tokens, layers, ratio)
    assert list(ours) == [max(n, FLOOR) for n in theirs]
    assert ours[0] > ours[-1] and list(ours) == sorted(ours, reverse=True)
    # the layers keep the uniform drop's tokens on average (rounding, the floor)
    assert abs(sum(ours) / layers - tokens * (1 - ratio)) < 1 + FLOOR / layers


def test_budgets_fall_back_to_uniform_where_the_pyramid_cannot_be_drawn() -> None:
    """kvpress falls back to SnapKV's count when the last layer would keep less than the
    window (ratio 0.75 of a 1k-token context); so does the codec, with kept_count's rounding."""
    press = _pyramid_press()(compression_ratio=0.75, window_size=WINDOW_TOKENS)
    config = type("Config", (), {"num_hidden_layers": 30})()
    theirs = {
        press.get_layer_budget(type("Module", (), {"config": config, "layer_idx": i})(), 1024)
        for i in range(30)
    }
    assert theirs == {256} and cn.layer_budgets(1024, 30, 0.75) == (cn.kept_count(1024, 0.75),) * 30


def test_pyramid_snapkv_keeps_kvpress_sets() -> None:
    """Per layer, the kept set is the top of PyramidKVPress's own scores at its own budget
    (plus the protected tokens every evicctl drop keeps), and kvpress's compress keeps all
    but at most the protected tokens of it."""
    tokens, layers, ratio = 700, 6, 0.5
    press = _pyramid_press()(compression_ratio=ratio, window_size=WINDOW_TOKENS)
    parts = _llama_layers(layers, tokens)
    keys = [k for _, _, _, k, _ in parts]
    values = [torch.randn_like(k) for k in keys]
    wq = torch.stack([q[0, :, -WINDOW_TOKENS:] for *_, q in parts])  # [L, 6, W, 16]
    out = decode(get_codec(f"snapkv@{ratio}-pyramid").encode(KV.full(keys, values, wq)))
    assert out.ragged and out.layer_kept == cn.layer_budgets(tokens, layers, ratio)
    protected = torch.zeros(tokens, dtype=torch.bool)
    protected[:SINK_TOKENS] = protected[tokens - WINDOW_TOKENS :] = True
    with torch.no_grad():
        for layer, (attn, hidden, pos_emb, k, _) in enumerate(parts):
            scores = press.score(
                attn, hidden, k, values[layer], None, {"position_embeddings": pos_emb}
            )  # [1, H, T]
            budget = press.get_layer_budget(attn, tokens)
            keep = max(budget, FLOOR)
            want = (
                scores.masked_fill(protected, float("inf"))
                .topk(keep, dim=-1)
                .indices.sort(-1)
                .values[0]
            )
            assert torch.equal(out.positions[layer], want), layer
            # kvpress's own compress: the same rows, but for protected tokens it did not keep
            kept, _ = press.compress(
                attn,
                hidden,
                k,
                values[layer],
                None,
                {"position_embeddings": pos_emb, "hidden_states": hidden},
            )
            assert kept.shape[2] == budget
            rows = (
                (kept[0, :, :, None, :] == k[0, :, None, :, :]).all(-1).float().argmax(-1)
            )  # [H, budget]
            for h in range(2):
                shared = torch.isin(rows[h], out.positions[layer][h]).sum().item()
                assert shared >= budget - SINK_TOKENS, (layer, h)


@pytest.mark.parametrize("scorer", ["knorm", "keydiff", "snapkv"])
@pytest.mark.parametrize("quant", ["", "+int4", "+int2", "+think@0.5+int3"])
def test_pyramid_modifies_every_scorer(scorer: str, quant: str) -> None:
    """Any scorer with -pyramid: each layer keeps its budget, chosen by the scorer (the same
    rows as that scorer's uniform drop at that layer's count), at the exact predicted size."""
    kv = make_kv(layers=5, heads=3, tokens=700, dim=64, q_heads=6, seed=2)
    name = f"{scorer}@0.5-pyramid{quant}"
    stored = get_codec(name).encode(kv)
    assert stored.nbytes == get_codec(name).predict_bytes(kv)
    assert stored.meta["layer_kept"] == ",".join(map(str, cn.layer_budgets(700, 5, 0.5)))
    out = decode(stored)
    assert out.layer_kept == cn.layer_budgets(700, 5, 0.5)
    if quant:  # the kept rows do not depend on what follows the drop
        assert all(
            torch.equal(a, b)
            for a, b in zip(
                out.positions,
                decode(get_codec(f"{scorer}@0.5-pyramid").encode(kv)).positions,
                strict=True,
            )
        )
        return
    for layer, budget in enumerate(out.layer_kept):
        ratio = 1 - (budget + 0.5) / 700  # kept_count(700, ratio) == budget
        assert cn.kept_count(700, ratio) == budget
        uniform = decode(get_codec(f"{scorer}@{ratio!r}").encode(kv))
        assert torch.equal(out.positions[layer], uniform.positions[layer]), layer
        rows = out.positions[layer][None, :, :, None].expand(-1, -1, -1, 64)
        assert torch.equal(out.keys[layer], kv.keys[layer].gather(2, rows))


def test_ragged_kv_survives_safetensors_and_recompression() -> None:
    """A pyramid form through safetensors, then recompressed harder (quantized; the same
    budgets): layers keep their counts and the size is the predicted one."""
    from safetensors.torch import load, save

    kv = make_kv(layers=4, heads=2, tokens=500, dim=64, q_heads=4)
    stored = get_codec("snapkv@0.5-pyramid").encode(kv)
    back = decode(from_safetensors_dict(load(save(*to_safetensors_dict(stored))), stored.meta))
    assert back.ragged and back.layer_kept == cn.layer_budgets(500, 4, 0.5)
    fresh = decode(stored)
    assert all(torch.equal(p, q) for p, q in zip(back.positions, fresh.positions, strict=True))
    assert all(
        torch.equal(a, b)
        for a, b in zip((*back.keys, *back.values), (*fresh.keys, *fresh.values), strict=True)
    )
    assert cn.derivable("snapkv@0.5-pyramid", "snapkv@0.5-pyramid+int4")
    again = get_codec("snapkv@0.5-pyramid+int4").encode(back)
    assert again.nbytes == get_codec("snapkv@0.5-pyramid+int4").predict_bytes(kv)
    assert decode(again).layer_kept == back.layer_kept
    moved = back.to("cpu")
    assert moved.ragged and moved.kept_tokens == sum(back.layer_kept) // 4


def test_ragged_kv_validates_its_layers() -> None:
    kv = make_kv(layers=2, heads=2, tokens=40, dim=16, q_heads=0)
    keys = (kv.keys[0], kv.keys[1][:, :, :30])
    values = (kv.values[0], kv.values[1][:, :, :30])
    ok = KV(keys, values, (torch.arange(40).expand(2, 40), torch.arange(30).expand(2, 30)), 40)
    assert ok.ragged and ok.layer_kept == (40, 30) and ok.kept_tokens == 35
    with pytest.raises(ValueError, match="shapes"):
        KV(keys, values, (torch.arange(40).expand(2, 40), torch.arange(20).expand(2, 20)), 40)
    with pytest.raises(ValueError, match="one tensor per layer"):
        KV(keys, values, (torch.arange(40).expand(2, 40),), 40)


def test_pyramid_names_and_order() -> None:
    assert cn.validate_codec_name("snapkv@.50-pyramid+int4") == "snapkv@0.5-pyramid+int4"
    for bad in ("snapkv-pyramid@0.5", "think@0.5-pyramid", "int4-pyramid", "snapkv@0.5+pyramid"):
        with pytest.raises(cn.UnknownNameError):
            cn.parse_codec_name(bad)
    assert cn.codec_family("snapkv@0.5-pyramid") == "drop"
    # the same total as the uniform drop: incomparable with it, both ways
    assert not cn.is_harder("snapkv@0.5-pyramid", "snapkv@0.5") and not cn.is_harder(
        "snapkv@0.5", "snapkv@0.5-pyramid"
    )
    assert not cn.derivable("snapkv@0.25", "snapkv@0.5-pyramid") and not cn.derivable(
        "snapkv@0.5-pyramid", "snapkv@0.75"
    )
    # another ratio can fall back to uniform budgets (more tokens in high layers): not harder
    assert not cn.is_harder("snapkv@0.75-pyramid", "snapkv@0.5-pyramid")
    assert cn.is_harder("snapkv@0.5-pyramid+int4", "snapkv@0.5-pyramid") and cn.is_harder(
        "snapkv@0.5-pyramid+int4", "int8"
    )
    assert cn.derivable("int4", "knorm@0.5-pyramid+int2") and cn.derivable(
        "think@0.5", "snapkv@0.5-pyramid+think@0.5+int4"
    )
    assert not cn.derivable("knorm@0.5-pyramid", "snapkv@0.5-pyramid+int4")


def test_pyramid_sizes_on_a_nominal_shape() -> None:
    """Without a shape (scaled_bytes), a pyramid's size is its uniform drop's, near enough."""
    flat = cn.scaled_bytes("snapkv@0.5+int4", 1024, 10**8)
    pyramid = cn.scaled_bytes("snapkv@0.5-pyramid+int4", 1024, 10**8)
    assert abs(pyramid / flat - 1) < 0.01


def test_cli_recompresses_to_the_new_codecs_and_shows_them(tmp_path, run_cli) -> None:
    """`evicctl recompress CTX --codec` to a pyramid then a pyramid+int4 copy (derivable), and
    from a fresh context to a ThinK codec, through a running manager; `evicctl show` prices them."""
    import json

    from evicctl.config import ManagerConfig, TierConfig
    from evicctl.manager.manager import Manager

    codecs = (
        "none",
        "int4",
        "snapkv@0.5",
        "snapkv@0.5-pyramid",
        "snapkv@0.5-pyramid+int4",
        "think@0.5+int4",
        "snapkv@0.5+think@0.5+int4",
    )
    config = ManagerConfig(
        db_path=tmp_path / "e.db", cache_dir=tmp_path / "cache", codecs=codecs, tick_s=0.02,
        tiers=(TierConfig("cpu", capacity_bytes=64 << 20), TierConfig("disk", capacity_bytes=256 << 20)),
    )  # fmt: skip
    kv = make_kv(layers=4, heads=2, tokens=700, dim=32, q_heads=4, seed=7)
    with Manager(config, probe=False) as m:
        for ctx in ("a", "b"):
            m.store(ctx, kv)
            for codec in codecs[1:]:
                m.record_profile(ctx, codec, 0.9, 0.01, 8, "teacher-forced")

        def recompress(ctx: str, codec: str) -> None:
            result = run_cli("recompress", ctx, "--codec", codec, "--db", config.db_path)
            assert result.exit_code == 0, (result.stdout, result.stderr)
            placement = m.placement(ctx)
            assert placement.codec == codec and placement.stored_bytes == get_codec(
                codec
            ).predict_bytes(kv)

        recompress("a", "snapkv@0.5-pyramid")
        recompress("a", "snapkv@0.5-pyramid+int4")
        hit = m.lookup("a")
        assert hit.kv.ragged and hit.kv.layer_kept == cn.layer_budgets(700, 4, 0.5)
        refused = run_cli(
            "recompress", "a", "--codec", "snapkv@0.5", "--db", config.db_path
        )  # tokens are gone
        assert refused.exit_code != 0 and len(refused.stderr.strip().splitlines()) == 1
        recompress("b", "think@0.5+int4")
        recompress("b", "snapkv@0.5+think@0.5+int4")
        shown = json.loads(run_cli("show", "a", "--db", config.db_path, "-o", "json").stdout)
        text = json.dumps(shown)
        assert all(codec in text for codec in codecs)
        assert run_cli("show", "b", "--db", config.db_path).exit_code == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(
    "name",
    [
        "snapkv@0.5-pyramid",
        "knorm@0.5-pyramid+int4",
        "think@0.5+int4",
        "snapkv@0.5+think@0.5+int2",
        "keydiff@0.25-pyramid+think@0.25+int3",
    ],
)
def test_cuda_layer_by_layer_forms_match_the_cpu(name: str) -> None:
    """The layer-by-layer path (torch, the kernels where shapes suit them) writes on CUDA what
    it writes on the CPU, and decodes a CPU-held form onto the GPU."""
    cpu = make_kv(layers=4, heads=4, tokens=700, dim=128, q_heads=8, dtype=torch.bfloat16, seed=5)
    codec = get_codec(name)
    want, got = codec.encode(cpu), codec.encode(cpu.to("cuda"))
    assert set(got.tensors) == set(want.tensors) and got.meta == want.meta
    assert all(t.is_cuda for t in got.tensors.values())
    chosen = [k for k in want.tensors if k == "ch" or k.startswith("pos")]
    if not all(torch.equal(got.tensors[k].cpu(), want.tensors[k]) for k in chosen):
        # scores agree to fp32 rounding: a near-tie at a cut may differ
        for k in chosen:
            a, b = got.tensors[k].cpu().flatten(0, -2), want.tensors[k].flatten(0, -2)
            shared = sum(int(torch.isin(x, y).sum()) for x, y in zip(a, b, strict=True))
            assert shared / b.numel() > 0.97, k
        return
    for key, t in want.tensors.items():
        assert torch.equal(got.tensors[key].cpu(), t), key
    ref = codec.decode(want)
    for back in (codec.decode(got), codec.decode(want, device="cuda")):
        assert back.keys[0].is_cuda and back.layer_kept == ref.layer_kept
        for a, b in zip((*back.keys, *back.values), (*ref.keys, *ref.values), strict=True):
            assert torch.equal(a.cpu(), b)
