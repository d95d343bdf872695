"""Hostile input (CI size): fuzzed argv, malformed command rows, hostile ids, planted symlinks."""

from __future__ import annotations

import pytest
from faults_hostile import (
    HOSTILE_IDS,
    KNOWN_BAD_IDS,
    fuzz_cli,
    hostile_ids,
    malformed_commands,
    planted_symlinks,
)


def test_fuzzed_cli_exits_with_documented_codes_and_no_traceback(tmp_path):
    figure, problems = fuzz_cli(tmp_path, examples=500, seed=3)
    assert problems == []
    assert figure.count == 500


def test_malformed_command_rows_are_answered_and_the_manager_keeps_serving(tmp_path):
    figure, problems = malformed_commands(tmp_path)
    assert problems == []
    assert figure.count >= 20


def test_hostile_ids_stay_in_the_disk_folder(tmp_path):
    ids = tuple(i for i in HOSTILE_IDS if i not in KNOWN_BAD_IDS)
    figure, problems = hostile_ids(tmp_path, ids)
    assert problems == []


@pytest.mark.parametrize("bad", KNOWN_BAD_IDS, ids=repr)
def test_ids_with_a_trailing_nul_or_a_lone_surrogate_are_refused_cleanly(tmp_path, bad):
    _, problems = hostile_ids(tmp_path, (bad,))
    assert problems == []


def test_planted_symlinks_are_never_followed(tmp_path):
    _, problems = planted_symlinks(tmp_path)
    assert problems == []
