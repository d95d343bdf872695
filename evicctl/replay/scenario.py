"""Scenarios: the measured costs a replay runs on (model shape, prefill timings, tier
bandwidths, decode throughput, tier capacity proportions, context lengths).

- `cpu-local`: this machine, measured by `python -m evicctl.replay.calibrate`
  (evicctl/data/cpu_local_costs.json): SmolLM2-135M prefill timings on 2 cores, the
  probed CpuTier and DiskTier bandwidths, the codecs' decode throughput. Contexts are the
  measured SQuAD contexts' lengths (~1k tokens).
- `h200`: Llama-3.1-8B-shaped prefill timings and H200 bandwidths, from
  evicctl/data/h200_costs.json when present, else DESIGN §8's figures
  (evicctl/data/h200_design_costs.json). Contexts are 2k-32k tokens (LongBench-like).

Tier capacities keep the paper's proportions (80 GB DRAM : 800 GB SSD, plus the KV share
of the GPU's memory where there is one) and are scaled to the workload: `capacity` is the
capacity of all tiers together as a fraction of the workload's total raw KV bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from evicctl.errors import UnknownNameError, UsageError

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
SCENARIOS = ("cpu-local", "h200", "<costs>.json")
DEFAULT_CAPACITY = 0.3  # all tiers together hold 30% of the workload's raw KV


@dataclass(frozen=True)
class ModelShape:
    """What sizes a KV: bytes per token = 2 * layers * kv_heads * head_dim * dtype_bytes."""

    name: str
    layers: int
    kv_heads: int
    head_dim: int
    dtype_bytes: int
    q_heads: int = 0  # with `window`, the snapkv window queries stored beside the KV
    window: int = 0

    @property
    def window_numel(self) -> int:
        return self.layers * self.q_heads * self.window * self.head_dim

    @property
    def bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes


@dataclass(frozen=True)
class TierSpec:
    name: str
    read_bps: float  # bytes/s from this tier to the compute device
    share: float  # capacity proportion (paper: DRAM 80, SSD 800)


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    model: ModelShape
    tiers: tuple[TierSpec, ...]  # fastest first
    prefill_samples: tuple[tuple[int, int, float], ...]  # (new_tokens, cached_tokens, seconds)
    decode_bps: dict[str, float]  # codec family -> stored bytes decoded per second
    context_tokens: dict  # {"distribution": "measured"} or {"distribution": "loguniform", "low", "high"}
    query_tokens: tuple[int, ...]  # measured question lengths (prompt tokens after the context)
    alpha: float  # seconds of TTFT one unit of quality is worth (default of the evicpress policy)
    source: str  # where the numbers come from
    capacity: float = DEFAULT_CAPACITY
    prefill_coef: tuple[float, ...] | None = None  # as fitted where measured, else fitted here
    extra: dict = field(default_factory=dict)

    def cost_model(self):
        """The manager's CostModel: the file's fitted coefficients (the CostModel's own fit, where
        the samples were measured), else a relative-error fit of its samples (fit_prefill)."""
        from evicctl.manager.costs import CostModel

        coef = self.prefill_coef or fit_prefill(self.prefill_samples)
        return CostModel(prefill_coef=coef, decode_bps=self.decode_bps)

    def with_tier_bps(self, name: str, read_bps: float) -> Scenario:
        if name not in {t.name for t in self.tiers}:
            raise UnknownNameError("tier", name, [t.name for t in self.tiers])
        tiers = tuple(TierSpec(t.name, read_bps if t.name == name else t.read_bps, t.share) for t in self.tiers)
        return _replace(self, tiers=tiers)

    def with_capacity(self, capacity: float) -> Scenario:
        if not capacity > 0:
            raise UsageError(f"capacity must be > 0 (a fraction of the workload's raw KV); got {capacity}")
        return _replace(self, capacity=float(capacity))

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "source": self.source,
            "model": self.model.__dict__,
            "tiers": [t.__dict__ for t in self.tiers],
            "prefill_samples": [list(s) for s in self.prefill_samples],
            "prefill_coef": list(self.cost_model().coef),
            "decode_bps": self.decode_bps,
            "context_tokens": self.context_tokens,
            "alpha": self.alpha,
            "capacity": self.capacity,
        }


def fit_prefill(samples) -> tuple[float, ...]:
    """The CostModel's prefill coefficients (a, b, c, d) of
    prefill_s = a + b*new + c*cached + d*new*(new + cached), fitted by non-negative least
    squares on RELATIVE error: samples span 3 ms to seconds, and an absolute fit would let
    the long prefills decide the short ones (the queries on a hit)."""
    import numpy as np
    from scipy.optimize import nnls

    data = np.asarray(samples, dtype=float)  # [S, 3]
    if len(data) < 3:
        raise UsageError(f"need at least 3 prefill samples to fit the cost model; got {len(data)}")
    new, cached = data[:, 0], data[:, 1]
    features = np.stack([np.ones_like(new), new, cached, new * (new + cached)], axis=1)  # the CostModel's
    x = features / data[:, 2:3]  # rows scaled by 1/seconds
    norm = np.maximum(np.abs(x).max(axis=0), 1e-30)  # a column of zeros (no cached samples) stays 0
    coef = nnls(x / norm, np.ones(len(data)))[0] / norm
    return tuple(float(c) for c in coef)


def _replace(s: Scenario, **changes) -> Scenario:
    from dataclasses import replace

    return replace(s, **changes)


def load_scenario(name: str, *, data_dir: Path = DATA_DIR) -> Scenario:
    """The named scenario from its data file (see the module docstring), or a cost file of
    the same format given by path (`--scenario my_costs.json`)."""
    if name.endswith(".json"):
        path = Path(name)
        if not path.is_file():
            raise UsageError(f"no scenario cost file at {path}")
        return scenario_from_dict(json.loads(path.read_text()), name=path.stem, source_path=path)
    if name == "cpu-local":
        return _from_file(data_dir / "cpu_local_costs.json", name, "python -m evicctl.replay.calibrate")
    if name == "h200":
        measured = data_dir / "h200_costs.json"
        if measured.is_file():
            # A malformed measured file is an error, never a silent switch to the design figures:
            # the tables would report costs nobody measured.
            try:
                return _from_h200_measured(json.loads(measured.read_text()), measured, data_dir)
            except (KeyError, TypeError, ValueError) as exc:
                raise UsageError(
                    f"scenario h200: {measured} is malformed ({type(exc).__name__}: {exc}); regenerate it with "
                    "benchmarks/gpu_bench.py on the GPU, or delete it to use the design figures"
                ) from None
        return _from_file(data_dir / "h200_design_costs.json", name, "the h200_design_costs.json shipped with evicctl")
    raise UnknownNameError("scenario", name, SCENARIOS)


def _from_file(path: Path, name: str, how: str) -> Scenario:
    if not path.is_file():
        raise UsageError(f"scenario {name}: no cost file at {path}; create it with {how}")
    return scenario_from_dict(json.loads(path.read_text()), name=name, source_path=path)


def scenario_from_dict(d: dict, *, name: str | None = None, source_path: Path | None = None) -> Scenario:
    m = d["model"]
    model = ModelShape(
        m["name"], int(m["layers"]), int(m["kv_heads"]), int(m["head_dim"]), int(m["dtype_bytes"]),
        int(m.get("q_heads", 0)), int(m.get("window", 0)),
    )
    tiers = tuple(TierSpec(t["name"], float(t["read_bps"]), float(t["share"])) for t in d["tiers"])
    samples = tuple((int(a), int(b), float(c)) for a, b, c in d["prefill_samples"])
    source = d.get("source", "")
    if source_path is not None:
        source = f"{source} [{source_path.name}]".strip()
    return Scenario(
        name=name or d["name"],
        description=d.get("description", ""),
        model=model,
        tiers=tiers,
        prefill_samples=samples,
        decode_bps={k: float(v) for k, v in d.get("decode_bps", {}).items()},
        context_tokens=dict(d.get("context_tokens", {"distribution": "measured"})),
        query_tokens=tuple(int(q) for q in d.get("query_tokens", (32,))),
        alpha=float(d.get("alpha", 2.0)),
        source=source,
        capacity=float(d.get("capacity", DEFAULT_CAPACITY)),
        prefill_coef=tuple(float(c) for c in d["prefill_coef"]) if d.get("prefill_coef") else None,
        extra={k: v for k, v in d.items() if k in ("measured_at", "notes", "capacity_gb")},
    )


def _from_h200_measured(d: dict, path: Path, data_dir: Path) -> Scenario:
    """The measured H200 file (benchmarks/gpu_bench.py), laid over the design file for anything it
    lacks (the workload shape: context and query lengths, alpha)."""
    base = json.loads((data_dir / "h200_design_costs.json").read_text())
    merged = {**base, **d}  # the workload shape (context and query lengths, alpha) stays the design's
    merged["source"] = d.get("source", "measured on the lent H200")
    merged["notes"] = f"{d.get('notes', '')} Workload shape from h200_design_costs.json.".strip()
    return scenario_from_dict(merged, name="h200", source_path=path)
