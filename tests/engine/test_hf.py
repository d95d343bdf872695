"""HF adapter: stored KV reuse is exact, dropped tokens equal masked attention, window
queries are the attention's own post-RoPE queries."""

from __future__ import annotations

import torch

from evicctl.engine import hf
from evicctl.manager.kv import KV


def _ids(vocab: int, n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (1, n), generator=g)


def test_reused_full_kv_matches_full_recompute(tiny_model):
    vocab = tiny_model.config.vocab_size
    ids = _ids(vocab, 70)
    context, question = ids[:, :50], ids[:, 50:]
    full = hf.forward(tiny_model, ids, keep_logits=0).logits  # [1, 70, V]
    kv, last = hf.prefill_context(tiny_model, context)
    assert kv.tokens == kv.kept_tokens == 50
    reused = hf.forward(tiny_model, question, hf.cache_from_kv(kv, tiny_model.config), 50, keep_logits=0).logits
    assert (reused - full[:, 50:]).abs().max().item() <= 1e-4
    assert (last - full[:, 49]).abs().max().item() <= 1e-4


def test_reuse_does_not_mutate_stored_kv(tiny_model):
    ids = _ids(tiny_model.config.vocab_size, 40)
    kv, _ = hf.prefill_context(tiny_model, ids[:, :30])
    before = [k.clone() for k in kv.keys]
    hf.forward(tiny_model, ids[:, 30:], hf.cache_from_kv(kv, tiny_model.config), 30)
    assert all(torch.equal(a, b) and b.shape[2] == 30 for a, b in zip(before, kv.keys, strict=True))


def _dropped(kv: KV, keep: torch.Tensor) -> KV:
    """Keep per kv head the token indices keep[h] (same for every layer)."""
    idx = keep[None, :, :, None].expand(1, -1, -1, kv.head_dim)  # [1, H, K, D]
    keys = tuple(k.gather(2, idx) for k in kv.keys)
    values = tuple(v.gather(2, idx) for v in kv.values)
    positions = keep[None].expand(kv.layers, -1, -1).clone()
    return KV(keys, values, positions, kv.tokens, kv.window_queries)


def test_dropped_tokens_equal_masking_them_per_head(tiny_model):
    """Dropping per-head tokens from the cache == masking those keys for the question's
    queries (per head) in a full forward, with positions continuing from the original length."""
    config = tiny_model.config
    ids = _ids(config.vocab_size, 60, seed=3)
    tokens, n = 45, 60
    kv, _ = hf.prefill_context(tiny_model, ids[:, :tokens])
    g = torch.Generator().manual_seed(0)
    keep = torch.stack([torch.randperm(tokens, generator=g)[:30].sort().values for _ in range(kv.kv_heads)])
    dropped = _dropped(kv, keep)  # different kept tokens per head, same count
    got = hf.forward(tiny_model, ids[:, tokens:], hf.cache_from_kv(dropped, config), tokens, keep_logits=0).logits

    group = config.num_attention_heads // config.num_key_value_heads
    allowed = torch.ones(config.num_attention_heads, n, n, dtype=torch.bool).tril()
    for h in range(kv.kv_heads):
        masked_ctx = torch.ones(tokens, dtype=torch.bool)
        masked_ctx[keep[h]] = False
        for qh in range(h * group, (h + 1) * group):
            allowed[qh, tokens:, :tokens] &= ~masked_ctx
    mask = torch.zeros(1, config.num_attention_heads, n, n).masked_fill(~allowed[None], float("-inf"))
    with torch.no_grad():
        want = tiny_model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, tokens:]
    assert (got - want).abs().max().item() <= 1e-4
    # and dropping really changes the answer distribution (the test can fail)
    full = hf.forward(tiny_model, ids[:, tokens:], hf.cache_from_kv(kv, config), tokens, keep_logits=0).logits
    assert (got - full).abs().max().item() > 1e-3


def test_window_queries_are_the_attention_queries(tiny_model):
    """softmax(q_window . K^T / sqrt(d)) from the captured queries reproduces the model's own
    (eager) attention weights of the last 16 prompt positions."""
    ids = _ids(tiny_model.config.vocab_size, 40, seed=5)
    kv, _ = hf.prefill_context(tiny_model, ids)
    assert tuple(kv.window_queries.shape) == (2, 4, hf.WINDOW, 16)
    tiny_model.config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            attn = tiny_model(input_ids=ids, output_attentions=True).attentions  # per layer [1, Hq, N, N]
    finally:
        tiny_model.config._attn_implementation = "sdpa"
    group = 2
    for layer in range(kv.layers):
        keys = kv.keys[layer][0].repeat_interleave(group, dim=0)  # [Hq, T, D]
        scores = kv.window_queries[layer] @ keys.transpose(1, 2) / 16**0.5  # [Hq, W, T]
        causal = torch.arange(40)[None, :] > torch.arange(40 - hf.WINDOW, 40)[:, None]
        weights = scores.masked_fill(causal, float("-inf")).softmax(-1)
        assert (weights - attn[layer][0, :, -hf.WINDOW :]).abs().max().item() <= 1e-5


def test_greedy_decode_with_cache_matches_no_cache_decode(tiny_model):
    ids = _ids(tiny_model.config.vocab_size, 30, seed=7)
    result = hf.forward(tiny_model, ids)
    tokens, logprobs = hf.greedy_decode(tiny_model, result.cache, result.logits[:, -1], 30, 6, frozenset(), True)
    assert len(tokens) == 6 and tuple(logprobs.shape) == (6, tiny_model.config.vocab_size)
    seq = ids
    for want in tokens:  # recompute from scratch each step
        logits = hf.forward(tiny_model, seq).logits[:, -1]
        assert int(logits.argmax(-1)) == want
        seq = torch.cat([seq, torch.tensor([[want]])], dim=1)


def test_greedy_decode_stops_at_stop_token(tiny_model):
    ids = _ids(tiny_model.config.vocab_size, 20, seed=9)
    result = hf.forward(tiny_model, ids)
    first = int(result.logits[:, -1].argmax(-1))
    tokens, _ = hf.greedy_decode(tiny_model, result.cache, result.logits[:, -1], 20, 8, frozenset({first}))
    assert tokens == []
