"""Frozen configuration, built in code by the engine; flags and files are parsed at the edges."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

# The default codec menu the placer chooses from (DESIGN §3; `@r` = fraction of tokens removed),
# generated here and nowhere else from token-dropping families x ratios x quantization widths.
# Dropping alone is kept (the paper's menu: its profiles are comparable); quantization alone at
# every width; drop+quant at 4 and 2 bits, the combinations below int4's size (DESIGN §10: with
# drop+int4 in the menu the joint policy beats the best single codec ~1.4x, against ~1.1x).
# drop+int8 is left out: it is about 2x the bytes of drop+int4 for ~1% quality (int8 .99 vs
# int4 .99 teacher-forced), and drop+int3 sits between two rows already there; each codec
# costs a profile per context and an option per context x tier in the placer.
MENU_SCORERS: tuple[str, ...] = ("snapkv", "keydiff", "knorm")
MENU_RATIOS: tuple[float, ...] = (0.25, 0.5, 0.75)
MENU_QUANT_WIDTHS: tuple[int, ...] = (8, 4, 3, 2)  # alone
MENU_COMBO_WIDTHS: tuple[int, ...] = (4, 2)  # after dropping
# PyramidKV (per-layer budgets, `-pyramid`) on SnapKV, as kvpress pairs it, at 0.5: at 0.75 a
# ~1k-token context's budgets fall back to uniform (codecs/budgets.py), the same as snapkv@0.75.
# Alone and with int4: the pyramid's question is whether other layers should keep the tokens.
MENU_PYRAMID_DROPS: tuple[str, ...] = ("snapkv@0.5",)
MENU_PYRAMID_WIDTHS: tuple[int, ...] = (4,)
# ThinK (key channels, `think@c`) at half the key channels: it only composes (alone it saves
# a quarter of the KV, less than int8), so with int4 alone and after SnapKV's drop at 0.5.
MENU_THINK_RATIOS: tuple[float, ...] = (0.5,)
MENU_THINK_DROPS: tuple[str, ...] = ("", "snapkv@0.5")  # "" = no token dropping
MENU_THINK_WIDTHS: tuple[int, ...] = (4,)
# Scorers that need the model (the engine computes their per-token scores when it stores a
# context: Expected Attention always, KVzip when configured; a context without them is never
# offered their codecs) at every ratio, alone and with int4 and int2: the best drops measured
# (teacher-forced at 0.5 kvzip .94, expected .92 against snapkv .85; kvzip@0.25+int4 .975 at
# 0.24 of fp16, the one codec under int4's size that meets 0.97 on average; engine/priors.py).
MENU_MODEL_SCORERS: tuple[str, ...] = ("kvzip", "expected")
MENU_MODEL_RATIOS: tuple[float, ...] = (0.25, 0.5, 0.75)
MENU_MODEL_WIDTHS: tuple[int, ...] = (4, 2)


def generate_menu(
    scorers: tuple[str, ...] = MENU_SCORERS,
    ratios: tuple[float, ...] = MENU_RATIOS,
    quant_widths: tuple[int, ...] = MENU_QUANT_WIDTHS,
    combo_widths: tuple[int, ...] = MENU_COMBO_WIDTHS,
    pyramid_drops: tuple[str, ...] = MENU_PYRAMID_DROPS,
    pyramid_widths: tuple[int, ...] = MENU_PYRAMID_WIDTHS,
    think_ratios: tuple[float, ...] = MENU_THINK_RATIOS,
    think_drops: tuple[str, ...] = MENU_THINK_DROPS,
    think_widths: tuple[int, ...] = MENU_THINK_WIDTHS,
    model_scorers: tuple[str, ...] = MENU_MODEL_SCORERS,
    model_ratios: tuple[float, ...] = MENU_MODEL_RATIOS,
    model_widths: tuple[int, ...] = MENU_MODEL_WIDTHS,
) -> tuple[str, ...]:
    """Codec names, in canonical spelling: none, each width alone, each (scorer, ratio) alone,
    each (scorer, ratio, combo width); then each pyramid drop alone and with each of its
    widths; then each (think drop, think ratio, think width). 1 + Q + S*R*(1 + W) +
    P*(1 + PW) + TD*TR*TW names; then each (model scorer, ratio) alone and with each model width:
    + MS*MR*(1 + MW)."""
    drops = [f"{s}@{r!r}" for s in scorers for r in ratios]
    pyramids = [f"{d}-pyramid" for d in pyramid_drops]
    thinks = [f"think@{c!r}" for c in think_ratios]
    model_drops = [f"{s}@{r!r}" for s in model_scorers for r in model_ratios]
    return (
        "none",
        *(f"int{b}" for b in quant_widths),
        *drops,
        *(f"{d}+int{b}" for d in drops for b in combo_widths),
        *(p for d in pyramids for p in (d, *(f"{d}+int{b}" for b in pyramid_widths))),
        *(f"{d}+{t}+int{b}".lstrip("+") for d in think_drops for t in thinks for b in think_widths),
        *(c for d in model_drops for c in (d, *(f"{d}+int{b}" for b in model_widths))),
    )


DEFAULT_CODECS: tuple[str, ...] = generate_menu()


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
    # redis, shared by several managers (docs/fleet.md): objects addressed by the model's
    # fingerprint, capacity_bytes is the cluster's, accounted and evicted cluster-wide.
    shared: bool = True  # False: this manager's own keyspace and accounting, as before
    model: str | None = None  # the model's identity (name@revision/dtype); None -> "default"
    engine: str | None = None  # this manager's name in the fleet (default host-pid)
    namespace: str = "evk"  # key prefix: fleets that must never see each other differ here
    tenant_quotas: tuple[tuple[str, int], ...] = ()  # (tenant, bytes) written to the cluster

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
    # Prometheus /metrics (needs the `metrics` extra): None = off; 0 = any free port (see
    # Manager.metrics_url). Loopback by default: set "0.0.0.0" to let a remote Prometheus scrape.
    metrics_port: int | None = None
    metrics_bind: str = "127.0.0.1"


def per_store_disk_dir(db_path: Path | str, cache_dir: Path | str) -> Path:
    """The disk tier's default folder for one database: cache_dir/disk/<12 hex of its path>.

    One folder per database, never one shared: a manager deletes at start every file its own
    store does not know (orphans of a crash), which would be the other stores' files. The
    manager and the demo both call this; a second derivation would be a data-loss risk."""
    import hashlib

    db = Path(db_path).expanduser().resolve()
    return Path(cache_dir).expanduser() / "disk" / hashlib.sha256(str(db).encode()).hexdigest()[:12]
