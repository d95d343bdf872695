"""Adapter between HF transformers (Llama family) and evicctl's KV form.

- `forward` runs the model on new tokens on top of an optional cache, with position ids
  that continue from the ORIGINAL context length: after token dropping the cache is
  shorter than the context, but RoPE was applied to the stored keys at their original
  positions, so the query must sit after all of them. transformers 5.24 takes no
  `cache_position`; the causal mask follows the cache length (DESIGN §8). A cache whose
  layers keep different counts (PyramidKV) gets a mask per layer (ragged.py).
- `kv_from_cache` / `cache_from_kv` convert between `DynamicCache` and `KV`.
- `capture_window_queries` records the post-RoPE queries of the last prompt positions of
  every layer (for the `snapkv` scorer) with a pre-hook on each attention module: it sees
  exactly the hidden states and rotary embedding the attention itself uses.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from evicctl.engine import ragged
from evicctl.manager.kv import KV

WINDOW = 16  # snapkv observation window (kvpress's default)


@dataclass
class ForwardResult:
    logits: torch.Tensor  # [1, kept_positions, vocab] float32
    cache: object  # transformers DynamicCache, now holding the new tokens too


def attention_modules(model) -> list[torch.nn.Module]:
    return [layer.self_attn for layer in model.model.layers]


def _cache_kwarg(model) -> str:
    """transformers renamed `past_key_values` to `cache` during 5.x; an unknown keyword would
    be swallowed by **kwargs and the cache silently ignored, so ask the signature."""
    name = getattr(model, "_evicctl_cache_kwarg", None)
    if name is None:
        name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        model._evicctl_cache_kwarg = name
    return name


@torch.no_grad()
def forward(model, input_ids: torch.Tensor, cache=None, start_position: int = 0, keep_logits: int = 1):
    """Run `input_ids` [1, N] at positions start_position.. on top of `cache`.

    Returns the logits of the last `keep_logits` positions (0 = all) and the grown cache.
    """
    from transformers import DynamicCache

    if cache is None:
        cache = DynamicCache(config=model.config)
    elif ragged.is_ragged(cache):
        ragged.allow_ragged_layers(model)  # one mask for every layer would fit only the first
    n = input_ids.shape[1]
    position_ids = torch.arange(start_position, start_position + n, device=input_ids.device)[None]
    out = model(
        input_ids=input_ids,
        position_ids=position_ids,
        use_cache=True,
        logits_to_keep=keep_logits,
        **{_cache_kwarg(model): cache},
    )
    # the cache object is updated in place; the output names it `cache` or `past_key_values`
    return ForwardResult(out.logits.float(), cache)


def kv_from_cache(cache, tokens: int, window_queries: torch.Tensor | None = None) -> KV:
    """The first `tokens` positions of an uncompressed cache as a KV (copied, contiguous)."""
    keys, values = [], []
    for layer in cache.layers:
        keys.append(layer.keys[:, :, :tokens].contiguous())  # [1, kv_heads, tokens, head_dim]
        values.append(layer.values[:, :, :tokens].contiguous())
    return KV.full(keys, values, window_queries)


def cache_from_kv(kv: KV, config):
    """A DynamicCache holding `kv` (kept tokens only; positions live in the query's ids).
    Layers of a ragged KV keep their own lengths (`forward` fits the mask to each)."""
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=list(zip(kv.keys, kv.values, strict=True)), config=config)


@contextlib.contextmanager
def capture_window_queries(model, start: int, window: int = WINDOW) -> Iterator[list]:
    """While active, the next forward records queries of positions [start, start+window).

    Yields a list that, after the forward, holds one [q_heads, window, head_dim] tensor per
    layer; `stack_window(captured)` makes the [layers, q_heads, window, head_dim] tensor.
    """
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    captured: list[torch.Tensor] = []

    def hook(module, args, kwargs):
        hidden = kwargs["hidden_states"][:, start : start + window]  # [1, w, hidden]
        cos, sin = kwargs["position_embeddings"]  # [1, N, head_dim]
        cos, sin = cos[:, start : start + window], sin[:, start : start + window]
        q = module.q_proj(hidden).view(1, hidden.shape[1], -1, module.head_dim).transpose(1, 2)
        q, _ = apply_rotary_pos_emb(q, q, cos, sin)  # [1, q_heads, w, head_dim]
        captured.append(q[0].detach().float().clone())

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in attention_modules(model)]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def stack_window(captured: list[torch.Tensor]) -> torch.Tensor | None:
    return torch.stack(captured) if captured else None  # [layers, q_heads, window, head_dim]


def prefill_context(model, context_ids: torch.Tensor, window: int = WINDOW) -> tuple[KV, torch.Tensor]:
    """Prefill a context alone: (its KV with window queries and Expected Attention scores,
    logits of its last position)."""
    from evicctl.engine import query_stats

    tokens = context_ids.shape[1]
    with (
        capture_window_queries(model, max(0, tokens - window), window) as captured,
        query_stats.capture_query_statistics(model, tokens) as stats,
    ):
        result = forward(model, context_ids)
    kv = kv_from_cache(result.cache, tokens, stack_window(captured))
    return query_stats.with_expected_scores(kv, stats), result.logits[:, -1]


@torch.no_grad()
def greedy_decode(
    model,
    cache,
    first_logits: torch.Tensor,
    next_position: int,
    max_new_tokens: int,
    stop_ids: frozenset[int],
    keep_logprobs: bool = False,
) -> tuple[list[int], torch.Tensor | None]:
    """Greedy tokens starting from `first_logits` [1, vocab] (the prompt's last position).

    Returns the answer token ids (without the stop token) and, if asked, the log-softmax
    that chose each of them, [answer_len, vocab] (used to score served answers online).
    """
    tokens: list[int] = []
    logprobs: list[torch.Tensor] = []
    logits = first_logits
    for step in range(max_new_tokens):
        token = int(logits.argmax(-1))
        if token in stop_ids:
            break
        tokens.append(token)
        if keep_logprobs:
            logprobs.append(torch.log_softmax(logits.float(), -1)[0])
        if step + 1 == max_new_tokens:
            break
        ids = torch.tensor([[token]], device=first_logits.device)
        result = forward(model, ids, cache, next_position)
        cache, logits, next_position = result.cache, result.logits[:, -1], next_position + 1
    stacked = torch.stack(logprobs) if keep_logprobs and logprobs else None
    return tokens, stacked
