"""Building managers that share a tier, for the fleet tests and the multi-engine workers."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from evicctl.config import ManagerConfig, TierConfig
from evicctl.manager import KV, Manager

MIB = 1 << 20


def fleet_config(root: Path, url: str, namespace: str, engine: str, *, cpu_bytes: int = 4 * MIB,
                 shared_bytes: int = 64 * MIB, quotas=(), model: str = "tiny-llama") -> ManagerConfig:  # fmt: skip
    return ManagerConfig(
        db_path=root / engine / "evicctl.db", cache_dir=root / engine / "cache", codecs=("none", "int8"),
        tiers=(TierConfig("cpu", capacity_bytes=cpu_bytes),
               TierConfig("redis", capacity_bytes=shared_bytes, url=url, namespace=namespace, model=model,
                          engine=engine, tenant_quotas=quotas)),
    )  # fmt: skip


def make_kv(tokens: int = 256, seed: int = 0, layers: int = 2) -> KV:
    g = torch.Generator().manual_seed(seed)
    keys = [torch.randn(1, 3, tokens, 64, generator=g) for _ in range(layers)]
    values = [torch.randn(1, 3, tokens, 64, generator=g) for _ in range(layers)]
    return KV.full(keys, values)


def wait_for(predicate, timeout_s: float = 10.0, every_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"not true within {timeout_s} s: {predicate}")


def open_manager(root: Path, url: str, namespace: str, engine: str, **kw) -> Manager:
    return Manager(fleet_config(root, url, namespace, engine, **kw), probe=False).start()
