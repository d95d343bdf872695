"""Workload: deterministic by seed, Zipf-skewed, Poisson-timed, CSV replay, questions from
the test half."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from evicctl.engine.data import QA, Context, split_questions
from evicctl.engine.workload import replay_csv, zipf_poisson, zipf_weights
from evicctl.errors import UsageError


def _contexts(n: int = 10) -> list[Context]:
    out = []
    for i in range(n):
        qas = [QA(f"{i}-{j}", f"q{j} of {i}?", ("a",)) for j in range(6)]
        prof, test = split_questions(f"c{i}", qas, seed=0)
        out.append(Context(f"c{i}", f"ctx {i}", "squad", "text", 100, prof, test))
    return out


def test_split_is_disjoint_halves_and_deterministic():
    qas = [QA(str(j), f"q{j}", ()) for j in range(7)]
    prof, test = split_questions("x", qas, seed=3)
    assert len(prof) == 3 and len(test) == 4 and not {q.id for q in prof} & {q.id for q in test}
    assert (prof, test) == split_questions("x", qas, seed=3)
    assert (prof, test) != split_questions("x", qas, seed=4)
    one = [QA("only", "q", ())]
    assert split_questions("y", one, seed=0) == (tuple(one), tuple(one))


def test_zipf_poisson_is_deterministic_skewed_and_timed():
    ctx = _contexts()
    a = list(zipf_poisson(ctx, rate_rps=2.0, exponent=1.2, requests=2000, seed=7))
    b = list(zipf_poisson(ctx, rate_rps=2.0, exponent=1.2, requests=2000, seed=7))
    assert [(r.at_s, r.context.id, r.qa.id) for r in a] == [(r.at_s, r.context.id, r.qa.id) for r in b]
    counts = Counter(r.context.id for r in a).most_common()
    assert counts[0][1] > 3 * counts[-1][1]  # skewed
    gaps = np.diff([0.0] + [r.at_s for r in a])
    assert abs(gaps.mean() - 0.5) < 0.05  # Poisson at 2 req/s
    test_ids = {q.id for c in ctx for q in c.test}
    assert all(r.qa.id in test_ids for r in a)
    other = list(zipf_poisson(ctx, rate_rps=2.0, exponent=1.2, requests=50, seed=8))
    assert [r.context.id for r in other] != [r.context.id for r in a[:50]]


def test_zipf_exponent_zero_is_uniform_and_duration_bounds():
    assert np.allclose(zipf_weights(4, 0.0), 0.25)
    reqs = list(zipf_poisson(_contexts(), rate_rps=1.0, duration_s=30.0, seed=1))
    assert reqs and reqs[-1].at_s <= 30.0
    with pytest.raises(UsageError):
        list(zipf_poisson(_contexts(), rate_rps=0.0, requests=1))


def test_replay_csv(tmp_path):
    ctx = _contexts(3)
    trace = tmp_path / "t.csv"
    trace.write_text("timestamp,context\n100.5,c2\n100.0,1\n101.0,\n")
    reqs = list(replay_csv(trace, ctx, seed=0))
    assert [r.at_s for r in reqs] == [0.0, 0.5, 1.0]
    assert [r.context.id for r in reqs[:2]] == ["c1", "c2"]
    bad = tmp_path / "bad.csv"
    bad.write_text("time\n1\n")
    with pytest.raises(UsageError, match="timestamp"):
        list(replay_csv(bad, ctx))
    unknown = tmp_path / "u.csv"
    unknown.write_text("timestamp,context\n1,nope\n")
    with pytest.raises(UsageError, match="nope"):
        list(replay_csv(unknown, ctx))
