"""Empirical-Bayes estimates of a context's quality under one codec.

A handful of questions per context is mostly noise on this model (single-question
reliability 0.01-0.06, DESIGN §8), so a context's own mean is pulled toward the codec's
pooled mean across contexts, by how much its own data can be trusted:

    estimate = w * own_mean + (1 - w) * pooled_mean,   w = tau² / (tau² + sigma² / n)

tau² is the between-context variance of the true qualities, sigma² the within-context
(question-to-question) variance, n the context's measurements. The posterior sd carries
both the shrunk own mean's noise and the pooled mean's; the quality floor uses the lower
bound estimate - z * sd. All pure numbers; no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

PRIOR_DOF_PER_CONTEXT = 4  # a shipped prior was measured on ~8 questions per context


@dataclass(frozen=True)
class Tally:
    """Sufficient statistics of one (context, codec)'s measurements.

    m2 and m2_n cover the measurements whose spread is known (a summary re-read from the
    store brings its count and mean but not its spread)."""

    n: int = 0
    total: float = 0.0
    m2: float = 0.0  # sum of squared deviations from the mean, over the m2_n measurements
    m2_n: int = 0

    @property
    def mean(self) -> float | None:
        return self.total / self.n if self.n else None

    def add(self, x: float) -> Tally:
        if self.m2_n == self.n:  # Welford update, spread known for all so far
            old = self.mean if self.n else 0.0
            new_mean = (self.total + x) / (self.n + 1)
            return Tally(self.n + 1, self.total + x, self.m2 + (x - old) * (x - new_mean), self.m2_n + 1)
        return Tally(self.n + 1, self.total + x, self.m2, self.m2_n)

    @classmethod
    def of(cls, xs) -> Tally:
        t = cls()
        for x in xs:
            t = t.add(float(x))
        return t

    @classmethod
    def summary(cls, mean: float, n: int) -> Tally:
        return cls(n, mean * n, 0.0, 0)


@dataclass(frozen=True)
class CodecStats:
    """Hyperparameters of one codec: pooled mean, between (tau²) and within (sigma²)
    variances, how many contexts they come from and the variance of the pooled mean."""

    mean: float
    tau2: float
    sigma2: float
    contexts: int
    mean_var: float

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "tau2": self.tau2, "sigma2": self.sigma2, "contexts": self.contexts}

    @classmethod
    def from_dict(cls, d: Mapping[str, float]) -> CodecStats:
        k = max(1, int(d.get("contexts", 1)))
        return cls(float(d["mean"]), float(d["tau2"]), float(d["sigma2"]), k, (float(d["tau2"]) + float(d["sigma2"])) / k)


@dataclass(frozen=True)
class Estimate:
    quality: float  # in [0, 1]
    sd: float
    raw_mean: float | None  # the context's own mean, None without measurements
    n: int
    weight: float  # w: the share of the estimate that is the context's own mean

    def lower_bound(self, z: float = 1.645) -> float:
        return max(0.0, self.quality - z * self.sd)


def codec_stats(
    tallies: Mapping[str, Tally],
    prior: CodecStats | None = None,
    prior_contexts: float | None = None,
) -> CodecStats | None:
    """Method-of-moments hyperparameters from contexts' tallies, blended with a prior.

    The prior counts as `prior_contexts` contexts of evidence (default: the contexts it was
    measured on) for the mean and tau², and as PRIOR_DOF_PER_CONTEXT degrees of freedom per
    context for sigma². None when there is neither data nor prior."""
    if prior is not None and prior_contexts is None:
        prior_contexts = float(prior.contexts)
    have = [t for t in tallies.values() if t.n > 0]
    if not have:
        return prior
    means = np.array([t.mean for t in have])
    k = len(have)
    dof = sum(t.m2_n - 1 for t in have if t.m2_n > 1)
    sigma2_data = sum(t.m2 for t in have if t.m2_n > 1) / dof if dof > 0 else None
    sigma2 = _blend(sigma2_data, dof, prior.sigma2 if prior else None, (prior_contexts or 0) * PRIOR_DOF_PER_CONTEXT)
    spread_known = sigma2 is not None
    if sigma2 is None:  # no context has two measurements: tau² and sigma² are not separable
        sigma2 = float(means.var(ddof=1)) if k > 1 else 0.0
    mean_noise = float(np.mean([sigma2 / t.n for t in have]))
    tau2_data = max(0.0, float(means.var(ddof=1)) - mean_noise) if k > 1 and spread_known else None
    tau2 = _blend(tau2_data, k - 1, prior.tau2 if prior else None, prior_contexts or 0) or 0.0
    mean = _blend(float(means.mean()), k, prior.mean if prior else None, prior_contexts or 0)
    contexts = k + (int(prior_contexts or 0) if prior else 0)
    return CodecStats(float(mean), float(tau2), float(sigma2), contexts, (tau2 + mean_noise) / max(1, contexts))


def _blend(data: float | None, data_weight: float, prior: float | None, prior_weight: float) -> float | None:
    if data is None or data_weight <= 0:
        return prior if prior is not None else data
    if prior is None:
        return data
    return (data * data_weight + prior * prior_weight) / (data_weight + prior_weight)


def estimate(own: Tally, stats: CodecStats) -> Estimate:
    """The shrinkage estimate of one context given its own tally and the codec's stats."""
    if own.n == 0:
        return Estimate(_clip(stats.mean), math.sqrt(stats.tau2 + stats.mean_var), None, 0, 0.0)
    noise = stats.sigma2 / own.n
    w = stats.tau2 / (stats.tau2 + noise) if stats.tau2 + noise > 0 else 1.0
    value = w * own.mean + (1 - w) * stats.mean
    var = w * noise + (1 - w) ** 2 * stats.mean_var
    return Estimate(_clip(value), math.sqrt(max(0.0, var)), own.mean, own.n, w)


def leave_one_out_stats(tallies: Mapping[str, Tally], context_id: str, prior: CodecStats | None = None) -> CodecStats | None:
    """The codec's stats from every context but one (for held-out evaluation)."""
    return codec_stats({c: t for c, t in tallies.items() if c != context_id}, prior)


def _clip(x: float) -> float:
    return min(1.0, max(0.0, float(x)))
