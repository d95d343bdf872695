"""ThinK key-channel pruning (arXiv 2407.21018; kvpress ``ThinKPress``), stored for real.

Score of channel d of kv head h in a layer (kvpress's arithmetic, in fp32):
``mean_w(q[g, w, d]^2)`` averaged over the GQA group g of h, times ``mean_t(k[h, t, d]^2)``,
with q the KV's post-RoPE window queries (``KV.window_queries``, the last WINDOW prompt
positions: kvpress recomputes the same queries with ``window_size``) and k the keys kept
so far (after any token dropping, as kvpress's ``ComposedPress([SnapKVPress, ThinKPress])``).
The lowest-scored channels are pruned. kvpress zeroes them and saves nothing; here only the
kept channels are stored, with their indices, and decoding scatters them back among zeros,
so a decoded KV is what kvpress's press leaves (the pruned channels contribute 0 to q.k).
On CUDA the scatter is fused into the dequantize (quant.dequantize_layers' ``channels``).

A decoded KV's pruned channels are zeros and score 0, so pruning it again at the same or a
harder ratio removes them first (names.derivable relies on it).
"""

from __future__ import annotations

import torch

from evicctl.manager.kv import KV


def channel_scores(keys: list[torch.Tensor], window_queries: torch.Tensor | None) -> torch.Tensor:
    """keys: per layer [1, H, K_l, D]; window_queries [L, Hq, W, D] -> scores [L, H, D] float32."""
    if window_queries is None:
        raise ValueError(
            "think needs kv.window_queries [layers, q_heads, window, head_dim] "
            "(the post-RoPE queries of the last prompt positions); pass them when storing the context"
        )
    layers, heads, dim = len(keys), keys[0].shape[1], keys[0].shape[3]
    if (
        window_queries.shape[0] != layers
        or window_queries.shape[3] != dim
        or window_queries.shape[1] % heads
    ):
        raise ValueError(
            f"window_queries must be [{layers}, q_heads (multiple of {heads}), window, {dim}]; "
            f"got {tuple(window_queries.shape)}"
        )
    wq = window_queries.to(keys[0].device, torch.float32)
    # query head h*G + r reads kv head h (HF repeat_kv order), as kvpress's view(.., H, G, D)
    queries = wq.pow(2).mean(dim=2).view(layers, heads, -1, dim).mean(dim=2)  # [L, H, D]
    key_energy = torch.stack([k[0].float().pow(2).mean(dim=1) for k in keys])  # [L, H, D]
    return queries * key_energy


def kept_channel_indices(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """scores [L, H, D] -> the `keep` highest-scored channels per (layer, head), [L, H, keep]
    int64 ascending (kvpress prunes the D - keep lowest: the same set up to ties)."""
    return scores.topk(keep, dim=-1).indices.sort(dim=-1).values


def prune(keys: list[torch.Tensor], kv: KV, keep: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Keys per layer [1, H, K_l, D] -> (their `keep` kept channels [1, H, K_l, keep] per
    layer, channel indices [L, H, keep] int64), scored with kv's window queries."""
    idx = kept_channel_indices(channel_scores(keys, kv.window_queries), keep)
    return [gather_channels(k, idx[i]) for i, k in enumerate(keys)], idx


def gather_channels(k: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """k [1, H, K, D], idx [H, C] -> [1, H, K, C]."""
    return k.gather(3, idx.to(k.device)[None, :, None, :].expand(1, -1, k.shape[2], -1))


def restore(k: torch.Tensor, idx: torch.Tensor, head_dim: int) -> torch.Tensor:
    """k [1, H, K, C] kept channels, idx [H, C] -> [1, H, K, head_dim], zeros elsewhere."""
    return restore_into(k.new_zeros(*k.shape[:3], head_dim), k, idx)


def restore_into(full: torch.Tensor, k: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Write kept channels k [..., H, K, C] into their columns idx [..., H, C] of `full`
    [..., H, K, head_dim] (zeros elsewhere: the caller's), in one scatter: one layer
    (k [1, H, K, C], idx [H, C]) or every layer at once (k [L, 1, H, K, C], idx [L, H, C])."""
    index = idx.to(full.device, torch.int64).unsqueeze(-2).unsqueeze(-4)  # [(L,) 1, H, 1, C]
    return full.scatter_(-1, index.expand_as(k), k)


def check_indices(idx: torch.Tensor, head_dim: int) -> torch.Tensor:
    """idx [..., C] (kept channels of a stored form), raising ValueError unless they are
    ascending (so distinct) and in [0, head_dim), as prune stores them: the decode writes at
    them (a scatter, or the kernels' stores, which check nothing)."""
    if not idx.numel():
        return idx
    ascending = bool((idx[..., 1:] > idx[..., :-1]).all())
    if not ascending or int(idx.min()) < 0 or int(idx.max()) >= head_dim:
        raise ValueError(f"kept key channels must ascend within [0, {head_dim})")
    return idx


__all__ = [
    "channel_scores",
    "check_indices",
    "gather_channels",
    "kept_channel_indices",
    "prune",
    "restore",
    "restore_into",
]
