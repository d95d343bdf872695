"""Invariants of the placer on random problems with random pins, floors and current placements."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from evicctl.manager.placer.exact import random_problem
from evicctl.manager.placer.place import DROPPED, NO_PIN, PlacementProblem, build_options, place

CODECS = ("none", "int8", "int4", "knorm@0.5", "snapkv@0.5", "knorm@0.75", "snapkv@0.5+int8")


@st.composite
def problems(draw) -> PlacementProblem:
    seed = draw(st.integers(0, 2**32 - 1))
    n = draw(st.integers(1, 40))
    rng = np.random.default_rng(seed)
    fractions = tuple(draw(st.floats(0.0, 0.6)) for _ in range(3))
    base = random_problem(rng, n, codecs=CODECS, capacity_fractions=fractions)
    n_codecs, n_tiers = len(CODECS), 3
    existing = rng.random(n) < draw(st.floats(0, 1))
    current_tier = np.where(existing, rng.integers(0, n_tiers, n), -1)
    current_codec = np.where(existing, rng.integers(0, n_codecs, n), -1)
    current_tier[existing & (rng.random(n) < 0.1)] = DROPPED
    current_codec[current_tier == DROPPED] = -1
    pin_tier = np.where(rng.random(n) < draw(st.floats(0, 0.3)), rng.integers(0, n_tiers, n), NO_PIN)
    pin_codec = np.where(rng.random(n) < draw(st.floats(0, 0.3)), rng.integers(0, n_codecs, n), NO_PIN)
    return PlacementProblem(
        context_ids=base.context_ids,
        freq=base.freq * (rng.random(n) < 0.95),  # a few never looked up
        tokens=base.tokens,
        codecs=base.codecs,
        tiers=base.tiers,
        capacity_bytes=base.capacity_bytes,
        stored_bytes=base.stored_bytes,
        quality=base.quality,
        quality_lower=base.quality_lower,
        profiled=rng.random((n_codecs, n)) < 0.8,
        ttft_s=base.ttft_s,
        miss_ttft_s=base.miss_ttft_s,
        alpha=base.alpha,
        current_tier=current_tier,
        current_codec=current_codec,
        pin_tier=pin_tier,
        pin_codec=pin_codec,
        quality_floor=np.where(rng.random(n) < 0.3, rng.uniform(0.5, 1.0, n), 0.0),
        rebalance=draw(st.booleans()),
    )


@settings(max_examples=150, deadline=None)
@given(problems())
def test_plan_invariants(p: PlacementProblem):
    plan = place(p)
    n = p.n_contexts
    dropped = plan.tier_index == DROPPED
    # Every context is in exactly one option.
    assert ((plan.codec_index == -1) == dropped).all()
    assert ((plan.tier_index >= 0) | dropped).all()
    # A context with no copy stays dropped; dropped ones use no bytes.
    assert dropped[p.current_tier == DROPPED].all()
    # No tier over capacity, except by the bytes of contexts that may not leave it (pinned
    # there, undroppable because of a pinned codec, or reported as conflicts): every other
    # byte on a tier must fit beside them.
    opts = build_options(p)
    conflicted = np.zeros(n, dtype=bool)
    conflicted[plan.conflicts] = True
    for t in range(len(p.tiers)):
        on_tier = np.flatnonzero(plan.tier_index == t)
        held = p.stored_bytes[plan.codec_index[on_tier], on_tier]
        stuck = (p.pin_tier[on_tier] == t) | conflicted[on_tier] | ~opts.drop_ok[on_tier]
        assert int(held.sum()) == int(plan.used_bytes[t])
        assert int(held.sum()) <= max(int(p.capacity_bytes[t]), int(held[stuck].sum())), (t, held, stuck)
    conflicts = set(plan.conflicts.tolist())
    for i in range(n):
        if i in conflicts:
            continue
        t, c = int(plan.tier_index[i]), int(plan.codec_index[i])
        if p.current_tier[i] == DROPPED:
            continue
        # Pins hold.
        if p.pin_tier[i] >= 0:
            assert t == p.pin_tier[i]
        if p.pin_codec[i] >= 0:
            assert c == p.pin_codec[i]
        if c >= 0:
            # Floors and profiles hold (an operator's pinned codec overrides them).
            assert opts.codec_ok[c, i]
            if p.pin_codec[i] < 0 and p.codecs[c] != "none":
                assert p.profiled[c, i]
                assert p.quality_lower[c, i] >= p.quality_floor[i]
            # A stored copy only recompresses to codecs it can still reach.
            if p.current_tier[i] >= 0:
                assert p.derivable[p.current_codec[i], c]
        # Relieving pressure never grows a context that stays where it was allowed to be.
        cur_t, cur_c = int(p.current_tier[i]), int(p.current_codec[i])
        if cur_t >= 0 and not p.rebalance and opts.codec_ok[cur_c, i] and opts.tier_ok[cur_t, i] and c >= 0:
            assert p.stored_bytes[c, i] <= p.stored_bytes[cur_c, i]
    # Moves name real options and carry a known reason.
    for move in plan:
        assert move.reason in {"admit", "capacity", "utility", "pin", "quality-floor", "operator"}
        assert (move.to_tier == "dropped") == (move.to_codec is None)


@settings(max_examples=60, deadline=None)
@given(problems())
def test_placing_a_plan_again_changes_nothing(p: PlacementProblem):
    """A plan is a fixed point: re-planning from its result (no rebalance) moves nothing."""
    plan = place(p)
    if not plan.feasible:
        return
    again = PlacementProblem(
        **{
            **{f: getattr(p, f) for f in p.__dataclass_fields__},
            "current_tier": plan.tier_index,
            "current_codec": plan.codec_index,
            "rebalance": False,
        }
    )
    assert len(place(again)) == 0


def with_duplicate_codec(p: PlacementProblem, k: int, rng: np.random.Generator) -> PlacementProblem:
    """p with codec k listed twice (a repeated name in a config); some copies at the repeat."""
    def dup(a, axis=0):
        return np.concatenate([a, np.take(a, [k], axis=axis)], axis=axis)

    current_codec = p.current_codec.copy()
    at_k = np.flatnonzero(current_codec == k)
    current_codec[at_k[rng.random(len(at_k)) < 0.5]] = len(p.codecs)  # the repeated name's index
    fields = {f: getattr(p, f) for f in p.__dataclass_fields__}
    fields.update(
        codecs=(*p.codecs, p.codecs[k]),
        stored_bytes=dup(p.stored_bytes), quality=dup(p.quality), quality_lower=dup(p.quality_lower),
        profiled=dup(p.profiled), ttft_s=dup(p.ttft_s, axis=1), current_codec=current_codec,
        pin_codec=p.pin_codec, derivable=None, settled=rng.random(p.n_contexts) < 0.3,
    )  # fmt: skip
    return PlacementProblem(**fields)


@settings(max_examples=60, deadline=None)
@given(problems(), st.integers(0, 2**32 - 1))
def test_no_move_is_a_self_move(p: PlacementProblem, seed: int):
    """No move names the (tier, codec) its context is at: such a move copies onto the copy it
    then deletes. Codec names repeated in the list (two options naming one copy) included."""
    rng = np.random.default_rng(seed)
    for problem in (p, with_duplicate_codec(p, int(rng.integers(0, len(p.codecs))), rng)):
        for move in place(problem):
            assert (move.from_tier, move.from_codec) != (move.to_tier, move.to_codec), move
