"""After a plan is carried out: every context's utility where it now is, priced with that plan's
figures, so `contexts.utility` and `evicctl show` agree (both call pricing.placed_utilities).

A plan prices every option with one set of figures (description.PricingInputs: alpha, the
query length, the tier bandwidths, the cost model). The manager records those figures in its
description, and each context's utility and the access rate it was priced at in its row; a
reader holding them reprices exactly what the placer used.
"""

from __future__ import annotations

import time

from evicctl.manager.costs import CostModel
from evicctl.manager.placer.pricing import placed_utilities
from evicctl.manager.placer.types import Plan
from evicctl.manager.runtime import Runtime


def record_priced(rt: Runtime, plan: Plan, cost_model: CostModel):
    """Set utility and priced_freq of every known context from `plan`'s figures (cost_model:
    the frozen copy the plan priced with); returns those figures (PricingInputs), or None when
    the plan carries none (a problem built by hand)."""
    problem = plan.problem
    inputs = problem.priced_with
    if inputs is None:
        return None
    with rt.lock:
        states = list(rt.contexts.values())
        # the rate each context was priced at; contexts outside the plan (dropped) at this instant
        freq = dict(zip(problem.context_ids.tolist(), problem.freq.tolist(), strict=True))
        others = [s.id for s in states if s.id not in freq]
        freq.update(zip(others, rt.freq.rates(others, time.time()).tolist(), strict=True))
        priced_freq = [freq[s.id] for s in states]
        utilities = placed_utilities(
            states, priced_freq, tiers=tuple(name for name, _ in inputs.read_bps),
            read_bps=[bps for _, bps in inputs.read_bps], cost_model=cost_model, alpha=inputs.alpha,
            query_tokens=inputs.query_tokens,
        )  # fmt: skip
        for state, rate, value in zip(states, priced_freq, utilities.tolist(), strict=True):
            state.priced_freq, state.utility = rate, value
        rt.dirty.update(s.id for s in states)
    return inputs
