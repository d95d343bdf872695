"""Per-codec quality priors for the teacher-forced metric (exp(-KL) vs the full KV).

Measured by benchmarks/quality_menu.py on SmolLM2-135M-Instruct (fp32, one H200; the
rows of the second block on one H100, same code path) for every
codec of the default menu (config.generate_menu, 54 codecs) over 160 contexts of ~1.1k
tokens (107 SQuAD v2 dev chunks with 8 questions each, 53 HotpotQA dev examples with one),
greedy answers of up to 24 tokens; rows printed by benchmarks/quality_menu_report.py
--print-priors (docs/quality.md has the table and the commands): (pooled mean,
between-context variance tau², within-context variance sigma²). A fresh deployment starts from these, so a context
that has not been profiled yet still gets a calibrated estimate (the pooled mean, with an
honest sd) and the manager can compress it at once; measured contexts then move the
estimates (shrinkage.codec_stats weighs the prior as PRIOR_CONTEXTS contexts).
"""

from __future__ import annotations

from evicctl.engine.shrinkage import CodecStats

METRIC = "teacher-forced"
PRIOR_CONTEXTS = 160

# codec: (mean, tau2, sigma2)
_MEASURED: dict[str, tuple[float, float, float]] = {
    "none": (1.0000, 0.00000, 0.00000),
    "int8": (1.0000, 0.00000, 0.00000),
    "int4": (0.9903, 0.00003, 0.00007),
    "int3": (0.9592, 0.00000, 0.00083),
    "int2": (0.7294, 0.00304, 0.00896),
    "snapkv@0.25": (0.9383, 0.00000, 0.01118),
    "snapkv@0.5": (0.8538, 0.00131, 0.02532),
    "snapkv@0.75": (0.7501, 0.01018, 0.03582),
    "keydiff@0.25": (0.9184, 0.00265, 0.00670),
    "keydiff@0.5": (0.8241, 0.00510, 0.01842),
    "keydiff@0.75": (0.7181, 0.01201, 0.02934),
    "knorm@0.25": (0.8915, 0.00103, 0.01160),
    "knorm@0.5": (0.7671, 0.00990, 0.02861),
    "knorm@0.75": (0.6847, 0.01564, 0.03705),
    "snapkv@0.25+int4": (0.9317, 0.00000, 0.01139),
    "snapkv@0.25+int2": (0.7051, 0.00337, 0.01575),
    "snapkv@0.5+int4": (0.8468, 0.00146, 0.02536),
    "snapkv@0.5+int2": (0.6719, 0.00550, 0.02304),
    "snapkv@0.75+int4": (0.7475, 0.00989, 0.03567),
    "snapkv@0.75+int2": (0.6202, 0.01031, 0.02801),
    "keydiff@0.25+int4": (0.9102, 0.00256, 0.00717),
    "keydiff@0.25+int2": (0.6737, 0.00445, 0.01345),
    "keydiff@0.5+int4": (0.8184, 0.00550, 0.01851),
    "keydiff@0.5+int2": (0.6270, 0.00539, 0.01978),
    "keydiff@0.75+int4": (0.7149, 0.01199, 0.02914),
    "keydiff@0.75+int2": (0.5950, 0.01061, 0.02519),
    "knorm@0.25+int4": (0.8856, 0.00096, 0.01203),
    "knorm@0.25+int2": (0.7055, 0.00555, 0.01591),
    "knorm@0.5+int4": (0.7645, 0.00958, 0.02848),
    "knorm@0.5+int2": (0.6555, 0.00941, 0.02571),
    "knorm@0.75+int4": (0.6827, 0.01571, 0.03695),
    "knorm@0.75+int2": (0.6189, 0.01378, 0.03049),
    # The model-side scorers (Expected Attention and KVzip scores as the engine computes them
    # when it stores a context), PyramidKV budgets and ThinK channels, measured the same way on
    # the same 160 contexts and questions (quality_menu.py --codecs with int4 and snapkv@0.5,
    # which it reproduced exactly; merged by quality_menu_report.py --base-profiles; the
    # command is in BENCHMARKS.md "Quality of the model-side scorers"). The last two are
    # outside the default menu (a recompress to them still gets a calibrated estimate).
    "kvzip@0.25": (0.9843, 0.00000, 0.00141),
    "kvzip@0.25+int4": (0.9747, 0.00003, 0.00160),
    "kvzip@0.25+int2": (0.7156, 0.00243, 0.01222),
    "kvzip@0.5": (0.9365, 0.00057, 0.00503),
    "kvzip@0.5+int4": (0.9287, 0.00056, 0.00542),
    "kvzip@0.5+int2": (0.6895, 0.00299, 0.01387),
    "kvzip@0.75": (0.7979, 0.01138, 0.01846),
    "kvzip@0.75+int4": (0.7916, 0.01176, 0.01874),
    "kvzip@0.75+int2": (0.6132, 0.01224, 0.02063),
    "expected@0.25": (0.9710, 0.00000, 0.00389),
    "expected@0.25+int4": (0.9628, 0.00000, 0.00406),
    "expected@0.25+int2": (0.7288, 0.00355, 0.01169),
    "expected@0.5": (0.9150, 0.00112, 0.01333),
    "expected@0.5+int4": (0.9083, 0.00104, 0.01380),
    "expected@0.5+int2": (0.7085, 0.00322, 0.01817),
    "expected@0.75": (0.8145, 0.00701, 0.02773),
    "expected@0.75+int4": (0.8087, 0.00700, 0.02774),
    "expected@0.75+int2": (0.6563, 0.00569, 0.02399),
    "snapkv@0.5-pyramid": (0.7759, 0.00956, 0.03341),
    "snapkv@0.5-pyramid+int4": (0.7720, 0.00936, 0.03324),
    "kvzip@0.5-pyramid+int4": (0.8318, 0.00979, 0.01474),
    "think@0.5+int4": (0.8685, 0.00065, 0.00924),
    "snapkv@0.5+think@0.5+int4": (0.7637, 0.00361, 0.02765),
    "kvzip@0.25+think@0.5+int4": (0.8671, 0.00081, 0.00951),
}


def default_priors(metric: str = METRIC) -> dict[str, CodecStats]:
    """The priors for `metric` ({} for a metric without measured priors)."""
    if metric != METRIC:
        return {}
    return {
        codec: CodecStats(mean, tau2, sigma2, PRIOR_CONTEXTS, (tau2 + sigma2 / 4) / PRIOR_CONTEXTS)
        for codec, (mean, tau2, sigma2) in _MEASURED.items()
    }
