"""The placer and its inputs: frequency, utility, the greedy against the heap greedy and the MILP."""

from __future__ import annotations

import numpy as np
import pytest

from evicctl.manager.freq import DecayedRate
from evicctl.manager.placer.exact import lagrangian_bound, naive_place, random_problem, solve_exact
from evicctl.manager.placer.place import (
    DROPPED,
    KINDS,
    NEW,
    REASONS,
    Move,
    PlacementProblem,
    derivable_matrix,
    place,
)
from evicctl.manager.placer.pricing import miss_utility, utility

CODECS = ("none", "int8", "knorm@0.5")
TIERS = ("cpu", "disk")
MB = 1 << 20


def problem(n: int = 2, **overrides) -> PlacementProblem:
    """n identical 100 MB contexts: int8 halves them, knorm@0.5 halves them; cpu is fast, disk slow."""
    sizes = np.array([100, 50, 50])[:, None] * MB * np.ones((1, n), dtype=np.int64)
    quality = np.array([1.0, 0.99, 0.7])[:, None] * np.ones((1, n))
    read_bps = np.array([10e9, 0.5e9])
    ttft = sizes[None] / read_bps[:, None, None] + 0.01
    args = dict(
        context_ids=np.array([f"c{i}" for i in range(n)], dtype=object),
        freq=np.ones(n),
        tokens=np.full(n, 1000),
        codecs=CODECS,
        tiers=TIERS,
        capacity_bytes=np.array([1000, 1000]) * MB,
        stored_bytes=sizes,
        quality=quality,
        ttft_s=ttft,
        miss_ttft_s=np.full(n, 1.5),
        alpha=2.0,
    )
    args.update(overrides)
    return PlacementProblem(**args)


def test_a_new_context_gets_its_best_option():
    plan = place(problem())
    # none beats int8: 0.01 of quality is worth 0.02 s (alpha 2), int8 saves 0.005 s of load.
    assert [plan.option_of(i) for i in range(2)] == [("cpu", "none")] * 2
    assert [m.reason for m in plan] == ["admit", "admit"]
    assert plan.feasible and plan.used_bytes.tolist() == [200 * MB, 0]


def test_overflow_compresses_or_demotes_the_cheapest_context_first():
    # Room on cpu for one full context and one half: the idle context gives way.
    p = problem(capacity_bytes=np.array([150, 1000]) * MB, freq=np.array([1.0, 0.01]))
    plan = place(p)
    assert plan.option_of(0) == ("cpu", "none")
    assert plan.option_of(1) == ("cpu", "int8")  # compress in place: loses 0.02 quality, not 0.1 s
    assert plan.used_bytes[0] <= 150 * MB


def test_overflow_recurses_downward_and_drops_last():
    # cpu holds one int8 copy: the busy context keeps it, the other goes to disk ...
    p = problem(capacity_bytes=np.array([50, 50]) * MB, freq=np.array([1.0, 0.5]))
    plan = place(p)
    assert plan.option_of(0) == ("cpu", "int8")
    assert plan.option_of(1) == ("disk", "int8")
    assert [m.kind for m in plan] == ["admit", "admit"]
    # ... and is dropped only when the disk has no room either.
    plan = place(problem(capacity_bytes=np.array([50, 0]) * MB, freq=np.array([1.0, 0.5])))
    assert plan.option_of(1) == ("dropped", None)
    assert plan.feasible and plan.used_bytes.tolist() == [50 * MB, 0]


def test_pins_hold_and_a_pin_that_cannot_fit_is_reported():
    p = problem(capacity_bytes=np.array([100, 1000]) * MB, freq=np.array([1.0, 0.01]),
                pin_tier=np.array([-1, 0]))  # fmt: skip
    plan = place(p)
    assert plan.option_of(1)[0] == "cpu"  # the idle but pinned context keeps the cpu
    assert plan.option_of(0)[0] != "cpu" or plan.option_of(0)[1] != "none"
    assert plan.feasible
    too_big = problem(capacity_bytes=np.array([40, 1000]) * MB, pin_tier=np.array([0, -1]),
                      pin_codec=np.array([0, -1]))  # fmt: skip
    plan = place(too_big)
    assert not plan.feasible and plan.overflow_bytes[0] == 60 * MB
    assert plan.option_of(0) == ("cpu", "none")


def test_quality_floor_and_profiles_exclude_options():
    p = problem(capacity_bytes=np.array([100, 0]) * MB, freq=np.array([1.0, 0.5]),
                quality_floor=np.array([0.0, 0.995]))  # fmt: skip
    plan = place(p)
    assert plan.option_of(1) == ("dropped", None)  # int8 (0.99) is below its floor: no room else
    unprofiled = np.array([[True, True], [False, False], [True, True]])
    plan = place(problem(capacity_bytes=np.array([100, 0]) * MB, profiled=unprofiled))
    assert all(plan.option_of(i)[1] != "int8" for i in range(2))


def test_existing_context_moves_are_explained_and_never_grow():
    current_tier = np.array([0, 0])
    current_codec = np.array([0, 0])
    p = problem(capacity_bytes=np.array([150, 1000]) * MB, current_tier=current_tier,
                current_codec=current_codec, freq=np.array([1.0, 0.01]))  # fmt: skip
    plan = place(p)
    (move,) = plan.moves
    assert (move.context_id, move.reason, move.kind) == ("c1", "capacity", "compress")
    assert move.from_tier == "cpu" and move.from_codec == "none" and move.to_codec == "int8"
    assert move.utility_after < move.utility_before
    # Knorm cannot go back to none: from a knorm@0.5 copy only knorm@0.5 (and harder) remains.
    p = problem(current_tier=np.array([1, 1]), current_codec=np.array([2, 2]), rebalance=True)
    plan = place(p)
    assert [plan.option_of(i) for i in range(2)] == [("cpu", "knorm@0.5")] * 2
    assert {m.reason for m in plan} == {"utility"} and {m.kind for m in plan} == {"promote"}


def test_operator_force_and_pin_reasons():
    p = problem(current_tier=np.array([0, 0]), current_codec=np.array([0, 0]),
                force_tier=np.array([DROPPED, -1]), pin_codec=np.array([-1, 1]))  # fmt: skip
    plan = place(p)
    reasons = {m.context_id: m.reason for m in plan}
    assert reasons == {"c0": "operator", "c1": "pin"}
    assert plan.option_of(0) == ("dropped", None) and plan.option_of(1) == ("cpu", "int8")


def test_unreachable_pinned_codec_is_a_conflict_not_a_crash():
    p = problem(current_tier=np.array([0, 0]), current_codec=np.array([2, 0]), pin_codec=np.array([0, -1]))
    plan = place(p)
    assert plan.conflicts.tolist() == [0]
    assert not plan.feasible
    assert plan.option_of(0) == ("cpu", "knorm@0.5")  # stays where it is


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="stored_bytes"):
        problem(stored_bytes=np.ones((2, 3), dtype=np.int64))


def test_derivable_matrix():
    names = ("none", "int8", "int4", "knorm@0.25", "knorm@0.5", "snapkv@0.5", "knorm@0.5+int8")
    d = derivable_matrix(names)
    idx = {n: i for i, n in enumerate(names)}

    def ok(a, b):
        return bool(d[idx[a], idx[b]])

    assert all(ok("none", b) for b in names)
    assert ok("int8", "int4") and not ok("int4", "int8") and not ok("int8", "none")
    assert ok("knorm@0.25", "knorm@0.5") and not ok("knorm@0.5", "knorm@0.25")
    assert not ok("knorm@0.5", "snapkv@0.5") and ok("knorm@0.5", "knorm@0.5+int8")
    assert ok("int8", "knorm@0.5+int8") and not ok("knorm@0.5+int8", "knorm@0.5")


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_greedy_matches_the_heap_greedy(seed):
    rng = np.random.default_rng(seed)
    p = random_problem(rng, 300, existing=0.3 * (seed % 2))
    fast, slow = place(p), naive_place(p)
    assert fast.total_utility == pytest.approx(slow.total_utility, rel=1e-6)
    assert (fast.tier_index == slow.tier_index).mean() > 0.99
    assert fast.feasible and slow.feasible


def test_greedy_is_within_a_few_percent_of_the_exact_optimum():
    rng = np.random.default_rng(7)
    gaps = []
    for _ in range(25):
        p = random_problem(rng, 15, codecs=("none", "int8", "int4", "knorm@0.5", "snapkv@0.5", "snapkv@0.5+int8"))
        exact = solve_exact(p)
        greedy = place(p)
        assert exact.status == "optimal"
        assert greedy.total_utility <= exact.total_utility + 1e-6 * abs(exact.total_utility)
        gaps.append((exact.total_utility - greedy.total_utility) / abs(exact.total_utility))
    assert np.mean(gaps) < 0.03


def test_lagrangian_and_lp_bounds_are_upper_bounds():
    rng = np.random.default_rng(3)
    p = random_problem(rng, 12, codecs=("none", "int8", "knorm@0.5"))
    exact = solve_exact(p).total_utility
    lp = solve_exact(p, relax=True).total_utility
    lag = lagrangian_bound(p, sweeps=2, steps=30)
    assert lp >= exact - 1e-9 * abs(exact)
    assert lag >= exact - 1e-6 * abs(exact)


def test_new_marker_and_empty_problem():
    assert NEW == -1
    p = problem(n=0, stored_bytes=np.zeros((3, 0), dtype=np.int64), quality=np.zeros((3, 0)),
                ttft_s=np.zeros((2, 3, 0)))  # fmt: skip
    plan = place(p)
    assert len(plan) == 0 and plan.feasible


def test_decayed_rate_reads_vectorised_forgets_and_restores():
    """The API the manager uses (the estimator itself: tests/manager/test_freq.py)."""
    rate = DecayedRate(half_life_s=10.0)
    assert rate.record("a", now=100.0) > 0
    rate.record("b", now=100.0)
    rate.record("b", now=100.0)
    one = [rate.rate(c, now=120.0) for c in ("b", "a")]
    assert rate.rates(["b", "a", "nobody"], now=120.0).tolist() == pytest.approx([*one, 0.0])
    assert one[0] > one[1] > 0  # asked twice beats asked once; once is never 0
    rate.forget("a")
    assert rate.rate("a", now=120.0) == 0.0 and rate.rate("b", now=120.0) > 0  # b's prior follows the population
    rate.set("c", 0.5, at=120.0)
    assert rate.rate("c", now=120.0) == pytest.approx(0.5, rel=0.1)  # shrunk a little towards the population


def test_decayed_rate_estimates_a_steady_access_rate():
    rate = DecayedRate(half_life_s=60.0)
    rng = np.random.default_rng(0)
    now = 0.0
    for gap in rng.exponential(1 / 2.0, 4000):  # Poisson accesses at 2 per second
        now += gap
        rate.record("ctx", now)
    assert rate.rate("ctx", now) == pytest.approx(2.0, rel=0.3)


def test_utility_formula_broadcasts():
    freq = np.array([1.0, 0.5])
    u = utility(freq[:, None], 2.0, np.array([[1.0, 0.9]]), np.array([[0.1, 0.05]]))
    assert np.allclose(u, [[1.9, 1.75], [0.95, 0.875]])
    assert miss_utility(2.0, 2.0, 1.5) == pytest.approx(1.0)


def test_plan_builds_moves_lazily_and_by_kind():
    rng = np.random.default_rng(11)
    p = random_problem(rng, 500, existing=0.5, capacity_fractions=(0.05, 0.2, 0.3))
    plan = place(p)
    moves = list(plan)
    assert len(moves) == len(plan) and tuple(moves) == plan.moves
    assert plan[0] == moves[0] and plan[-1] == moves[-1] and plan[1:3] == tuple(moves[1:3])
    with pytest.raises(IndexError):
        plan[len(plan)]
    # Moves follow the changed contexts, in order, and say where each ends.
    assert [m.context_id for m in moves] == p.context_ids[plan.changed].tolist()
    for m, i in zip(moves, plan.changed.tolist(), strict=True):
        assert (m.to_tier, m.to_codec) == plan.option_of(i)
        assert m.kind in KINDS and m.reason in REASONS
        assert (m.kind == "admit") == (m.from_tier is None) == (m.utility_before is None)
    kinds = {m.kind for m in moves}
    assert "admit" in kinds and len(kinds) > 1
    not_admissions = list(plan.iter_moves([k for k in KINDS if k != "admit"]))
    assert not_admissions == [m for m in moves if m.kind != "admit"]
    some = moves[len(moves) // 2]
    assert plan.move_of(some.context_id) == some
    assert plan.move_of("no such context") is None
    assert some.to_json()["context_id"] == some.context_id and set(some.to_json()) == set(Move._fields)
    with pytest.raises(AttributeError):
        some.to_tier = "gpu"  # moves are immutable


def test_plan_move_kinds():
    # c0 stays on cpu and compresses, c1 goes down to disk, c2 drops, c3 comes up, c4 is new.
    p = problem(
        n=5,
        current_tier=np.array([0, 0, 0, 1, NEW]),
        current_codec=np.array([0, 0, 0, 0, -1]),
        force_codec=np.array([1, -1, -1, -1, -1]),
        force_tier=np.array([0, 1, DROPPED, 0, -1]),
    )
    kinds = {m.context_id: (m.kind, m.from_tier, m.to_tier) for m in place(p)}
    assert kinds == {
        "c0": ("compress", "cpu", "cpu"),
        "c1": ("demote", "cpu", "disk"),
        "c2": ("drop", "cpu", "dropped"),
        "c3": ("promote", "disk", "cpu"),
        "c4": ("admit", None, "cpu"),
    }
