"""Helpers for the manager tests: small random KV tensors and configs on real files in a tmp dir."""

from __future__ import annotations

from pathlib import Path

import torch

from evicctl.config import ManagerConfig, TierConfig
from evicctl.manager.kv import KV

LAYERS, HEADS, TOKENS, HEAD_DIM = 2, 2, 64, 32
KV_BYTES = 2 * LAYERS * HEADS * TOKENS * HEAD_DIM * 4  # fp32: 65,536 bytes


def make_kv(seed: int = 0, tokens: int = TOKENS) -> KV:
    """A full fp32 KV of random values: [1, HEADS, tokens, HEAD_DIM] per layer."""
    g = torch.Generator().manual_seed(seed)
    keys = [torch.randn(1, HEADS, tokens, HEAD_DIM, generator=g) for _ in range(LAYERS)]
    values = [torch.randn(1, HEADS, tokens, HEAD_DIM, generator=g) for _ in range(LAYERS)]
    return KV.full(keys, values)


def make_config(root: Path, cpu_bytes: int = 4 * KV_BYTES, disk_bytes: int = 16 * KV_BYTES, **kw) -> ManagerConfig:
    return ManagerConfig(
        db_path=root / "evicctl.db",
        cache_dir=root / "cache",
        tiers=(TierConfig("cpu", capacity_bytes=cpu_bytes), TierConfig("disk", capacity_bytes=disk_bytes)),
        codecs=kw.pop("codecs", ("none", "int8", "int4", "knorm@0.5", "knorm@0.5+int8")),
        tick_s=kw.pop("tick_s", 0.02),
        **kw,
    )


