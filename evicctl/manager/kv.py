"""The KV form: one context's KV cache, independent of any engine's cache object."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class KV:
    """A context's KV cache.

    keys[i], values[i]: [1, kv_heads, kept_tokens, head_dim] for layer i.
    positions: [kept_tokens] int64, the original position of every kept token
        (arange(tokens) when nothing was dropped); the engine continues positions
        from ``tokens`` for the query.
    tokens: token count of the full (uncompressed) context.
    window_queries: optional [layers, q_heads, window, head_dim] queries of the last
        prompt positions, kept with the context for the ``snapkv`` scorer.
    """

    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]
    positions: torch.Tensor
    tokens: int
    window_queries: torch.Tensor | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if len(self.keys) != len(self.values) or not self.keys:
            raise ValueError("KV needs the same positive number of key and value layers")
        kept = self.positions.shape[0]
        for k, v in zip(self.keys, self.values, strict=True):
            if k.dim() != 4 or k.shape[0] != 1 or k.shape[2] != kept or k.shape != v.shape:
                raise ValueError(
                    f"layer shapes must be [1, kv_heads, {kept}, head_dim]; got {tuple(k.shape)} / {tuple(v.shape)}"
                )

    @property
    def layers(self) -> int:
        return len(self.keys)

    @property
    def kv_heads(self) -> int:
        return self.keys[0].shape[1]

    @property
    def head_dim(self) -> int:
        return self.keys[0].shape[3]

    @property
    def kept_tokens(self) -> int:
        return int(self.positions.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return self.keys[0].dtype

    @property
    def device(self) -> torch.device:
        return self.keys[0].device

    @property
    def nbytes(self) -> int:
        """Bytes of keys, values and positions (window queries excluded: they are metadata)."""
        kv_bytes = sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))
        return kv_bytes + self.positions.numel() * self.positions.element_size()

    def to(self, device: torch.device | str, non_blocking: bool = False) -> KV:
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return KV(
            keys=tuple(move(k) for k in self.keys),
            values=tuple(move(v) for v in self.values),
            positions=move(self.positions),
            tokens=self.tokens,
            window_queries=None if self.window_queries is None else move(self.window_queries),
        )


def raw_kv_bytes(tokens: int, layers: int, kv_heads: int, head_dim: int, dtype_bytes: int) -> int:
    """Bytes of an uncompressed KV of `tokens` tokens (keys + values + int64 positions)."""
    return 2 * layers * kv_heads * tokens * head_dim * dtype_bytes + 8 * tokens
