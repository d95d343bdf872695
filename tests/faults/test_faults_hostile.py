"""Hostile input (CI size): fuzzed argv, malformed command rows, hostile ids, planted symlinks."""

from __future__ import annotations

import time

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


def test_flags_that_are_not_json_booleans_fail_the_command_and_change_nothing(tmp_path):
    """`"force": "no"` read as truthy would do what the row says not to: strict true/false only."""
    import json
    from pathlib import Path

    from faults_common import make_config, make_kv
    from faults_hostile import _insert_raw, _status

    from evicctl.manager.manager import Manager

    config = make_config(tmp_path, cpu_contexts=4, disk_contexts=24, quality_floor=0.9)
    db = Path(config.db_path)

    def answer(verb: str, args: dict) -> tuple[str, dict]:
        row = {"verb": verb, "context_id": "ctx-0", "args_json": json.dumps(args), "created_at": time.time(), "actor": "op"}
        command_id = _insert_raw(db, row)
        deadline = time.monotonic() + 20
        while (out := _status(db, command_id))[0] in ("pending", "running") and time.monotonic() < deadline:
            time.sleep(0.02)
        return out

    with Manager(config, probe=False) as manager:
        manager.store("ctx-0", make_kv(0))
        before = manager.placement("ctx-0")
        for bad in ("no", "false", "true", 0, 1, None, [], {}):
            status, result = answer("recompress", {"codec": "int4", "force": bad})
            assert status == "failed", (bad, status, result)
            assert "force must be true or false" in result["message"] and result["error"] == "usage"
            status, result = answer("evict", {"to": "drop", "dry_run": bad})
            assert status == "failed", (bad, status, result)
            assert "dry_run must be true or false" in result["message"]
        assert manager.placement("ctx-0") == before  # nothing recompressed, nothing dropped
        # JSON booleans mean what they say.
        status, result = answer("recompress", {"codec": "int4", "force": False})
        assert status == "refused" and "quality floor" in result["message"], result
        status, result = answer("evict", {"to": "drop", "dry_run": True})
        assert status == "done" and result["message"].startswith("dry run"), result
        assert manager.placement("ctx-0") == before
        status, result = answer("recompress", {"codec": "int4", "force": True})
        assert status == "done", result
        assert manager.placement("ctx-0").codec == "int4"
