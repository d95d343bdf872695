"""kill -9 of a real manager process at each kill point, then a checked restart (CI size)."""

from __future__ import annotations

from faults_crash import CrashHarness
from faults_worker import POINTS


def test_every_kill_point_restarts_with_nothing_lost(tmp_path):
    harness = CrashHarness(tmp_path, seed=7)
    figure = harness.run(len(POINTS) + 1)  # each named step once, and one random moment
    assert harness.problems == []
    assert figure.lost == 0
    assert figure.count == len(POINTS) + 1
    assert set(harness.by_point) - {"random"} <= set(POINTS)
