"""Frozen configuration, built in code by the engine; flags and files are parsed at the edges."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

# Default codec menu the placer chooses from (DESIGN §3; `@r` = fraction of tokens removed).
DEFAULT_CODECS: tuple[str, ...] = (
    "none",
    "int8",
    "int4",
    "snapkv@0.25",
    "snapkv@0.5",
    "snapkv@0.75",
    "keydiff@0.25",
    "keydiff@0.5",
    "keydiff@0.75",
    "knorm@0.25",
    "knorm@0.5",
    "knorm@0.75",
    "snapkv@0.25+int8",
    "snapkv@0.5+int8",
    "keydiff@0.5+int8",
    "knorm@0.5+int8",
)


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "evicctl"


def default_db_path() -> Path:
    """`EVICCTL_DB`, else `$XDG_STATE_HOME/evicctl/evicctl.db`."""
    env = os.environ.get("EVICCTL_DB")
    return Path(env) if env else default_state_dir() / "evicctl.db"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "evicctl"


@dataclass(frozen=True)
class TierConfig:
    """One storage tier. Exactly one of capacity_bytes / capacity_fraction is set.

    capacity_fraction is of free device memory (gpu), available host memory (cpu) or free
    disk space under `path` (disk), read once at start.
    """

    name: str  # gpu | cpu | disk | redis
    capacity_bytes: int | None = None
    capacity_fraction: float | None = None
    path: Path | None = None  # disk: directory of the safetensors files
    url: str | None = None  # redis: redis://host:port/db

    def __post_init__(self) -> None:
        if (self.capacity_bytes is None) == (self.capacity_fraction is None):
            raise ValueError(f"tier {self.name}: set exactly one of capacity_bytes, capacity_fraction")


@dataclass(frozen=True)
class ManagerConfig:
    db_path: Path = field(default_factory=default_db_path)
    cache_dir: Path = field(default_factory=default_cache_dir)
    # Fastest first. Without CUDA the top tier is `cpu`.
    tiers: tuple[TierConfig, ...] = (
        TierConfig("cpu", capacity_bytes=256 << 20),
        TierConfig("disk", capacity_bytes=2 << 30),
    )
    codecs: tuple[str, ...] = DEFAULT_CODECS
    alpha: float = 2.0  # seconds of TTFT one unit of quality is worth (U = freq*(alpha*q - ttft))
    freq_half_life_s: float = 300.0
    tick_s: float = 0.05  # control loop period: command pick-up latency
    replan_s: float = 2.0  # re-plan on a timer even without pressure
    # A timer re-plan does not move a context again within this long of its last move
    # (hysteresis: a promote/demote pair every replan_s is churn, each a copy and a delete).
    rebalance_min_residence_s: float = 30.0
    heartbeat_timeout_s: float = 5.0  # CLI: a heartbeat older than this means no manager
    quality_floor: float = 0.0  # default floor; per context / tenant overrides in the store
    tenant_quality_floors: tuple[tuple[str, float], ...] = ()
    reprofile_drop: float = 0.3  # re-profile when online quality falls this far below the profile
    samples_retention_s: float = 3600.0
    device: str = "cpu"  # compute device the engine wants KV on
