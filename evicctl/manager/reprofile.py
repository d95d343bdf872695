"""Online quality: does a context's stored profile still hold? (EVICPRESS re-profiling, DESIGN §1)

The engine measures the quality of some answers it serves (the profiling metric, e.g. the
similarity of the answer to a full-KV answer) and reports each one with the codec the KV was
served at. Per context, an exponentially weighted mean of those measurements is compared with
the stored profile's quality for that codec; when it falls below it by more than `drop`
(ManagerConfig.reprofile_drop; 0.3 in the paper's trace experiment) the codec's profile is
stale and the context is a re-profiling candidate until a new profile for that codec arrives.

A single answer says little (single-question reliability ~0.03, DESIGN §8), so nothing trips
before MIN_SAMPLES measurements of the same codec.
"""

from __future__ import annotations

from dataclasses import dataclass, field

EWMA_WEIGHT = 0.2  # weight of the newest measurement: the mean spans ~5 answers
MIN_SAMPLES = 3  # measurements of one codec before its mean may trip


@dataclass
class OnlineEstimate:
    """The running estimate for one context: the codec it is measuring and its mean quality."""

    codec: str
    quality: float
    samples: int = 1
    stale: dict[str, float] = field(default_factory=dict)  # codec -> profile quality minus online mean when it tripped


class OnlineQuality:
    """Online quality estimates per context (not thread-safe: the Manager calls it under its lock)."""

    def __init__(self, drop: float, *, weight: float = EWMA_WEIGHT, min_samples: int = MIN_SAMPLES) -> None:
        if not 0.0 < drop <= 1.0:
            raise ValueError(f"reprofile_drop must be in (0, 1]; got {drop}")
        self.drop, self.weight, self.min_samples = drop, weight, min_samples
        self._by_context: dict[str, OnlineEstimate] = {}

    def record(self, context_id: str, codec: str, quality: float, profile_quality: float | None) -> float | None:
        """Add one measurement of `codec`; returns the shortfall (profile minus online mean)
        when this measurement makes the codec's profile stale, else None. A measurement of
        another codec than the one being tracked starts a new mean."""
        est = self._by_context.get(context_id)
        if est is None:
            est = self._by_context[context_id] = OnlineEstimate(codec, quality)
        elif est.codec != codec:
            est.codec, est.quality, est.samples = codec, quality, 1
        else:
            est.quality += self.weight * (quality - est.quality)
            est.samples += 1
        if profile_quality is None or codec in est.stale or est.samples < self.min_samples:
            return None
        shortfall = profile_quality - est.quality
        if shortfall <= self.drop:
            return None
        est.stale[codec] = shortfall
        return shortfall

    def profiled(self, context_id: str, codec: str) -> None:
        """A new profile of `codec` arrived: it is no longer stale, and its mean starts over."""
        est = self._by_context.get(context_id)
        if est is None:
            return
        est.stale.pop(codec, None)
        if est.codec == codec:
            est.codec, est.samples = "", 0  # the next measurement starts a new mean

    def estimate(self, context_id: str) -> OnlineEstimate | None:
        return self._by_context.get(context_id)

    def needs_reprofile(self, context_id: str) -> bool:
        est = self._by_context.get(context_id)
        return est is not None and bool(est.stale)

    def candidates(self, freq: dict[str, float]) -> list[str]:
        """Contexts with a stale profile, the costliest first: access rate times the largest
        shortfall (a busy context served much worse than planned loses the most utility)."""
        stale = [(cid, max(est.stale.values())) for cid, est in self._by_context.items() if est.stale]
        stale.sort(key=lambda item: (-freq.get(item[0], 0.0) * item[1], -item[1], item[0]))
        return [cid for cid, _ in stale]

    def forget(self, context_id: str) -> None:
        self._by_context.pop(context_id, None)
