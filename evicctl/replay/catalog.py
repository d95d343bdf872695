"""The replay's contexts as arrays: sizes, predicted delays and qualities of every option.

Built once per run with the manager's own size and pricing code: `pricing.codec_sizes` for
the bytes each codec stores (exact, no tensors), `pricing.price_options` (the function the
placer and `evicctl show` price with) and the scenario's fitted CostModel for the delays.
Every policy reads these same arrays, so policies differ only in their decisions.

Shapes: N contexts, C codecs (the measured profile's menu), T tiers (fastest first).
Per-option arrays are option-major ([C, N], [T, C, N]), the placer's layout, so a
placement problem is a column slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evicctl.manager.codecs.codec import get_codec
from evicctl.manager.costs import CostModel, miss_ttft_s, predicted_ttft_s
from evicctl.manager.placer.pricing import codec_sizes, kept_tokens, price_options
from evicctl.replay.profiles import Profiles, assign
from evicctl.replay.scenario import Scenario


@dataclass(frozen=True, eq=False)
class Catalog:
    scenario: Scenario
    context_ids: np.ndarray  # [N] str
    tokens: np.ndarray  # [N] int64 context tokens
    codecs: tuple[str, ...]  # [C]
    tiers: tuple[str, ...]  # [T]
    read_bps: np.ndarray  # [T]
    capacity_bytes: np.ndarray  # [T] int64
    stored_bytes: np.ndarray  # [C, N] int64
    kept_tokens: np.ndarray  # [C, N] int64
    decode_s: np.ndarray  # [C, N]
    ttft_s: np.ndarray  # [T, C, N] predicted TTFT of a hit, at the mean query length
    miss_ttft_s: np.ndarray  # [N] full prefill at the mean query length
    estimate: np.ndarray  # [C, N] quality the placer believes
    truth: np.ndarray  # [C, N] quality a served request gets
    query_tokens_mean: float
    cost_model: CostModel
    profile_source: np.ndarray  # [N] measured context each row's profile copies

    @property
    def n_contexts(self) -> int:
        return len(self.context_ids)

    @property
    def raw_bytes_total(self) -> int:
        return int(self.stored_bytes[self.codecs.index("none")].sum())

    def codec_index(self, name: str) -> int:
        from evicctl.errors import UnknownNameError

        try:
            return self.codecs.index(get_codec(name).name)
        except ValueError:
            raise UnknownNameError("codec (with a measured profile)", name, self.codecs) from None

    def hit_ttft(self, context: np.ndarray, codec: np.ndarray, tier: np.ndarray, query_tokens: np.ndarray) -> np.ndarray:
        """[R] TTFT of hits served from (codec, tier), with each request's own query length."""
        return predicted_ttft_s(
            self.stored_bytes[codec, context],
            self.read_bps[tier],
            self.decode_s[codec, context],
            query_tokens,
            self.kept_tokens[codec, context],
            self.cost_model,
        )

    def miss_ttft(self, context: np.ndarray, query_tokens: np.ndarray) -> np.ndarray:
        """[R] TTFT of full prefills of the contexts plus each request's query."""
        return np.asarray(miss_ttft_s(self.tokens[context], query_tokens, self.cost_model), dtype=float)

    def to_json(self) -> dict:
        return {
            "contexts": self.n_contexts,
            "tokens_mean": float(self.tokens.mean()),
            "raw_bytes_total": self.raw_bytes_total,
            "tiers": {t: {"capacity_bytes": int(c), "read_bps": float(b)}
                      for t, c, b in zip(self.tiers, self.capacity_bytes, self.read_bps, strict=True)},
            "codecs": list(self.codecs),
            "miss_ttft_mean_s": float(self.miss_ttft_s.mean()),
        }


def build_catalog(
    scenario: Scenario,
    profiles: Profiles,
    n_contexts: int,
    *,
    seed: int = 0,
    noise_sd: float = 0.0,
    tokens: np.ndarray | None = None,
    profile_index: np.ndarray | None = None,
) -> Catalog:
    """N contexts with bootstrapped profiles and the scenario's sizes and delays.

    tokens / profile_index: fixed context lengths and measured-profile rows (the live
    comparison replays the very contexts the engine served); drawn from the scenario otherwise.
    """
    from evicctl.errors import UsageError

    if n_contexts <= 0:
        raise UsageError(f"contexts must be > 0; got {n_contexts}")
    rng = np.random.default_rng([seed, 1])  # its own stream: the trace's draws stay the same
    # noise from a stream of its own too: adding it must not change the contexts' sizes
    assigned = assign(profiles, n_contexts, rng, noise_sd=noise_sd, index=profile_index,
                      noise_rng=np.random.default_rng([seed, 2]))
    if tokens is None:
        tokens = _draw_tokens(scenario, profiles, assigned.source_index, rng)
    tokens = np.asarray(tokens, dtype=np.int64)
    codecs = profiles.codecs
    m = scenario.model
    stored, kept = _sizes(codecs, tokens, m)
    cost = scenario.cost_model()
    q_mean = float(np.mean(scenario.query_tokens))
    # priced at the mean query length, as the manager prices with its running estimate
    prices = price_options(stored, kept, list(codecs), tokens,
                           read_bps=[t.read_bps for t in scenario.tiers], cost_model=cost, query_tokens=q_mean)  # fmt: skip
    shares = np.array([t.share for t in scenario.tiers], dtype=float)
    raw_total = stored[codecs.index("none")].sum()
    capacity = np.floor(scenario.capacity * raw_total * shares / shares.sum()).astype(np.int64)
    return Catalog(
        scenario=scenario,
        context_ids=np.array([f"ctx{i}" for i in range(n_contexts)], dtype=object),
        tokens=tokens,
        codecs=codecs,
        tiers=tuple(t.name for t in scenario.tiers),
        read_bps=prices.read_bps,
        capacity_bytes=capacity,
        stored_bytes=stored,
        kept_tokens=kept,
        decode_s=prices.decode_s,
        ttft_s=prices.ttft_s,
        miss_ttft_s=prices.miss_ttft_s,
        estimate=np.ascontiguousarray(assigned.estimate.T),
        truth=np.ascontiguousarray(assigned.truth.T),
        query_tokens_mean=q_mean,
        cost_model=cost,
        profile_source=assigned.source_index,
    )


def _draw_tokens(scenario: Scenario, profiles: Profiles, source: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    spec = scenario.context_tokens
    kind = spec.get("distribution", "measured")
    if kind == "measured":  # the measured context's own length
        return profiles.tokens[source]
    if kind == "loguniform":
        lo, hi = np.log(float(spec["low"])), np.log(float(spec["high"]))
        return np.exp(rng.uniform(lo, hi, len(source))).astype(np.int64)
    raise ValueError(f"unknown context_tokens distribution {kind!r}; valid: measured, loguniform")


def _sizes(codecs: tuple[str, ...], tokens: np.ndarray, m) -> tuple[np.ndarray, np.ndarray]:
    """[C, N] stored bytes and kept tokens (pricing.codec_sizes), computed once per distinct length."""
    distinct, inverse = np.unique(tokens, return_inverse=True)
    shape = (m.layers, m.kv_heads, m.head_dim, m.dtype_bytes, m.window_numel)
    sizes = [codec_sizes(codecs, n, shape, 0) for n in distinct.tolist()]
    stored = np.array([[by_codec[c] for c in codecs] for by_codec in sizes], dtype=np.int64).reshape(len(distinct), len(codecs))
    kept = np.array([[kept_tokens(c, n) for c in codecs] for n in distinct.tolist()],
                    dtype=np.int64).reshape(len(distinct), len(codecs))  # fmt: skip
    return np.ascontiguousarray(stored[inverse].T), np.ascontiguousarray(kept[inverse].T)
