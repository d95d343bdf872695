"""The environment turning hostile (CI size). Filesystem limits need mount rights: skipped without."""

from __future__ import annotations

import pytest
from faults_env import (
    clock_backwards,
    database_locked,
    filesystem_full,
    readonly_folder,
    tampered_files,
)


def test_tampered_files_are_never_served(tmp_path):
    figure, problems = tampered_files(tmp_path, per_kind=2)
    assert problems == []
    assert figure.count == 16


@pytest.mark.parametrize("fault", [filesystem_full, readonly_folder], ids=lambda f: f.__name__)
def test_filesystem_limits_leave_nothing_half_written(tmp_path, fault):
    figure, problems = fault(tmp_path)
    if any(n.startswith("skipped") for n in figure.notes):
        pytest.skip(figure.notes[0])
    assert problems == []


def test_database_locked_longer_than_the_busy_timeout_loses_nothing(tmp_path):
    _, problems = database_locked(tmp_path, hold_s=6.0, contexts=6)
    assert problems == []


def test_clock_jumping_back_keeps_the_manager_alive_to_readers(tmp_path):
    _, problems = clock_backwards(tmp_path, hold_s=6.0, contexts=4)
    assert problems == []
