"""make_tier: the tier a TierConfig describes, each backend imported only when configured."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from evicctl.config import TierConfig, default_cache_dir
from evicctl.errors import UnknownNameError
from evicctl.manager.tiers.tier import (
    TIER_BACKENDS,
    CpuTier,
    Tier,
    configured_capacity_bytes,
    host_available_bytes,
)


def make_tier(cfg: TierConfig, rank: int, *, cache_dir: Path | None = None) -> Tier:
    """Build the tier a TierConfig describes. Capacity fractions are of available host memory
    (cpu), free space under the directory (disk), free device memory (gpu), and of the
    server's maxmemory, or available host memory when it has none (redis)."""
    if cfg.name == "cpu":
        return CpuTier(capacity_bytes=configured_capacity_bytes(cfg, host_available_bytes), name=cfg.name, rank=rank)
    if cfg.name == "disk":
        from evicctl.manager.tiers.disk import DiskTier

        path = Path(cfg.path) if cfg.path else Path(cache_dir or default_cache_dir()) / "disk"
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        capacity = configured_capacity_bytes(cfg, lambda: shutil.disk_usage(path).free)
        return DiskTier(path, capacity_bytes=capacity, name=cfg.name, rank=rank)
    if cfg.name == "redis":
        from evicctl.manager.tiers.remote_build import make_redis_tier

        return make_redis_tier(cfg, rank)
    if cfg.name == "gpu":
        from evicctl.manager.tiers.gpu import GpuTier

        capacity = configured_capacity_bytes(cfg, lambda: torch.cuda.mem_get_info()[0])
        return GpuTier(capacity_bytes=capacity, name=cfg.name, rank=rank)
    raise UnknownNameError("tier", cfg.name, TIER_BACKENDS)
