"""A rebalance moves contexts up into a faster tier's free room for any gain: the hysteresis
(place.REBALANCE_GAIN_REL / _ABS_S) only holds where a move would displace others."""

from __future__ import annotations

import numpy as np

from evicctl.manager.placer.place import (
    REBALANCE_GAIN_ABS_S,
    REBALANCE_GAIN_REL,
    PlacementProblem,
    place,
)

CODECS = ("none", "int8")
MB = 1 << 20


def on_disk(n: int = 2, cpu_mb: int = 1000, **overrides) -> PlacementProblem:
    """n 100 MB contexts stored on disk at `none`; disk is only a little slower than cpu, so
    moving up gains less than the rebalance hysteresis."""
    sizes = np.array([100, 50])[:, None] * MB * np.ones((1, n), dtype=np.int64)
    read_bps = np.array([10e9, 9e9])
    args = dict(
        context_ids=np.array([f"c{i}" for i in range(n)], dtype=object),
        freq=np.linspace(1.0, 0.5, n),
        tokens=np.full(n, 1000),
        codecs=CODECS,
        tiers=("cpu", "disk"),
        capacity_bytes=np.array([cpu_mb, 1000]) * MB,
        stored_bytes=sizes,
        quality=np.array([[1.0], [0.9]]) * np.ones((1, n)),
        ttft_s=sizes[None] / read_bps[:, None, None] + 0.01,
        miss_ttft_s=np.full(n, 1.5),
        alpha=2.0,
        current_tier=np.ones(n, dtype=np.int64),
        current_codec=np.zeros(n, dtype=np.int64),
        rebalance=True,
    )
    args.update(overrides)
    return PlacementProblem(**args)


def test_the_gain_is_within_the_hysteresis():
    p = on_disk()
    cpu, disk = p.ttft_s[0, 0, 0], p.ttft_s[1, 0, 0]
    assert 0 < disk - cpu < max(REBALANCE_GAIN_ABS_S, REBALANCE_GAIN_REL * disk)


def test_a_rebalance_promotes_into_free_room_below_the_hysteresis():
    plan = place(on_disk())
    assert [plan.option_of(i) for i in range(2)] == [("cpu", "none")] * 2
    assert {m.kind for m in plan} == {"promote"} and {m.reason for m in plan} == {"utility"}
    assert plan.feasible


def test_free_room_goes_to_the_most_gain_per_byte_first():
    plan = place(on_disk(n=3, cpu_mb=250, freq=np.array([0.2, 1.0, 0.5])))  # room for two of three
    assert [plan.option_of(i)[0] for i in range(3)] == ["disk", "cpu", "cpu"]
    assert plan.feasible and plan.used_bytes[0] == 200 * MB


def test_no_room_no_promotion_below_the_hysteresis():
    """The fast tier is full: moving up would displace a context there; the hysteresis holds."""
    current_tier = np.array([1, 0])
    plan = place(on_disk(cpu_mb=100, current_tier=current_tier, freq=np.array([1.0, 0.9])))
    assert len(plan) == 0


def test_only_a_rebalance_promotes_and_not_a_settled_context():
    assert len(place(on_disk(rebalance=False))) == 0  # a pressure re-plan keeps contexts where they are
    plan = place(on_disk(settled=np.array([True, False])))
    assert [plan.option_of(i)[0] for i in range(2)] == ["disk", "cpu"]
