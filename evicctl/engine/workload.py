"""Request streams over a set of contexts: Zipf popularity with Poisson arrivals, or a replay
of a timestamps file. Deterministic by seed; questions come from each context's test half."""

from __future__ import annotations

import csv
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evicctl.engine.data import QA, Context
from evicctl.errors import UsageError


@dataclass(frozen=True)
class Request:
    index: int
    at_s: float  # arrival, seconds from the start of the run
    context: Context
    qa: QA


def zipf_weights(n: int, exponent: float) -> np.ndarray:
    """Popularity of ranks 1..n: p(rank) proportional to rank**-exponent."""
    if n <= 0:
        raise UsageError("a workload needs at least one context")
    if exponent < 0:
        raise UsageError(f"zipf exponent must be >= 0; got {exponent}")
    w = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    return w / w.sum()


class _Questions:
    """Cycles each context's test questions in a seeded order, so repeats come late."""

    def __init__(self, contexts: Sequence[Context], rng: np.random.Generator) -> None:
        self._cycles = {
            c.id: itertools.cycle([c.test[i] for i in rng.permutation(len(c.test))] or list(c.profiling))
            for c in contexts
        }

    def next(self, context: Context) -> QA:
        return next(self._cycles[context.id])


def zipf_poisson(
    contexts: Sequence[Context],
    *,
    rate_rps: float,
    exponent: float = 1.0,
    requests: int | None = None,
    duration_s: float | None = None,
    seed: int = 0,
) -> Iterator[Request]:
    """Poisson arrivals at `rate_rps`; each picks a context by Zipf popularity over a seeded
    random ranking. Ends after `requests`, or at `duration_s`, whichever comes first."""
    if rate_rps <= 0:
        raise UsageError(f"arrival rate must be > 0 requests/s; got {rate_rps}")
    rng = np.random.default_rng(seed)
    ranking = [contexts[i] for i in rng.permutation(len(contexts))]
    weights = zipf_weights(len(ranking), exponent)
    questions = _Questions(contexts, rng)
    at_s = 0.0
    for index in itertools.count():
        if requests is not None and index >= requests:
            return
        at_s += float(rng.exponential(1.0 / rate_rps))
        if duration_s is not None and at_s > duration_s:
            return
        context = ranking[int(rng.choice(len(ranking), p=weights))]
        yield Request(index, at_s, context, questions.next(context))


def replay_csv(path: Path | str, contexts: Sequence[Context], *, exponent: float = 1.0, seed: int = 0) -> Iterator[Request]:
    """Replay arrival times from a CSV with a `timestamp` column (seconds; shifted to start
    at 0) and an optional `context` column (a context id, or an index into `contexts`);
    rows without a context draw one by Zipf popularity."""
    rows = read_csv_trace(Path(path))
    by_id = {c.id: c for c in contexts}
    rng = np.random.default_rng(seed)
    ranking = [contexts[i] for i in rng.permutation(len(contexts))]
    weights = zipf_weights(len(ranking), exponent)
    questions = _Questions(contexts, rng)
    t0 = rows[0][0] if rows else 0.0
    for index, (ts, ctx) in enumerate(rows):
        context = _resolve(ctx, by_id, contexts) if ctx else ranking[int(rng.choice(len(ranking), p=weights))]
        yield Request(index, ts - t0, context, questions.next(context))


def read_csv_trace(path: Path) -> list[tuple[float, str]]:
    """(timestamp, context or "") rows sorted by time, from a CSV with a `timestamp` column
    and an optional `context` column; the replay format of the demo and the bench."""
    if not path.is_file():
        raise UsageError(f"no trace file at {path}")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "timestamp" not in reader.fieldnames:
            raise UsageError(f"{path}: a trace needs a 'timestamp' column; found {reader.fieldnames}")
        rows = []
        for line, row in enumerate(reader, start=2):
            try:
                rows.append((float(row["timestamp"]), (row.get("context") or "").strip()))
            except ValueError:
                raise UsageError(f"{path}:{line}: timestamp {row['timestamp']!r} is not a number") from None
    return sorted(rows, key=lambda r: r[0])


def _resolve(ctx: str, by_id: dict[str, Context], contexts: Sequence[Context]) -> Context:
    if ctx in by_id:
        return by_id[ctx]
    if ctx.isdigit() and int(ctx) < len(contexts):
        return contexts[int(ctx)]
    raise UsageError(f"trace names context {ctx!r}, which is not loaded; valid: ids or 0..{len(contexts) - 1}")
