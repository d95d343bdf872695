"""Expected Attention scores (kvpress ``ExpectedAttentionPress``), computed while the context
is prefilled.

The score of a key is the attention that the *next* queries are expected to pay it: the
pre-RoPE queries of the context (sink tokens left out) are summarised per query head by
their mean mu and covariance S, both rotated by the RoPE matrix averaged over the next
N_FUTURE_POSITIONS positions (R), and for a Gaussian query q ~ N(R mu, R S R^T) the
expected exp-logit of a post-RoPE key k is exp(k.R mu / sqrt(d) + k^T R S R^T k / 2d).
kvpress then takes a softmax over the context's keys (sinks out), averages it over each GQA
group, multiplies it by the value's L2 norm, and gives the sinks the layer's max + 1.

Statistics need the queries of every context position, which only the forward has: a
forward hook on each layer's ``q_proj`` (its output is the pre-RoPE queries; no extra
matmul) folds them into (mu, S) during the one prefill the engine runs anyway. The scores
follow from those and the keys and values of the KV once the forward is done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator

import torch

N_FUTURE_POSITIONS = 512  # kvpress ExpectedAttentionPress.n_future_positions
N_SINK = 4  # kvpress ExpectedAttentionPress.n_sink: left out of the statistics and the softmax


def averaged_rope(model, start: int, n_future: int = N_FUTURE_POSITIONS) -> torch.Tensor:
    """[head_dim, head_dim] float32: the RoPE rotation averaged over positions start.. start+n_future
    (kvpress's apply_avg_rope: R = cos * I + sin * P, P the rotate_half matrix)."""
    rotary = model.model.rotary_emb
    device = rotary.inv_freq.device
    dim = 2 * rotary.inv_freq.numel()
    positions = torch.arange(start, start + n_future, device=device)[None]
    cos, sin = rotary(torch.zeros(1, dtype=torch.float32, device=device), positions)
    cos, sin = cos[0].float(), sin[0].float()  # [n_future, D]
    eye = torch.eye(dim, device=device)
    half = dim // 2
    p = torch.zeros(dim, dim, device=device)
    p[half:, :half], p[:half, half:] = torch.eye(half, device=device), -torch.eye(half, device=device)
    return (cos[:, :, None] * eye + sin[:, :, None] * p).mean(dim=0)


def query_statistics(queries: torch.Tensor, rope: torch.Tensor, n_sink: int = N_SINK):
    """queries [q_heads, T, D] pre-RoPE -> (mean [q_heads, D], covariance [q_heads, D, D]),
    of the positions after the sinks, rotated by `rope` (float32)."""
    q = queries[:, n_sink:].float()
    mu = q.mean(dim=1, keepdim=True)
    centered = q - mu
    cov = centered.transpose(1, 2) @ centered / q.shape[1]
    mu = mu[:, 0] @ rope.T
    return mu, rope @ cov @ rope.T


@contextlib.contextmanager
def capture_query_statistics(model, tokens: int, n_sink: int = N_SINK) -> Iterator[dict]:
    """While active, the next forward records, per layer, the statistics of the pre-RoPE queries
    of positions [n_sink, tokens): the yielded dict maps layer -> (mean, covariance), rotated by
    the RoPE averaged over the N_FUTURE_POSITIONS after `tokens`. Empty when tokens <= n_sink.

    The forward may run more positions than `tokens` (context + question on a miss): attention
    is causal, so the context's queries do not depend on what follows them."""
    stats: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    if tokens <= n_sink:
        yield stats
        return
    rope = averaged_rope(model, tokens)

    def hook_for(layer: int, heads: int, head_dim: int):
        def hook(module, args, output):
            if output.shape[1] < tokens:
                return  # another caller of q_proj (the snapkv window capture): not the layer's forward
            q = output[0, :tokens].detach().view(tokens, heads, head_dim).transpose(0, 1)
            stats[layer] = query_statistics(q, rope.to(q.device), n_sink)

        return hook

    handles = []
    for layer, decoder in enumerate(model.model.layers):
        attn = decoder.self_attn
        heads = model.config.num_attention_heads
        handles.append(attn.q_proj.register_forward_hook(hook_for(layer, heads, attn.head_dim)))
    try:
        yield stats
    finally:
        for handle in handles:
            handle.remove()


def expected_attention(
    keys: torch.Tensor, values: torch.Tensor, mu: torch.Tensor, cov: torch.Tensor, n_sink: int = N_SINK
) -> torch.Tensor:
    """[kv_heads, T] float32 scores of one layer, kvpress's formula (module docstring).

    keys, values [1, kv_heads, T, D] post-RoPE; mu [q_heads, D], cov [q_heads, D, D]."""
    k = keys[0].float()
    heads, tokens, dim = k.shape
    if tokens <= n_sink:
        return torch.ones(heads, tokens, device=k.device)
    group = mu.shape[0] // heads
    k = k[:, n_sink:].repeat_interleave(group, dim=0)  # [Hq, T', D], HF repeat_kv order
    logits = (k @ mu.to(k.device)[:, :, None])[..., 0] / math.sqrt(dim)
    logits = logits + ((k @ cov.to(k.device)) * k).sum(-1) / dim / 2
    scores = logits.softmax(dim=-1).view(heads, group, -1).mean(dim=1)
    scores = scores * values[0, :, n_sink:].float().norm(dim=-1)
    top = scores.max() + 1
    return torch.cat([top.expand(heads, n_sink), scores], dim=1)


def expected_attention_scores(kv, stats: dict) -> torch.Tensor | None:
    """[layers, kv_heads, tokens] float32 for an uncompressed KV, from its captured statistics;
    None when the capture saw no forward (or the context is too short for statistics)."""
    if len(stats) != kv.layers:
        return None
    return torch.stack([expected_attention(kv.keys[i], kv.values[i], *stats[i]) for i in range(kv.layers)])


def with_expected_scores(kv, stats: dict):
    """`kv` with token_scores["expected"] from the captured statistics (unchanged without them)."""
    scores = expected_attention_scores(kv, stats)
    if scores is None:
        return kv
    return dataclasses.replace(kv, token_scores={**kv.token_scores, "expected": scores})
