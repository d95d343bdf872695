"""After a plan is carried out: each context's utility where it now is, priced with that plan's
figures, so `contexts.utility` and `evicctl show` agree (both call pricing.placed_utilities).

A plan prices every option with one set of figures (description.PricingInputs: alpha, the
query length, the tier bandwidths, the cost model). The manager records those figures in its
description, and each context's utility and the access rate it was priced at in its row; a
reader holding them reprices exactly what the placer used.

Only the rows that changed are repriced and rewritten: a context the plan moved, one whose
utility moved by more than RECORD_REL_CHANGE since its row was priced, one never priced. When
the figures themselves changed, every row is (a row must be priced with the figures the
description names). A row left alone keeps the utility and the rate it was priced at, which
agree with each other under the unchanged figures.
"""

from __future__ import annotations

import time

from evicctl.manager.costs import CostModel
from evicctl.manager.placer.pricing import placed_utilities
from evicctl.manager.placer.types import Plan
from evicctl.manager.runtime import Runtime

# A row whose utility moved less than this (relative) since it was priced is not rewritten:
# access rates decay between plans, and rewriting 100,000 rows for that is most of a plan's cost.
RECORD_REL_CHANGE = 0.01
CHUNK = 4096  # contexts read or written per hold of the state lock


def record_priced(rt: Runtime, plan: Plan, cost_model: CostModel, previous=None):
    """Set utility and priced_freq of the contexts whose row changed (see the module docstring)
    from `plan`'s figures (cost_model: the frozen copy the plan priced with; previous: the
    figures the rows were last priced with). Returns the plan's figures (PricingInputs), or
    None when the plan carries none (a problem built by hand)."""
    problem = plan.problem
    inputs = problem.priced_with
    if inputs is None:
        return None
    everyone = previous is None or previous != inputs
    ids = problem.context_ids.tolist()
    in_plan = set(ids)
    moved = set(problem.context_ids[plan.changed].tolist())
    rates, planned = problem.freq.tolist(), plan.utility.tolist()
    todo: list[tuple[object, float]] = []  # (state, rate to price it at)
    for start in range(0, len(ids), CHUNK):
        with rt.lock:
            for cid, rate, value in zip(ids[start : start + CHUNK], rates[start : start + CHUNK],
                                        planned[start : start + CHUNK], strict=True):  # fmt: skip
                state = rt.contexts.get(cid)
                if state is not None and (everyone or cid in moved or _drifted(state, value)):
                    todo.append((state, rate))
    if everyone:  # contexts outside the plan (dropped, or admitted since) at this instant
        with rt.lock:
            known = list(rt.contexts.items())
        others = [s for cid, s in known if cid not in in_plan]
        todo += zip(
            others, rt.freq.rates([s.id for s in others], time.time()).tolist(), strict=True
        )
    for start in range(0, len(todo), CHUNK):
        with rt.lock:
            chunk = todo[start : start + CHUNK]
            states = [s for s, _ in chunk]
            utilities = placed_utilities(
                states, [rate for _, rate in chunk], tiers=tuple(name for name, _ in inputs.read_bps),
                read_bps=[bps for _, bps in inputs.read_bps], cost_model=cost_model, alpha=inputs.alpha,
                query_tokens=inputs.query_tokens,
            )  # fmt: skip
            for (state, rate), value in zip(chunk, utilities.tolist(), strict=True):
                state.priced_freq, state.utility = rate, value
                rt.dirty.add(state.id)
    return inputs


def _drifted(state, value: float) -> bool:
    """Whether a context's row, priced before, is off the plan's utility by more than the
    tolerance (or was never priced)."""
    if state.utility is None or state.priced_freq is None:
        return True
    return abs(value - state.utility) > RECORD_REL_CHANGE * abs(state.utility)
