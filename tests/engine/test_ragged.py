"""Answering from a KV whose layers keep different counts (PyramidKV): the per-layer mask
(engine/ragged.py) gives what one-token steps give, changes nothing for uniform caches, and
the real packaged model answers from a pyramid-compressed KV."""

from __future__ import annotations

import pytest
import torch
from tiny_llama import make_tiny_model

from evicctl.engine import hf, ragged
from evicctl.manager.codecs.codec import get_codec

PYRAMID = "snapkv@0.5-pyramid+think@0.5+int4"


def _ids(vocab: int, n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


def _step_by_step(model, question: torch.Tensor, kv) -> torch.Tensor:
    """[1, Q, vocab]: the question one token at a time (one query needs no mask, so the
    stock attention handles layers of any length): the reference for a multi-token forward."""
    cache = hf.cache_from_kv(kv, model.config)
    logits = [
        hf.forward(model, question[:, i : i + 1], cache, kv.tokens + i).logits[:, -1]
        for i in range(question.shape[1])
    ]
    return torch.stack(logits, dim=1)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("codec", ["snapkv@0.5-pyramid", PYRAMID, "knorm@0.25-pyramid+int2"])
def test_a_multi_token_question_over_ragged_layers_equals_single_steps(
    codec: str, attention: str
) -> None:
    model = make_tiny_model(400, seed=2, layers=4)
    model.config._attn_implementation = attention
    ids = _ids(400, 420)
    kv, _ = hf.prefill_context(model, ids[:, :400])
    compressed = get_codec(codec).decode(get_codec(codec).encode(kv))
    assert compressed.ragged and len(set(compressed.layer_kept)) == 4
    question = ids[:, 400:]
    want = _step_by_step(model, question, compressed)
    got = hf.forward(
        model, question, hf.cache_from_kv(compressed, model.config), kv.tokens, keep_logits=0
    ).logits
    assert model.config._attn_implementation == ragged.PREFIX + attention
    assert (got - want).abs().max().item() <= 1e-4
    # the compressed layers really change the answer distribution (the test can fail)
    full = hf.forward(
        model, question, hf.cache_from_kv(kv, model.config), kv.tokens, keep_logits=0
    ).logits
    assert (got - full).abs().max().item() > 1e-3


def test_the_ragged_attention_leaves_uniform_caches_bit_identical() -> None:
    model = make_tiny_model(400, seed=3, layers=3)
    ids = _ids(400, 300, seed=4)
    kv, _ = hf.prefill_context(model, ids[:, :280])
    dropped = get_codec("snapkv@0.5+int4").decode(get_codec("snapkv@0.5+int4").encode(kv))
    question = ids[:, 280:]
    before = [
        hf.forward(model, question, hf.cache_from_kv(x, model.config), 280, keep_logits=0).logits
        for x in (kv, dropped)
    ]
    ragged.allow_ragged_layers(model)
    after = [
        hf.forward(model, question, hf.cache_from_kv(x, model.config), 280, keep_logits=0).logits
        for x in (kv, dropped)
    ]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_layer_mask_keeps_the_new_tokens_mask_and_refuses_hidden_cached_keys() -> None:
    q = torch.zeros(1, 1, 3, 4)
    causal = torch.ones(3, 8, dtype=torch.bool).tril(5)[None, None]  # 5 cached keys, 3 new
    fitted = ragged.layer_mask(causal, 6, 3, q)  # a layer of 3 cached keys
    assert fitted.shape == (1, 1, 3, 6) and torch.equal(
        fitted[..., :3], torch.ones(1, 1, 3, 3, dtype=torch.bool)
    )
    assert torch.equal(fitted[..., 3:], causal[..., 5:])
    assert torch.equal(
        ragged.layer_mask(None, 6, 3, q), fitted
    )  # built from nothing: bottom-right causal
    additive = ragged.layer_mask(None, 6, 3, q, additive=True)
    assert torch.equal(additive == 0, fitted)
    padded = causal.clone()
    padded[..., 0] = False  # a hidden cached key: which key is it in a shorter layer?
    with pytest.raises(ValueError, match="hides context keys"):
        ragged.layer_mask(padded, 6, 3, q)


def test_other_attention_implementations_are_refused() -> None:
    model = make_tiny_model(400, seed=5, layers=2)
    model.config._attn_implementation = "flex_attention"
    with pytest.raises(ValueError, match="sdpa or eager"):
        ragged.allow_ragged_layers(model)


@pytest.mark.e2e
def test_the_packaged_model_answers_from_a_pyramid_kv(tmp_path) -> None:
    """SmolLM2 answers a real question from snapkv@0.5-pyramid(+int4) KVs: the answer is a
    real one, and its teacher-forced quality is on par with the uniform drop of that ratio."""
    from evicctl.config import default_cache_dir
    from evicctl.engine import prompt
    from evicctl.engine.data import load_contexts
    from evicctl.engine.model import load_model
    from evicctl.engine.quality import kl_quality, teacher_forced_logprobs

    model, tokenizer = load_model(default_cache_dir())
    (context,) = load_contexts(tokenizer, 1, hotpot_fraction=0.0, seed=3)
    qa = context.test[0]
    kv, last = hf.prefill_context(model, prompt.context_ids(tokenizer, context.text))
    q_ids = prompt.question_ids(tokenizer, qa.question)
    stop = prompt.stop_token_ids(tokenizer)

    def answer(x):
        first = hf.forward(model, q_ids, hf.cache_from_kv(x, model.config), x.tokens)
        tokens, _ = hf.greedy_decode(
            model, first.cache, first.logits[:, -1], x.tokens + q_ids.shape[1], 24, stop
        )
        return tokens

    reference = answer(kv)
    ref_lp = teacher_forced_logprobs(model, kv, q_ids, reference)
    quality = {}
    for name in ("snapkv@0.5", "snapkv@0.5-pyramid", "snapkv@0.5-pyramid+int4"):
        codec = get_codec(name)
        compressed = codec.decode(codec.encode(kv))
        assert compressed.ragged == name.startswith("snapkv@0.5-pyramid"), name
        assert tokenizer.decode(answer(compressed), skip_special_tokens=True).strip(), name
        quality[name] = kl_quality(
            ref_lp, teacher_forced_logprobs(model, compressed, q_ids, reference)
        )
    assert all(0.3 < q <= 1.0 for q in quality.values()), quality
    assert quality["snapkv@0.5-pyramid"] > quality["snapkv@0.5"] - 0.15, quality
