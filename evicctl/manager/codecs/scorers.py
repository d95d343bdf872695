"""Token scorers for token dropping (kvpress conventions) and the per-head selection.

A scorer maps (kv, layer) to scores [1, kv_heads, kept_tokens] float32: higher = keep.
Selection is per (layer, kv head), as kvpress does: every head keeps its own top set.

- knorm (arXiv 2406.11430, kvpress KnormPress): score = -||k||; kvpress keeps *low*-norm
  keys, and so do we.
- keydiff (arXiv 2504.15364, kvpress KeyDiffPress): score = -cos(k, mean of unit keys);
  keys least like the average are kept.
- snapkv (arXiv 2404.14469, kvpress SnapKVPress): attention of the last `window` prompt
  queries (kv.window_queries, post-RoPE) over the keys, causal, softmax in fp32, averaged
  over the window queries, smoothed by a 5-wide average pool, averaged over each GQA group;
  the window's own keys get the layer's max score + 1 (kvpress 0.5), so they rank first.
- expected (kvpress ExpectedAttentionPress) and kvzip (arXiv 2505.23416, kvpress KVzipPress):
  per-token scores that need the model (query statistics of the prefill; a reconstruction
  pass), computed by the engine when it stores the context (evicctl/engine/query_stats.py,
  kvzip.py) and carried in kv.token_scores[name] [layers, kv_heads, tokens], indexed by
  original position: the scorer gathers them at kv.positions, so a stored copy is re-scored
  after a drop, a recompress or a restart exactly as the fresh KV was.

A scorer whose side data (window queries, token scores) the KV lacks raises
MissingScoresError: a ValueError, and a RefusedError, so a manager asked for such a codec
refuses it (exit 5) instead of failing.

Every codec also keeps the first SINK_TOKENS and the last WINDOW_TOKENS positions of the
context whatever their scores (attention sinks and the recent window carry most of the
attention mass). Kept count for a removed fraction r of a T-token context:
``kept_count(T, r) = min(T, max(int(T * (1 - r)), SINK_TOKENS + WINDOW_TOKENS))`` (kvpress's
``int(T * (1 - r))`` rounding, never fewer than the protected tokens).

The functions above are the torch reference, one layer at a time. ``keep_indices`` and
``drop_tokens`` score every layer: on CUDA with the kernels (evicctl.kernels) in one or two
launches for all layers (``*_scores_layers``) and one batched top-k, else layer by layer
with the reference. The kernels' scores match the reference to fp32 rounding, so the
kept sets agree except between near-tied tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from evicctl.errors import RefusedError
from evicctl.manager.codecs import quant

# kept_count and the protected tokens are shared with the torch-free size arithmetic
from evicctl.manager.codecs.names import SINK_TOKENS, TOKEN_SCORERS, WINDOW_TOKENS, kept_count
from evicctl.manager.kv import KV

SNAPKV_POOL = 5  # kvpress SnapKVPress.kernel_size

Scorer = Callable[[KV, int], torch.Tensor]


class MissingScoresError(RefusedError, ValueError):
    """The KV lacks what a scorer reads (window queries, per-token scores)."""


def knorm(kv: KV, layer: int) -> torch.Tensor:
    """[1, H, K]: minus the L2 norm of each key."""
    return -kv.keys[layer].float().norm(dim=-1)


def keydiff(kv: KV, layer: int) -> torch.Tensor:
    """[1, H, K]: minus the cosine of each key to the mean unit key of its head."""
    keys = kv.keys[layer].float()  # [1, H, K, D]
    # F.normalize / F.cosine_similarity spelled out: same values, ~10x faster on CPU
    unit = keys / keys.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    anchor = unit.mean(dim=2, keepdim=True)  # [1, H, 1, D]
    anchor = anchor / anchor.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    return -(unit @ anchor.transpose(-1, -2)).squeeze(-1)


def _window_queries(kv: KV, layer: int) -> torch.Tensor:
    wq = kv.window_queries
    if wq is None:
        raise MissingScoresError(
            "snapkv needs kv.window_queries [layers, q_heads, window, head_dim] "
            "(the post-RoPE queries of the last prompt positions); pass them when storing the context"
        )
    if wq.dim() != 4 or wq.shape[0] != kv.layers or wq.shape[3] != kv.head_dim or wq.shape[1] % kv.kv_heads:
        raise ValueError(
            f"window_queries must be [{kv.layers}, q_heads (multiple of {kv.kv_heads}), window, "
            f"{kv.head_dim}]; got {tuple(wq.shape)}"
        )
    if wq.shape[2] > kv.tokens:
        raise ValueError(f"window of {wq.shape[2]} queries is longer than the {kv.tokens}-token context")
    return wq[layer]


def snapkv(kv: KV, layer: int) -> torch.Tensor:
    """[1, H, K]: attention the last window's queries pay each key (see module docstring)."""
    wq = _window_queries(kv, layer).to(kv.device, torch.float32)  # [Hq, W, D]
    keys = kv.keys[layer][0].float()  # [H, K, D]
    heads, kept, dim = keys.shape
    q_heads, window = wq.shape[0], wq.shape[1]
    group = q_heads // heads
    # query head h*group + r reads kv head h (HF repeat_kv order): fold the group into the
    # query axis instead of repeating the keys
    queries = wq.reshape(heads, group * window, dim)  # [H, G*W, D]
    key_pos = kv.positions[layer].to(keys.device)  # [H, K]
    query_pos = torch.arange(kv.tokens - window, kv.tokens, device=keys.device).repeat(group)  # [G*W]
    logits = queries @ keys.transpose(1, 2) / math.sqrt(dim)  # [H, G*W, K]
    future = key_pos[:, None, :] > query_pos[None, :, None]
    attn = logits.masked_fill_(future, float("-inf")).softmax(dim=-1)
    in_window = key_pos >= kv.tokens - window  # [H, K]
    # zeroing the window's own keys before pooling equals kvpress's pooling of the
    # non-window part with zero padding (avg_pool1d counts the padding)
    attn = attn.view(heads, group, window, kept).mean(dim=2).masked_fill_(in_window[:, None], 0.0)  # [H, G, K]
    pooled = F.avg_pool1d(attn.view(heads * group, 1, kept), SNAPKV_POOL, stride=1, padding=SNAPKV_POOL // 2)
    scores = pooled.view(heads, group, kept).mean(dim=1)  # [H, K]
    outside = scores.masked_fill(in_window, float("-inf"))
    top = outside.max().item() if bool((~in_window).any()) else 0.0
    return scores.masked_fill(in_window, top + 1.0)[None]


def _token_scores(kv: KV, name: str) -> torch.Tensor:
    """kv.token_scores[name] [L, H, T], checked."""
    scores = kv.token_scores.get(name)
    if scores is None:
        raise MissingScoresError(
            f"{name} needs the per-token {name} scores the engine computes when it stores the context "
            f"(kv.token_scores[{name!r}], [layers, kv_heads, tokens]); this KV has none"
        )
    if tuple(scores.shape) != (kv.layers, kv.kv_heads, kv.tokens):
        raise ValueError(
            f"token_scores[{name!r}] must be [{kv.layers}, {kv.kv_heads}, {kv.tokens}]; got {tuple(scores.shape)}"
        )
    return scores


def _gathered(kv: KV, name: str, layer: int) -> torch.Tensor:
    """[1, H, K]: the stored scores of layer `layer` at the kept tokens' original positions."""
    scores = _token_scores(kv, name)
    positions = kv.positions[layer].to(scores.device)
    return scores[layer].float().gather(1, positions)[None].to(kv.device)


def expected(kv: KV, layer: int) -> torch.Tensor:
    """[1, H, K]: Expected Attention scores the engine computed at store time."""
    return _gathered(kv, "expected", layer)


def kvzip(kv: KV, layer: int) -> torch.Tensor:
    """[1, H, K]: KVzip (context reconstruction) scores the engine computed at store time."""
    return _gathered(kv, "kvzip", layer)


SCORERS: dict[str, Scorer] = {"knorm": knorm, "keydiff": keydiff, "snapkv": snapkv, "expected": expected, "kvzip": kvzip}


def available_scorers(kv: KV) -> frozenset[str]:
    """The scorers that can score this KV: the ones needing only keys, and those whose side data it carries."""
    names = {"knorm", "keydiff", *kv.token_scores}
    if kv.window_queries is not None:
        names.add("snapkv")
    return frozenset(names & set(SCORERS))


def protected(positions: torch.Tensor, tokens: int) -> torch.Tensor:
    """bool like positions: sink tokens and the last window, kept whatever their score."""
    return (positions < SINK_TOKENS) | (positions >= tokens - WINDOW_TOKENS)


def select(scores: torch.Tensor, positions: torch.Tensor, tokens: int, keep: int) -> torch.Tensor:
    """scores [1, H, K], positions [H, K] -> kept indices [1, H, keep] int64, ascending.

    The protected tokens plus the highest-scored others. keep >= K keeps everything."""
    kept = scores.shape[-1]
    if keep >= kept:
        return torch.arange(kept, device=scores.device).expand(1, scores.shape[1], kept)
    ranked = scores.float().masked_fill(protected(positions, tokens)[None], float("inf"))
    return ranked.topk(keep, dim=-1).indices.sort(dim=-1).values


def _scores_layers(kv: KV, scorer: str) -> torch.Tensor | None:
    """[L, 1, H, K] scores of every layer from the kernels (CUDA), or None where they cannot run."""
    if scorer in TOKEN_SCORERS and not isinstance(kv.positions, tuple):
        scores = _token_scores(kv, scorer)  # no kernel needed: one gather for every layer
        return scores.float().gather(2, kv.positions.to(scores.device))[:, None].to(kv.device)
    keys = kv.keys
    kernels = quant.kernels_for(keys[0])
    dim = kv.head_dim
    if kernels is None or dim < 16 or dim & (dim - 1) or not quant.same_layout(keys):
        return None
    if keys[0].dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return None
    if scorer == "knorm":
        return kernels.knorm_scores_layers(list(keys))
    if scorer == "keydiff":
        return kernels.keydiff_scores_layers(list(keys))
    _window_queries(kv, 0)  # the reference's checks and messages
    wq = kv.window_queries.to(keys[0].device).contiguous()  # [L, Hq, W, D]
    positions = kv.positions.to(keys[0].device, torch.int64)  # [L, H, K]
    return kernels.snapkv_scores_layers(list(keys), wq, positions, kv.tokens)


def select_layers(scores: torch.Tensor, positions: torch.Tensor, tokens: int, keep: int) -> torch.Tensor:
    """scores [L, 1, H, K], positions [L, H, K] -> kept indices [L, 1, H, keep], as `select`
    per layer, in one top-k over every layer (keep < K)."""
    ranked = scores[:, 0].float().masked_fill(protected(positions.to(scores.device), tokens), float("inf"))
    return ranked.topk(keep, dim=-1).indices.sort(dim=-1).values[:, None]


def keep_indices(kv: KV, scorer: str, ratio: float) -> torch.Tensor | None:
    """Kept indices [L, 1, H, keep] int64 (ascending per layer and head) of kept_count(kv.tokens,
    ratio) tokens chosen by `scorer`, or None when nothing is dropped (the KV already keeps
    no more than that)."""
    score = SCORERS[scorer]
    keep = kept_count(kv.tokens, ratio)
    if keep >= kv.kept_tokens:
        return None
    scores = _scores_layers(kv, scorer)
    if scores is not None:
        return select_layers(scores, kv.positions, kv.tokens, keep)
    return torch.stack([select(score(kv, layer), kv.positions[layer], kv.tokens, keep) for layer in range(kv.layers)])


def drop_tokens(kv: KV, scorer: str, ratio: float) -> KV:
    """Keep kept_count(kv.tokens, ratio) tokens per (layer, head), chosen by `scorer`.

    The ratio is of the full context (kv.tokens), so dropping from an already dropped KV
    only removes what is still over that count."""
    idx = keep_indices(kv, scorer, ratio)
    if idx is None:
        return kv
    keys, values = quant.gather_layers(kv.keys, idx), quant.gather_layers(kv.values, idx)
    positions = kv.positions.gather(2, idx[:, 0].to(kv.positions.device))  # [L, H, keep]
    return KV(tuple(keys), tuple(values), positions, kv.tokens, kv.window_queries, kv.token_scores)
