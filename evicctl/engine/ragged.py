"""Attention over a cache whose layers hold different numbers of tokens (PyramidKV).

transformers 5.x builds one causal mask per forward, sized from one layer's cache length
(masking_utils.create_causal_mask sizes it from the first layer), and hands it to every
layer. DynamicCache itself accepts layers of different lengths, and with sdpa a one-token
step needs no mask, but a multi-token question (the prompt, a teacher-forced answer; with
eager, every step) gives the other layers a mask of the wrong width, and attention fails on
the shape.

`allow_ragged_layers(model)` registers, through transformers' AttentionInterface and
AttentionMaskInterface, an attention implementation that wraps the model's own (sdpa or
eager) and fits the mask to each layer's key length: the new tokens are the last Q keys of
every layer. The layers differ only in the context they kept, at the front of the cache;
everything after it (the question, generated tokens, and any padding among them) is the
same in every layer. So a layer whose cache is d keys shorter than the first layer's gets
the mask without its first d columns, which must be attended context keys: a mask that
hides a context key (padding inside the stored context) cannot be fitted, since the
layers' context keys do not line up, and raises instead of attending to the wrong keys.
Where the mask already fits (every layer of a uniform cache) the wrapped implementation
gets exactly its arguments, so switching a model over changes nothing else.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch

PREFIX = "evicctl_ragged_"
SUPPORTED = ("sdpa", "eager")


def layer_mask(
    mask: torch.Tensor | None,
    key_length: int,
    query_length: int,
    query: torch.Tensor,
    additive: bool = False,
) -> torch.Tensor | None:
    """The mask for one layer of `key_length` keys, the last `query_length` of them new.

    mask: what create_causal_mask built (bool, True = attend, or additive float, 0 = attend),
    [B, 1|H, Q, K0] from the first layer's length, or None (no mask needed there). query:
    the layer's queries (device, dtype). additive: a mask built here is additive float (eager)."""
    if mask is None:
        if query_length == 1 or key_length == query_length:
            return None  # sdpa's is_causal (or nothing to hide) is right for this layer too
        # bottom-right causal: query i sees every cached key and the new keys up to itself
        q = torch.arange(query_length, device=query.device)[:, None]
        k = torch.arange(key_length, device=query.device)[None]
        allowed = (k <= key_length - query_length + q)[None, None]  # [1, 1, Q, K]
        if not additive:
            return allowed
        return torch.zeros(allowed.shape, dtype=query.dtype, device=query.device).masked_fill_(
            ~allowed, torch.finfo(query.dtype).min
        )
    delta = mask.shape[-1] - key_length  # layer 0's context keys this layer does not hold
    if delta == 0:
        return mask
    attend = (
        torch.ones((), dtype=torch.bool)
        if mask.dtype == torch.bool
        else torch.zeros((), dtype=mask.dtype)
    )
    attend = attend.to(mask.device)
    if delta < 0:  # a layer holding more context than layer 0: its extra keys are attended
        return torch.cat((attend.expand(*mask.shape[:-1], -delta), mask), dim=-1)
    if not bool((mask[..., :delta] == attend).all()):
        raise ValueError(
            "a mask that hides context keys cannot be fitted to cache layers of different lengths"
        )
    return mask[..., delta:]


def _wrapped(base: str) -> Callable:
    """An attention function that fits the mask to the layer, then runs `base`."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    def attention(module, query, key, value, attention_mask, **kwargs):
        if base == "eager":  # each model defines its own eager function
            impl = inspect.getmodule(type(module)).eager_attention_forward
        else:
            impl = ALL_ATTENTION_FUNCTIONS[base]
        mask = layer_mask(
            attention_mask, key.shape[2], query.shape[2], query, additive=base == "eager"
        )
        return impl(module, query, key, value, mask, **kwargs)

    return attention


def allow_ragged_layers(model) -> None:
    """Let `model` attend over caches whose layers differ in length (idempotent; see the
    module docstring). Raises ValueError for an attention implementation other than sdpa or eager."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    base = model.config._attn_implementation
    if base.startswith(PREFIX):
        return
    if base not in SUPPORTED:
        raise ValueError(
            f"cache layers of different lengths need sdpa or eager attention; the model uses {base!r}"
        )
    name = PREFIX + base
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, _wrapped(base))
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])
    model.config._attn_implementation = name


def is_ragged(cache) -> bool:
    """Whether a DynamicCache's layers hold different numbers of tokens."""
    lengths = {
        layer.keys.shape[-2]
        for layer in getattr(cache, "layers", ())
        if getattr(layer, "keys", None) is not None
    }
    return len(lengths) > 1


__all__ = ["allow_ragged_layers", "is_ragged", "layer_mask"]
