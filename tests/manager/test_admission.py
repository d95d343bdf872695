"""Incremental admission: a new context is admitted against the current placement (placer.admit)
and the full re-plan runs later, on the control thread. The placer's side on random instances,
the manager's on a real one (real SQLite file, cpu and disk tiers, random KV)."""

from __future__ import annotations

import threading

import numpy as np
from manager_helpers import KV_BYTES, make_config, make_kv

from evicctl.config import DEFAULT_CODECS
from evicctl.manager.manager import Manager
from evicctl.manager.placer.admit import admission_plan, room_prices
from evicctl.manager.placer.admit_replay import replay_admissions, select
from evicctl.manager.placer.exact import random_problem
from evicctl.manager.placer.place import NEW, place
from evicctl.manager.priced import record_priced

QUALITY = {"int8": 0.99, "int4": 0.93, "knorm@0.5": 0.7, "knorm@0.5+int8": 0.69}


def test_admission_into_free_room_is_the_full_plans_choice():
    """With room on every tier a full plan moves nobody else: the newcomer's option is its best."""
    rng = np.random.default_rng(3)
    p = random_problem(rng, 400, codecs=DEFAULT_CODECS, capacity_fractions=(1.5, 1.5, 1.5))
    n = p.n_contexts
    new = np.full(n, NEW, dtype=np.int64)
    cold = place(select(p, np.arange(n - 20), new[: n - 20], new[: n - 20]))
    tier, codec = new.copy(), new.copy()
    tier[: n - 20], codec[: n - 20] = cold.tier_index, cold.codec_index
    used = np.bincount(cold.tier_index[cold.tier_index >= 0], minlength=3)
    assert used[0] > 0  # the first tier holds contexts, and still has room
    for k in range(n - 20, n):
        present = np.arange(k + 1)
        full = place(select(p, present, tier[present], codec[present]))
        assert len(full) == 1  # only the newcomer moves
        held = np.flatnonzero(tier[:k] >= 0)
        over = (
            np.bincount(tier[held], weights=p.stored_bytes[codec[held], held], minlength=3)
            - p.capacity_bytes
        )
        one = admission_plan(select(p, np.array([k]), new[:1], new[:1]), over, room_prices(cold))
        assert one.option_of(0) == full.option_of(k)
        tier[present], codec[present] = full.tier_index, full.codec_index


def test_admission_prices_room_on_a_full_tier():
    """A full fast tier: the replay's utility stays within the greedy-vs-exact tolerance of a
    full re-plan per arrival; admitting into free room only (no room prices) does not."""
    rng = np.random.default_rng(0)
    p = random_problem(rng, 700, codecs=DEFAULT_CODECS, capacity_fractions=(0.05, 0.3, 0.4))
    priced = replay_admissions(p, 500, replan_every=16)
    assert priced.overflowing > 0  # some admissions displaced others
    assert priced.mean_gap < 0.02 and priced.ratio.min() > 0.98, (
        priced.mean_gap,
        priced.ratio.min(),
    )
    free_room_only = replay_admissions(p, 500, replan_every=16, priced=False)
    assert free_room_only.mean_gap > priced.mean_gap


def busy_manager(tmp_path, contexts: int = 8) -> Manager:
    m = Manager(
        make_config(tmp_path, cpu_bytes=2 * KV_BYTES, disk_bytes=3 * KV_BYTES, replan_s=3600.0),
        probe=False,
    )
    for i in range(contexts):
        m.store(f"c{i}", make_kv(i), prefill_s=0.3 + 0.1 * i)
        for codec, q in QUALITY.items():
            m.record_profile(f"c{i}", codec, q, 0.01, 8, "teacher-forced")
        for j in range(i % 3 + 1):
            m.lookup(f"c{j}")
    return m


def test_after_the_background_replan_the_placement_is_a_full_replans(tmp_path):
    m = busy_manager(tmp_path)
    try:
        m.rt.replan_needed = True
        m.tick()  # the control thread's re-plan
        plan = m.plan()  # what a full re-plan from here gives
        assert len(plan) == 0, list(plan)
        ids = plan.problem.context_ids.tolist()
        for i, cid in enumerate(ids):
            p = m.placement(cid)
            assert plan.option_of(i) == (p.tier, p.codec)
        assert {m.placement(c).tier for c in m.context_ids()} >= {"cpu", "disk"}
        counted = dict(m.rt.placed_bytes)
        m.rt.recount_placed()
        assert counted == m.rt.placed_bytes  # the admissions and moves kept the count exact
        for tier in m.tiers:
            assert m.rt.placed_bytes[tier.name] <= tier.capacity_bytes
    finally:
        m.close()


def test_incremental_admission_ends_where_full_replanning_does(tmp_path):
    """The same arrivals, once admitted incrementally (with the background re-plan after each),
    once with a full re-plan inside every store(): the same placement of every context."""
    placements = []
    for incremental in (True, False):
        m = Manager(make_config(tmp_path / str(incremental), cpu_bytes=2 * KV_BYTES, disk_bytes=3 * KV_BYTES,
                                replan_s=3600.0), probe=False)  # fmt: skip
        m.admit_incrementally = incremental
        try:
            for i in range(7):
                for j in range(i):
                    m.lookup(f"c{j}") if (i + j) % 2 else None
                m.store(f"c{i}", make_kv(i), prefill_s=0.2 + 0.05 * i)
                for codec, q in QUALITY.items():
                    m.record_profile(f"c{i}", codec, q, 0.01, 8, "teacher-forced")
                m.rt.replan_needed = True
                m.tick()
            placements.append(
                {c: (m.placement(c).tier, m.placement(c).codec) for c in m.context_ids()}
            )
        finally:
            m.close()
    assert placements[0] == placements[1]


def test_store_does_not_wait_for_a_plan(tmp_path):
    """A plan (the control thread's) holds the execution lock while it plans and moves data;
    store() admits without it."""
    m = Manager(make_config(tmp_path), probe=False)
    planning, done = threading.Event(), threading.Event()

    def long_plan():
        with m.rt.exec_lock:
            planning.set()
            done.wait(10)

    thread = threading.Thread(target=long_plan)
    thread.start()
    try:
        planning.wait(5)
        result = []
        store = threading.Thread(target=lambda: result.append(m.store("doc", make_kv(1))))
        store.start()
        store.join(5)
        assert result and result[0].tier == "cpu", "store() waited for the plan"
    finally:
        done.set()
        thread.join()
        m.close()


def test_record_priced_rewrites_only_changed_rows(tmp_path):
    m = busy_manager(tmp_path)
    try:
        m.rt.replan_needed = True
        m.tick()
        plan = m.plan()
        model = m._pricing_model(plan.problem.priced_with.cost_model)
        inputs = record_priced(
            m.rt, plan, model, m._pricing
        )  # rates decayed since the tick: rows drifted
        assert inputs == plan.problem.priced_with == m._pricing
        with m.rt.lock:
            m.rt.dirty.clear()
        record_priced(m.rt, plan, model, inputs)
        assert m.rt.dirty == set()  # same figures, nobody moved, the same rates
        ctx = m.context("c0")
        ctx.utility *= 1.5  # off the plan's utility: that row is repriced and rewritten
        record_priced(m.rt, plan, model, inputs)
        assert m.rt.dirty == {"c0"}
        with m.rt.lock:
            m.rt.dirty.clear()
        record_priced(m.rt, plan, model, None)  # other figures: every row
        assert m.rt.dirty == set(m.context_ids())
        assert ctx.utility == plan.utility[plan.problem.context_ids.tolist().index("c0")]
    finally:
        m.close()
