"""Request traces for the replay: who asks for which context when, and how long the question is.

Same model as the engine's workload (evicctl.engine.workload): Zipf popularity over a
seeded random ranking of the contexts, Poisson arrivals at a given rate; or the timestamps
(and optionally contexts) of a CSV trace. Drawn in one vectorised pass, so 100,000 requests
take milliseconds; the same seed gives the same requests for every policy.

Popularity drift: the trace is cut into phases, and at each phase boundary a share `drift`
of the ranking's positions trade contexts at random (hot contexts go cold and vice versa).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evicctl.engine.workload import read_csv_trace, zipf_weights
from evicctl.errors import UsageError

DRIFT_PHASES = 10


@dataclass(frozen=True, eq=False)
class Trace:
    at_s: np.ndarray  # [R] arrival, seconds from the start
    context: np.ndarray  # [R] int64 index into the catalog's contexts
    query_tokens: np.ndarray  # [R] int64 tokens prefilled after the context
    description: str = ""

    def __len__(self) -> int:
        return len(self.context)

    def __post_init__(self) -> None:
        if not (len(self.at_s) == len(self.context) == len(self.query_tokens)):
            raise ValueError("trace arrays must have one entry per request")

    def to_json(self) -> dict:
        return {
            "requests": len(self),
            "duration_s": float(self.at_s[-1]) if len(self) else 0.0,
            "distinct_contexts": int(len(np.unique(self.context))),
            "description": self.description,
        }


def zipf_trace(
    n_contexts: int,
    requests: int,
    *,
    qps: float,
    zipf: float,
    seed: int,
    query_tokens: tuple[int, ...] | np.ndarray = (32,),
    drift: float = 0.0,
) -> Trace:
    """Poisson arrivals at `qps`, contexts by Zipf(`zipf`) popularity over a seeded ranking."""
    if requests <= 0:
        raise UsageError(f"requests must be > 0; got {requests}")
    if qps <= 0:
        raise UsageError(f"qps must be > 0; got {qps}")
    if not 0.0 <= drift <= 1.0:
        raise UsageError(f"drift must be in [0, 1]; got {drift}")
    rng = np.random.default_rng(seed)
    ranking = rng.permutation(n_contexts)
    weights = zipf_weights(n_contexts, zipf)
    at_s = np.cumsum(rng.exponential(1.0 / qps, requests))
    rank = rng.choice(n_contexts, size=requests, p=weights)  # popularity rank of each request
    if drift > 0:
        context = np.empty(requests, dtype=np.int64)
        bounds = np.linspace(0, requests, DRIFT_PHASES + 1).astype(np.int64)
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            context[lo:hi] = ranking[rank[lo:hi]]
            moved = rng.choice(n_contexts, size=int(round(drift * n_contexts)), replace=False)
            ranking[moved] = ranking[rng.permutation(moved)]
    else:
        context = ranking[rank]
    q = rng.choice(np.asarray(query_tokens, dtype=np.int64), size=requests)
    desc = f"zipf {zipf}, {qps} qps, seed {seed}" + (f", drift {drift}" if drift else "")
    return Trace(at_s, context.astype(np.int64), q, desc)


def csv_trace(
    path: Path | str,
    n_contexts: int,
    *,
    zipf: float,
    seed: int,
    query_tokens: tuple[int, ...] | np.ndarray = (32,),
    context_ids: list[str] | None = None,
) -> Trace:
    """A CSV trace (`timestamp`, optional `context`: an index or one of `context_ids`);
    rows without a context draw one by Zipf popularity, as the engine's replay does."""
    rows = read_csv_trace(Path(path))
    if not rows:
        raise UsageError(f"{path}: the trace has no requests")
    rng = np.random.default_rng(seed)
    ranking = rng.permutation(n_contexts)
    weights = zipf_weights(n_contexts, zipf)
    by_id = {c: i for i, c in enumerate(context_ids or [])}
    at_s = np.array([ts for ts, _ in rows]) - rows[0][0]
    drawn = ranking[rng.choice(n_contexts, size=len(rows), p=weights)]
    context = np.empty(len(rows), dtype=np.int64)
    for k, (_, ctx) in enumerate(rows):
        if not ctx:
            context[k] = drawn[k]
        elif ctx in by_id:
            context[k] = by_id[ctx]
        elif ctx.isdigit() and int(ctx) < n_contexts:
            context[k] = int(ctx)
        else:
            raise UsageError(f"{path}: trace names context {ctx!r}; valid: ids or 0..{n_contexts - 1}")
    q = rng.choice(np.asarray(query_tokens, dtype=np.int64), size=len(rows))
    return Trace(at_s, context, q, f"{Path(path).name}, {len(rows)} requests")
