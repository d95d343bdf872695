"""Settings of the vLLM cache policy, read once from the environment at the edge.

vLLM builds the policy as `policy_cls(cache_capacity=num_chunks)`: nothing else reaches its
constructor, so the deployment's facts (where the store is, how many tokens and bytes a
chunk holds) come from EVICCTL_VLLM_* variables, set beside `vllm serve`. An unknown
EVICCTL_VLLM_* name is an error with a "did you mean": a typo must not silently fall back.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from evicctl.errors import UsageError

ENV_PREFIX = "EVICCTL_VLLM_"
DATA_DIR = Path(__file__).resolve().parents[1] / "data"
DEFAULT_COSTS = DATA_DIR / "h200_costs.json"


@dataclass(frozen=True)
class VllmPolicyConfig:
    """What the policy and its store recorder need to know about the deployment."""

    # tokens one offloaded chunk covers: vLLM's block_size * blocks_per_chunk (16 * 16 here)
    chunk_tokens: int = 256
    # KV bytes of one token over all layers (Llama-3.1-8B bf16: 2*32*8*128*2 = 128 KiB)
    kv_bytes_per_token: int = 131072
    # the prefill and host-read figures utility is priced with (evicctl's h200 cost file)
    costs_path: Path = DEFAULT_COSTS
    # frequency halves after this many finished requests: the clock is logical, not wall
    # time, so a replay prices the same as live serving and the hot path never reads a clock
    half_life_requests: float = 4000.0
    # evicted chunks whose frequency is remembered, as a multiple of the cache's chunks
    ghost_factor: float = 2.0
    # the evicctl store to record into; None: EVICCTL_DB, else evicctl's default path
    db_path: Path | None = None
    record: bool = True  # write inserts/evictions/contexts to the store
    flush_s: float = 0.5  # how often the recorder thread drains the journal into the store
    tenant: str = "default"

    @property
    def chunk_bytes(self) -> int:
        return self.chunk_tokens * self.kv_bytes_per_token

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> VllmPolicyConfig:
        env = os.environ if env is None else env
        known = {f.name: f for f in fields(cls)}
        values: dict = {}
        for name, raw in env.items():
            if not name.startswith(ENV_PREFIX):
                continue
            key = name[len(ENV_PREFIX):].lower()
            if key not in known:
                close = difflib.get_close_matches(key, list(known), n=1)
                hint = f"; did you mean {ENV_PREFIX}{close[0].upper()}?" if close else ""
                raise UsageError(f"unknown setting {name}{hint} (valid: {', '.join(ENV_PREFIX + k.upper() for k in known)})")
            values[key] = _parse(key, raw)
        config = cls(**values)
        config.check()
        return config

    def check(self) -> None:
        if self.chunk_tokens <= 0 or self.kv_bytes_per_token <= 0:
            raise UsageError("chunk_tokens and kv_bytes_per_token must be > 0")
        if not self.half_life_requests > 0 or self.ghost_factor < 0 or not self.flush_s > 0:
            raise UsageError("half_life_requests and flush_s must be > 0, ghost_factor >= 0")

    def resolved_db_path(self) -> Path:
        from evicctl.config import default_db_path

        return self.db_path if self.db_path is not None else default_db_path()


def _parse(key: str, raw: str):
    try:
        if key in ("chunk_tokens", "kv_bytes_per_token"):
            return int(raw)
        if key in ("half_life_requests", "ghost_factor", "flush_s"):
            return float(raw)
        if key in ("costs_path", "db_path"):
            return Path(raw).expanduser()
        if key == "record":
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes", "on")
        return raw
    except ValueError:
        raise UsageError(f"{ENV_PREFIX}{key.upper()}={raw!r} is not a valid value") from None
