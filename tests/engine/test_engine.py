"""Engine over the manager API: a miss stores the context, a hit reuses it and answers the
same, prefill costs are reported, positions continue from the original length."""

from __future__ import annotations

import torch

from evicctl.engine import hf, prompt
from evicctl.engine.engine import Engine
from evicctl.manager.kv import KV

DOC = "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy. " * 3


def test_miss_then_hit_gives_the_same_answer(tiny_model, tiny_tokenizer, dict_manager):
    engine = Engine(dict_manager, tiny_model, tiny_tokenizer, "cpu")
    first = engine.answer("doc", DOC, "In what country is Normandy located?", max_new_tokens=8)
    assert not first.hit and first.codec is None and dict_manager.stored == ["doc"]
    stored = dict_manager.kvs["doc"]
    assert stored.tokens == first.context_tokens == prompt.context_ids(tiny_tokenizer, DOC).shape[1]
    assert tuple(stored.window_queries.shape) == (2, 4, hf.WINDOW, 16)
    second = engine.answer("doc", DOC, "In what country is Normandy located?", max_new_tokens=8)
    assert second.hit and second.hit_tier == "cpu" and second.codec == "none"
    assert second.token_ids == first.token_ids and len(first.token_ids) > 0
    # miss: context + question prefilled from nothing; hit: the question on top of the cache
    (miss_new, miss_cached, _), (hit_new, hit_cached, _) = dict_manager.prefills
    assert miss_cached == 0 and miss_new == first.context_tokens + first.question_tokens
    assert (hit_new, hit_cached) == (second.question_tokens, second.context_tokens)
    for ans in (first, second):
        t = ans.ttft
        assert 0 < t.prefill_s <= t.first_token_s <= t.total_s


def test_hit_on_dropped_kv_attends_to_kept_tokens_only(tiny_model, tiny_tokenizer, dict_manager):
    engine = Engine(dict_manager, tiny_model, tiny_tokenizer, "cpu")
    engine.answer("doc", DOC, "Where?", max_new_tokens=4)
    kv = dict_manager.kvs["doc"]
    keep = torch.arange(0, kv.tokens, 2)  # every other token, same for every head and layer
    dict_manager.kvs["doc"] = KV(
        tuple(k[:, :, keep] for k in kv.keys), tuple(v[:, :, keep] for v in kv.values),
        keep.expand(kv.layers, kv.kv_heads, -1).clone(), kv.tokens,
    )
    ans = engine.answer("doc", DOC, "Where?", max_new_tokens=4)
    assert ans.hit and ans.kept_tokens == len(keep) < ans.context_tokens == kv.tokens
    assert dict_manager.prefills[-1][:2] == (ans.question_tokens, len(keep))


def test_hit_keeps_logprobs_for_online_scoring(tiny_model, tiny_tokenizer, dict_manager):
    engine = Engine(dict_manager, tiny_model, tiny_tokenizer, "cpu")
    engine.answer("doc", DOC, "Who?", max_new_tokens=5)
    ans = engine.answer("doc", DOC, "Who?", max_new_tokens=5, keep_logprobs=True)
    assert ans.logprobs is not None and ans.logprobs.shape[0] == len(ans.token_ids)
    assert torch.allclose(ans.logprobs.exp().sum(-1), torch.ones(len(ans.token_ids)), atol=1e-4)
