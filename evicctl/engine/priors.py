"""Per-codec quality priors for the teacher-forced metric (exp(-KL) vs the full KV).

Measured by benchmarks/quality_bench.py on SmolLM2-135M-Instruct over 40 contexts of ~1.1k
tokens (27 SQuAD v2 dev chunks with 8 questions each, 13 HotpotQA dev examples with one),
greedy answers of up to 24 tokens: (pooled mean, between-context variance tau²,
within-context variance sigma²). A fresh deployment starts from these, so a context
that has not been profiled yet still gets a calibrated estimate (the pooled mean, with an
honest sd) and the manager can compress it at once; measured contexts then move the
estimates (shrinkage.codec_stats weighs the prior as PRIOR_CONTEXTS contexts).
"""

from __future__ import annotations

from evicctl.engine.shrinkage import CodecStats

METRIC = "teacher-forced"
PRIOR_CONTEXTS = 40

# codec: (mean, tau2, sigma2)
_MEASURED: dict[str, tuple[float, float, float]] = {
    "none": (1.0000, 0.00000, 0.00000),
    "int8": (1.0000, 0.00000, 0.00000),
    "int4": (0.9913, 0.00000, 0.00006),
    "snapkv@0.25": (0.9334, 0.00000, 0.01569),
    "snapkv@0.5": (0.8409, 0.00103, 0.03151),
    "snapkv@0.75": (0.7468, 0.00409, 0.04179),
    "keydiff@0.25": (0.9170, 0.00504, 0.00718),
    "keydiff@0.5": (0.8282, 0.00536, 0.01898),
    "keydiff@0.75": (0.7241, 0.01146, 0.03180),
    "knorm@0.25": (0.8962, 0.00000, 0.01051),
    "knorm@0.5": (0.7632, 0.00766, 0.02876),
    "knorm@0.75": (0.6836, 0.01377, 0.03808),
    "snapkv@0.25+int8": (0.9333, 0.00000, 0.01573),
    "snapkv@0.5+int8": (0.8409, 0.00103, 0.03151),
    "keydiff@0.5+int8": (0.8280, 0.00534, 0.01902),
    "knorm@0.5+int8": (0.7632, 0.00757, 0.02876),
}


def default_priors(metric: str = METRIC) -> dict[str, CodecStats]:
    """The priors for `metric` ({} for a metric without measured priors)."""
    if metric != METRIC:
        return {}
    return {
        codec: CodecStats(mean, tau2, sigma2, PRIOR_CONTEXTS, (tau2 + sigma2 / 4) / PRIOR_CONTEXTS)
        for codec, (mean, tau2, sigma2) in _MEASURED.items()
    }
