"""What a running manager says about itself: one frozen record, written by the manager into
`manager.config_json` and read back by the CLI, the dashboard and the snapshot.

Readers never re-declare the manager's defaults: a field an older manager did not write
takes ManagerConfig's default here, and nowhere else. `pricing` is the set of figures the
last executed plan priced every option with (DESIGN §1 utility), so that `evicctl show`
reprices a context with exactly the numbers the placer used.

Importing this module is cheap (no numpy, no torch): `evicctl ls` reads it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

from evicctl.config import ManagerConfig
from evicctl.errors import StoreError

DEFAULT_QUERY_TOKENS = 32.0  # query length a manager prices with before the engine reports a hit
# ManagerConfig's declared defaults: the one place a missing key's value comes from.
_CONFIG_DEFAULTS = {f.name: f.default for f in fields(ManagerConfig)}


@dataclass(frozen=True)
class PricingInputs:
    """The figures a plan priced its options with (see pricing.price_options)."""

    alpha: float  # seconds of TTFT one unit of quality is worth
    query_tokens: float  # query length each option's prefill was priced at
    read_bps: tuple[tuple[str, float], ...]  # (tier, bytes/s) fastest first, as measured (before the clamp)
    cost_model: dict  # CostModel.to_dict() of the model the plan used

    def tier_read_bps(self, tier: str) -> float | None:
        return dict(self.read_bps).get(tier)

    def to_json(self) -> dict:
        return {"alpha": self.alpha, "query_tokens": self.query_tokens,
                "read_bps": [[name, bps] for name, bps in self.read_bps], "cost_model": self.cost_model}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict) -> PricingInputs:
        return cls(float(data["alpha"]), float(data["query_tokens"]),
                   tuple((str(n), float(b)) for n, b in data["read_bps"]), dict(data["cost_model"]))  # fmt: skip


@dataclass(frozen=True)
class TierDescription:
    name: str
    backend: str
    rank: int  # 0 = fastest
    capacity_bytes: int
    path: str | None = None  # the folder of a file-backed tier (disk)


@dataclass(frozen=True)
class ManagerDescription:
    """See the module docstring. JSON keys are the field names."""

    alpha: float = _CONFIG_DEFAULTS["alpha"]
    codecs: tuple[str, ...] = _CONFIG_DEFAULTS["codecs"]
    tiers: tuple[TierDescription, ...] = ()
    db_path: str | None = None
    cache_dir: str | None = None
    disk_dir: str | None = None  # the disk tier's folder, resolved: the one this manager writes
    device: str = _CONFIG_DEFAULTS["device"]
    heartbeat_timeout_s: float = _CONFIG_DEFAULTS["heartbeat_timeout_s"]
    heartbeat_every_s: float | None = None
    tick_s: float = _CONFIG_DEFAULTS["tick_s"]
    replan_s: float = _CONFIG_DEFAULTS["replan_s"]
    quality_floor: float = _CONFIG_DEFAULTS["quality_floor"]
    tenant_quality_floors: tuple[tuple[str, float], ...] = ()
    reprofile_drop: float = _CONFIG_DEFAULTS["reprofile_drop"]
    query_tokens: float = DEFAULT_QUERY_TOKENS  # the current estimate (pricing has the plan's)
    kv_shape: dict | None = None  # layers, kv_heads, head_dim, dtype_bytes, window_numel of the last KV stored
    cost_model: dict | None = None  # the current fitted CostModel.to_dict(), carried over a restart
    pricing: PricingInputs | None = None  # of the last executed plan
    codec_backend: str = "torch (cpu)"  # what runs the codecs: triton on CUDA, else torch (said loudly)

    def to_json(self) -> dict:
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["codecs"] = list(self.codecs)
        out["tiers"] = [{f.name: getattr(t, f.name) for f in fields(t)} for t in self.tiers]
        out["tenant_quality_floors"] = dict(self.tenant_quality_floors)
        out["pricing"] = None if self.pricing is None else self.pricing.to_json()
        return out

    def to_json_text(self) -> str:
        return json.dumps(self.to_json())

    @classmethod
    def from_json(cls, data: dict | str | None) -> ManagerDescription:
        """From to_json's dict (or its text). Keys an older manager did not write take their
        defaults; keys this version does not know (a newer manager's) are ignored, so an old
        CLI can still read a new manager's row."""
        if isinstance(data, str):
            try:
                data = json.loads(data or "{}")
            except ValueError as exc:  # only a writer other than a manager can leave this
                raise StoreError(f"manager.config_json is not valid JSON: {exc}") from None
        data = data or {}
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in data.items() if k in known and v is not None}
        if "codecs" in kw:
            kw["codecs"] = tuple(kw["codecs"])
        if "tiers" in kw:
            kw["tiers"] = tuple(_tier(t) for t in kw["tiers"])
        if "tenant_quality_floors" in kw:
            kw["tenant_quality_floors"] = tuple((str(k), float(v)) for k, v in dict(kw["tenant_quality_floors"]).items())
        if "pricing" in kw:
            kw["pricing"] = PricingInputs.from_json(kw["pricing"])
        return cls(**kw)


def _tier(data: dict) -> TierDescription:
    known = {f.name for f in fields(TierDescription)}
    return TierDescription(**{k: v for k, v in data.items() if k in known})
