"""Scale (CI size): kill -9 of a manager serving a built state, timed restarts that adopt every
committed disk copy; a cloned state served and its memory read."""

from __future__ import annotations

from faults_scale import build, recovery_at_scale, rss_at_scale


def test_kill_9_while_serving_a_built_state_loses_no_disk_copy(tmp_path):
    build(tmp_path, 200, progress=False)
    figure, problems = recovery_at_scale(tmp_path, 200, kills=1)
    assert problems == []
    assert figure.count == 1 and figure.lost == 0 and figure.recovery_s


def test_a_cloned_state_is_adopted_and_served_whole(tmp_path):
    figure, problems = rss_at_scale(tmp_path, 400, template=100, seconds=2.0)
    assert problems == []
    assert figure.count == 400 and figure.lost == 0
    assert any("RSS" in note for note in figure.notes)
