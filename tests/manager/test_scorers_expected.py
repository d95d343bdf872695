"""The ``expected`` scorer: Expected Attention scores computed in the engine's prefill, carried
with the KV and its stored form, parity with kvpress's ExpectedAttentionPress."""

from __future__ import annotations

import dataclasses
import importlib

import pytest
import torch
from test_codecs import _kvpress_presses, make_kv

from evicctl.engine import hf, query_stats
from evicctl.manager.codecs.codec import decode, get_codec
from evicctl.manager.codecs.names import (
    SINK_TOKENS,
    WINDOW_TOKENS,
    derivable,
    kept_count,
    parse_codec_name,
)
from evicctl.manager.codecs.scorers import MissingScoresError, available_scorers, expected
from evicctl.manager.kv import KV

TOKENS = 120


def tiny_llama(seed: int = 0, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, rope_theta=10000.0,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def _expected_press():
    _kvpress_presses()  # puts kvpress in sys.modules without running its package __init__
    return importlib.import_module("kvpress.presses.expected_attention_press").ExpectedAttentionPress


@pytest.fixture(scope="module")
def prefilled():
    """(model, kv from hf.prefill_context, each layer's attention input hidden states)."""
    model = tiny_llama()
    ids = torch.randint(0, 300, (1, TOKENS), generator=torch.Generator().manual_seed(1))
    hidden: dict[int, torch.Tensor] = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, a, kw, i=i: hidden.__setitem__(i, kw["hidden_states"]), with_kwargs=True)
        for i, m in enumerate(hf.attention_modules(model))
    ]
    try:
        kv, _ = hf.prefill_context(model, ids)
    finally:
        for h in hooks:
            h.remove()
    return model, kv, hidden


def test_prefill_carries_expected_scores(prefilled) -> None:
    _, kv, _ = prefilled
    scores = kv.token_scores["expected"]
    assert scores.shape == (kv.layers, kv.kv_heads, kv.tokens) and scores.dtype == torch.float32
    assert bool((scores[..., SINK_TOKENS:] > 0).all())
    assert "expected" in available_scorers(kv) and "kvzip" not in available_scorers(kv)


def test_scores_equal_kvpress(prefilled) -> None:
    press_cls = _expected_press()
    model, kv, hidden = prefilled
    for layer, attn in enumerate(hf.attention_modules(model)):
        attn.rotary_emb = model.model.rotary_emb  # kvpress reads it from the attention module
        with torch.no_grad():
            theirs = press_cls(compression_ratio=0.5).score(attn, hidden[layer], kv.keys[layer], kv.values[layer], None, {})
        assert torch.allclose(expected(kv, layer), theirs.float(), rtol=1e-4, atol=1e-7), layer


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_kept_tokens_equal_kvpress(prefilled, ratio: float) -> None:
    """kvpress keeps the top-k of its scores per head; we also protect the sinks (kvpress does
    too, with max + 1) and the last WINDOW_TOKENS."""
    press_cls = _expected_press()
    model, kv, hidden = prefilled
    keep = kept_count(kv.tokens, ratio)
    got = decode(get_codec(f"expected@{ratio}").encode(kv)).positions
    protected = torch.zeros(kv.tokens, dtype=torch.bool)
    protected[:SINK_TOKENS] = protected[kv.tokens - WINDOW_TOKENS :] = True
    for layer, attn in enumerate(hf.attention_modules(model)):
        attn.rotary_emb = model.model.rotary_emb
        with torch.no_grad():
            theirs = press_cls(compression_ratio=ratio).score(attn, hidden[layer], kv.keys[layer], kv.values[layer], None, {})
        want = theirs[0].masked_fill(protected, float("inf")).topk(keep, dim=-1).indices.sort(-1).values
        assert torch.equal(got[layer], want), layer


def test_stored_copy_is_rescored_like_the_fresh_kv(prefilled) -> None:
    """The scores travel in the stored form (fp16): a stored ``none`` or ``int4`` copy, or a
    dropped one, recompresses to the same kept set as the fresh KV with fp16 scores."""
    _, kv, _ = prefilled
    rounded = dataclasses.replace(kv, token_scores={"expected": kv.token_scores["expected"].half().float()})
    direct = decode(get_codec("expected@0.75").encode(rounded)).positions
    for via in ("none", "int4", "expected@0.5"):
        stored = get_codec(via).encode(kv)
        assert stored.tensors["ts.expected"].dtype == torch.float16
        assert stored.nbytes == get_codec(via).predict_bytes(kv)
        copy = decode(stored)
        assert torch.equal(copy.token_scores["expected"], rounded.token_scores["expected"])
        target = "expected@0.75+int4" if "int4" in via else "expected@0.75"  # never more bits than the copy
        assert derivable(via, target)
        assert torch.equal(decode(get_codec(target).encode(copy)).positions, direct), via


@pytest.mark.parametrize("name", ["expected@0.5", "expected@0.25+int2", "expected@0.5+int4"])
def test_stored_bytes_count_the_scores_exactly(name: str) -> None:
    kv = make_kv(layers=2, heads=3, tokens=100, q_heads=6, window=8)
    kv = dataclasses.replace(kv, token_scores={"expected": torch.rand(2, 3, 100), "kvzip": torch.rand(2, 3, 100)})
    codec = get_codec(name)
    stored = codec.encode(kv)
    assert kv.side_numel == kv.window_queries.numel() + 2 * 2 * 3 * 100
    assert stored.nbytes == codec.predict_bytes(kv) == codec.stored_bytes(100, 2, 3, 64, 4, window_numel=kv.side_numel)
    one_set = dataclasses.replace(kv, token_scores={"expected": kv.token_scores["expected"]})
    assert stored.nbytes - codec.encode(one_set).nbytes == 2 * 2 * 3 * 100  # fp16 [layers, kv_heads, tokens]


def test_without_scores_the_codec_refuses() -> None:
    kv = dataclasses.replace(make_kv(), token_scores={})
    with pytest.raises(MissingScoresError, match=r"expected needs the per-token expected scores") as info:
        get_codec("expected@0.5").encode(kv)
    assert isinstance(info.value, ValueError) and info.value.exit_code == 5  # a refusal (RefusedError)
    bad = dataclasses.replace(kv, token_scores={"expected": torch.rand(2, 3, 7)})
    with pytest.raises(ValueError, match=r"must be \[2, 3, 100\]"):
        get_codec("expected@0.5").encode(bad)


def test_names_and_partial_order() -> None:
    parts = parse_codec_name("expected@0.5+int2")
    assert (parts.scorer, parts.ratio, parts.bits) == ("expected", 0.5, 2)
    assert derivable("none", "expected@0.5") and derivable("expected@0.25", "expected@0.5+int4")
    assert not derivable("snapkv@0.5", "expected@0.75") and not derivable("expected@0.5", "kvzip@0.75")


def test_short_context_statistics() -> None:
    """A context no longer than the sinks has no statistics: no scores, and the codec keeps all."""
    model = tiny_llama(layers=1)
    kv, _ = hf.prefill_context(model, torch.arange(1, 1 + query_stats.N_SINK)[None])
    assert "expected" not in kv.token_scores
    full = KV.full(list(kv.keys), list(kv.values))
    assert decode(get_codec("expected@0.5").encode(full)).kept_tokens == full.tokens  # nothing to drop
