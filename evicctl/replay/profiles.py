"""Per-context quality profiles for the replay, from measurements of the real model.

The measured file (evicctl/data/smollm2_profiles.json, written by
`python -m evicctl.replay.measure_profiles`) holds, per context and codec, one score per
question. Each context's questions are split in two halves, as the paper does:

- the profiling half gives what the placer believes: the profiler's shrinkage estimate
  (evicctl.engine.shrinkage), pulled toward the codec's pooled mean across contexts;
- the test half gives what a served request gets: its mean.

So the replay charges the placer for its estimation error (a few questions are mostly noise,
DESIGN §8), and noise can be added to the estimates on top (the robustness sweep).

Replays with more contexts than were measured bootstrap: each synthetic context takes the
(estimate, truth) rows of one measured context drawn at random (seeded), and its own size
and popularity.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evicctl.errors import UsageError

DEFAULT_PROFILES = Path(__file__).resolve().parents[1] / "data" / "smollm2_profiles.json"


@dataclass(frozen=True, eq=False)
class Profiles:
    """Quality rows of M measured contexts. Arrays are [M, C] over `codecs`."""

    codecs: tuple[str, ...]
    context_ids: tuple[str, ...]
    tokens: np.ndarray  # [M] context tokens as measured
    estimate: np.ndarray  # [M, C] what the placer believes (profiling half, shrunk)
    truth: np.ndarray  # [M, C] what a served request gets (test half)
    sd: np.ndarray  # [M, C] the estimate's posterior sd
    metric: str
    source: str
    questions_per_context: int = 0  # as measured (the live mode re-draws the same contexts)

    @property
    def n_contexts(self) -> int:
        return len(self.context_ids)

    def codec_means(self) -> dict[str, float]:
        """Mean true quality per codec across the measured contexts."""
        return {c: float(self.truth[:, k].mean()) for k, c in enumerate(self.codecs)}

    def to_json(self) -> dict:
        return {
            "source": self.source,
            "metric": self.metric,
            "contexts": self.n_contexts,
            "codec_mean_truth": {c: round(v, 4) for c, v in self.codec_means().items()},
            "estimate_mae": round(float(np.abs(self.estimate - self.truth).mean()), 4),
        }


def load_profiles(path: Path | str = DEFAULT_PROFILES) -> Profiles:
    path = Path(path)
    if not path.is_file():
        raise UsageError(
            f"no quality profiles at {path}; measure them with "
            "`python -m evicctl.replay.measure_profiles` (about a minute a context)"
        )
    doc = json.loads(path.read_text())
    return profiles_from_scores(
        codecs=tuple(doc["codecs"]),
        scores=[c["scores"] for c in doc["contexts"]],
        context_ids=tuple(c["id"] for c in doc["contexts"]),
        tokens=[c["tokens"] for c in doc["contexts"]],
        metric=doc.get("metric", "?"),
        questions_per_context=int(doc.get("questions_per_context", 0)),
        source=f"{path.name}: {doc.get('model', '?')}, {doc.get('metric', '?')}, "
        f"{len(doc['contexts'])} contexts x {doc.get('questions_per_context', '?')} questions",
    )


def profiles_from_scores(
    *,
    codecs: tuple[str, ...],
    scores: list[dict[str, list[float]]],
    context_ids: tuple[str, ...],
    tokens: list[int],
    metric: str = "teacher-forced",
    source: str = "",
    questions_per_context: int = 0,
) -> Profiles:
    """Split each context's per-question scores into profiling and test halves (see module)."""
    from evicctl.engine.shrinkage import Tally, codec_stats, estimate

    if not scores:
        raise UsageError("quality profiles need at least one measured context")
    m, c = len(scores), len(codecs)
    est, truth, sd = np.ones((m, c)), np.ones((m, c)), np.zeros((m, c))
    for k, codec in enumerate(codecs):
        halves = [_halves(s.get(codec) or [1.0]) for s in scores]
        tallies = {str(i): Tally.of(prof) for i, (prof, _) in enumerate(halves)}
        stats = codec_stats(tallies)
        for i, (_, test) in enumerate(halves):
            e = estimate(tallies[str(i)], stats)
            est[i, k], sd[i, k], truth[i, k] = e.quality, e.sd, float(np.mean(test))
        if codec == "none":  # the full KV is the reference: exactly 1 by construction
            est[:, k], truth[:, k], sd[:, k] = 1.0, 1.0, 0.0
    return Profiles(
        codecs=tuple(codecs),
        context_ids=tuple(context_ids),
        tokens=np.asarray(tokens, dtype=np.int64),
        estimate=np.clip(est, 0.0, 1.0),
        truth=np.clip(truth, 0.0, 1.0),
        sd=sd,
        metric=metric,
        source=source,
        questions_per_context=questions_per_context,
    )


def _halves(xs: list[float]) -> tuple[list[float], list[float]]:
    """(profiling, test): the first half and the rest; one score serves as both."""
    if len(xs) <= 1:
        return list(xs), list(xs)
    half = len(xs) // 2
    return list(xs[:half]), list(xs[half:])


@dataclass(frozen=True, eq=False)
class Assigned:
    """Profiles of N replay contexts: rows of the measured ones, bootstrapped."""

    source_index: np.ndarray  # [N] measured context each replay context copies
    estimate: np.ndarray  # [N, C]
    truth: np.ndarray  # [N, C]


def assign(
    profiles: Profiles,
    n: int,
    rng: np.random.Generator,
    *,
    noise_sd: float = 0.0,
    index: np.ndarray | None = None,
    noise_rng: np.random.Generator | None = None,
) -> Assigned:
    """N contexts' profiles: measured rows drawn with replacement (seeded), so every replay
    size samples the same population. `noise_sd` adds Gaussian noise to the estimates of
    lossy codecs (the truth is untouched), clipped to [0, 1]. `index` fixes the rows instead."""
    index = rng.integers(0, profiles.n_contexts, n) if index is None else np.asarray(index, dtype=np.int64)
    estimate = profiles.estimate[index].copy()
    if noise_sd > 0:
        lossy = np.array([c != "none" for c in profiles.codecs])
        estimate[:, lossy] += (noise_rng or rng).normal(0.0, noise_sd, (n, int(lossy.sum())))
        np.clip(estimate, 0.0, 1.0, out=estimate)
    return Assigned(index, estimate, profiles.truth[index].copy())
