"""The engine computes the model-side token scores when it stores a context: Expected
Attention's from the one prefill it runs anyway, KVzip's from a reconstruction pass only when
configured; the same scores as scoring the context alone."""

from __future__ import annotations

import torch

from evicctl.engine import hf, kvzip, prompt
from evicctl.engine.engine import Engine

DOC = "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy. " * 3


def test_a_miss_stores_expected_scores_and_kvzip_only_when_configured(tiny_model, tiny_tokenizer, dict_manager) -> None:
    Engine(dict_manager, tiny_model, tiny_tokenizer, "cpu").answer("a", DOC, "Where?", max_new_tokens=2)
    Engine(dict_manager, tiny_model, tiny_tokenizer, "cpu", kvzip=True).answer("b", DOC, "Where?", max_new_tokens=2)
    plain, zipped = dict_manager.kvs["a"], dict_manager.kvs["b"]
    assert set(plain.token_scores) == {"expected"} and set(zipped.token_scores) == {"expected", "kvzip"}
    # the miss prefills context + question in one pass; attention is causal, so the context's
    # query statistics, and so its scores, are those of the context prefilled alone
    ids = prompt.context_ids(tiny_tokenizer, DOC)
    alone, _ = hf.prefill_context(tiny_model, ids)
    assert torch.allclose(plain.token_scores["expected"], alone.token_scores["expected"], rtol=1e-4, atol=1e-7)
    want = kvzip.kvzip_scores(tiny_model, alone, ids, kvzip.repeat_prompt(tiny_tokenizer))
    assert torch.allclose(zipped.token_scores["kvzip"], want, rtol=1e-4, atol=1e-6)
    assert zipped.token_scores["kvzip"].shape == (zipped.layers, zipped.kv_heads, zipped.tokens)
