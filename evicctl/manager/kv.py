"""The KV form: one context's KV cache, independent of any engine's cache object."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class KV:
    """A context's KV cache.

    keys[i], values[i]: [1, kv_heads, kept_i, head_dim] for layer i.
    positions: [layers, kv_heads, kept] int64, the original position of every kept token
        per layer and head (scorers choose per head, as kvpress does; every head keeps the
        same count). arange(tokens) broadcast when nothing was dropped. When the layers
        keep different counts (PyramidKV's per-layer budgets) a tuple of one [kv_heads,
        kept_i] tensor per layer instead: the KV is then ``ragged``.
        Keys are stored after RoPE, so positions are bookkeeping: the engine continues
        the query's positions from ``tokens``, not from ``kept_tokens``.
    tokens: token count of the full (uncompressed) context.
    window_queries: optional [layers, q_heads, window, head_dim] queries of the last
        prompt positions, kept with the context for the ``snapkv`` scorer.
    token_scores: optional scorer name -> [layers, kv_heads, tokens] per-token scores the
        engine computed when it stored the context (``expected``, ``kvzip``: they need the
        model), indexed by original position, so a dropped KV is re-scored by gathering at
        ``positions``.
    """

    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]
    positions: torch.Tensor | tuple[torch.Tensor, ...]
    tokens: int
    window_queries: torch.Tensor | None = field(default=None, compare=False)
    token_scores: dict[str, torch.Tensor] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if len(self.keys) != len(self.values) or not self.keys:
            raise ValueError("KV needs the same positive number of key and value layers")
        heads = self.keys[0].shape[1]
        if self.ragged:
            if len(self.positions) != len(self.keys):
                raise ValueError(f"ragged positions need one tensor per layer ({len(self.keys)}); got {len(self.positions)}")
            kept = [p.shape[-1] for p in self.positions]
            if any(p.dim() != 2 or p.shape[0] != heads for p in self.positions):
                raise ValueError(f"ragged positions must be [kv_heads={heads}, kept] per layer")
        else:
            kept = [self.positions.shape[-1]] * len(self.keys)
            want = (len(self.keys), heads, kept[0])
            if tuple(self.positions.shape) != want:
                raise ValueError(f"positions must be [layers, kv_heads, kept] = {want}; got {tuple(self.positions.shape)}")
        for k, v, n in zip(self.keys, self.values, kept, strict=True):
            if k.dim() != 4 or k.shape[0] != 1 or k.shape[1] != heads or k.shape[2] != n or k.shape != v.shape:
                raise ValueError(
                    f"layer shapes must be [1, {heads}, {n}, head_dim]; got {tuple(k.shape)} / {tuple(v.shape)}"
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
    def ragged(self) -> bool:
        """Whether the layers keep different token counts (positions is then a tuple)."""
        return isinstance(self.positions, tuple)

    @property
    def layer_kept(self) -> tuple[int, ...]:
        """Tokens per head each layer keeps."""
        return tuple(int(k.shape[2]) for k in self.keys)

    @property
    def kept_tokens(self) -> int:
        """Tokens per head kept in every layer; of a ragged KV, the mean over layers (rounded
        down): what a query attends to per layer on average."""
        if self.ragged:
            return sum(self.layer_kept) // self.layers
        return int(self.positions.shape[-1])

    @property
    def dtype(self) -> torch.dtype:
        return self.keys[0].dtype

    @property
    def device(self) -> torch.device:
        return self.keys[0].device

    @property
    def nbytes(self) -> int:
        """Bytes of keys and values in memory (positions and window queries are bookkeeping)."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    @classmethod
    def full(cls, keys, values, window_queries=None) -> KV:
        """An uncompressed KV: every token kept, positions = arange(tokens)."""
        layers, (_, heads, tokens, _) = len(keys), keys[0].shape
        positions = torch.arange(tokens, device=keys[0].device).expand(layers, heads, tokens)
        return cls(tuple(keys), tuple(values), positions, tokens, window_queries)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> KV:
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return KV(
            keys=tuple(move(k) for k in self.keys),
            values=tuple(move(v) for v in self.values),
            positions=tuple(move(p) for p in self.positions) if self.ragged else move(self.positions),
            tokens=self.tokens,
            window_queries=None if self.window_queries is None else move(self.window_queries),
            token_scores={name: move(s) for name, s in self.token_scores.items()},
        )

    @property
    def side_numel(self) -> int:
        """Elements of the side tensors a stored form carries in 16 bits (window queries and
        token scores): the ``window_numel`` of the size arithmetic (names.py)."""
        wq = 0 if self.window_queries is None else self.window_queries.numel()
        return wq + sum(s.numel() for s in self.token_scores.values())


def raw_kv_bytes(tokens: int, layers: int, kv_heads: int, head_dim: int, dtype_bytes: int) -> int:
    """Bytes of an uncompressed KV of `tokens` tokens (keys + values)."""
    return 2 * layers * kv_heads * tokens * head_dim * dtype_bytes
