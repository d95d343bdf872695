"""The CLI on real databases: every command, every output format, every bad input."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
import types
from pathlib import Path

import pytest

from evicctl.cli import app
from evicctl.snapshot.read import CONTEXT_FIELDS

LS_FIELDS = ["id", "label", "tenant", "tokens", "raw_bytes", "tier", "codec", "stored_bytes", "compression_ratio",
             "quality", "utility", "freq", "hits", "misses", "last_access_at", "pin_tier", "pin_codec", "quality_floor"]
EVENT_FIELDS = ["id", "ts", "context_id", "kind", "from_tier", "to_tier", "from_codec", "to_codec", "bytes",
                "utility_before", "utility_after", "reason", "actor", "command_id"]


def _one_error_line(result, code: int, *needles: str) -> str:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("evicctl: ")
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def live_db(tmp_path, make_fixture_db):
    """A database whose manager row has a fresh heartbeat (the real clock)."""
    return make_fixture_db(tmp_path / "live.db", 20, seed=3, now=time.time(), manager="none")


# ---- help ----------------------------------------------------------------------------
def _walk(command, path=()):
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _walk(sub, (*path, name))


def test_every_command_has_help(run_cli):
    from typer.main import get_command

    root = get_command(app)
    names = {p[0] for p, _ in _walk(root) if p}
    assert {"ls", "show", "tiers", "history", "pin", "unpin", "evict", "recompress", "top", "demo", "bench"} <= names
    for path, command in _walk(root):
        assert (command.help or "").strip(), f"{path} has no help text"
        result = run_cli(*path, "--help")
        assert result.exit_code == 0, (path, result.stderr)
        assert "Usage" in result.stdout
        for param in command.params:
            if getattr(param, "hidden", False) or param.param_type_name == "argument":
                continue
            assert (param.help or "").strip(), f"{path} option {param.name} has no help"


def test_no_arguments_prints_help_and_exits_2(run_cli):
    result = run_cli()
    assert result.exit_code == 2 and "Usage" in result.stdout


def test_version(run_cli):
    result = run_cli("--version")
    assert result.exit_code == 0 and result.stdout.startswith("evicctl ")


# ---- ls --------------------------------------------------------------------------------
def test_ls_json_has_stable_fields_and_sorting(run_cli, fixture_db):
    result = run_cli("ls", "--db", fixture_db.path, "-o", "json")
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert len(rows) == len(fixture_db.context_ids)
    assert list(rows[0]) == LS_FIELDS == list(CONTEXT_FIELDS)
    utilities = [r["utility"] for r in rows if r["utility"] is not None]
    assert utilities == sorted(utilities, reverse=True)
    placed = [r for r in rows if r["stored_bytes"]]
    assert all(abs(r["compression_ratio"] - r["raw_bytes"] / r["stored_bytes"]) < 1e-9 for r in placed)


def test_ls_jsonl_csv_filters_and_limit(run_cli, fixture_db):
    db = fixture_db.path
    jl = run_cli("ls", "--db", db, "-o", "jsonl", "--tier", "disk", "--sort", "size", "--asc")
    rows = [json.loads(line) for line in jl.stdout.splitlines()]
    assert rows and all(r["tier"] == "disk" for r in rows)
    assert [r["stored_bytes"] for r in rows] == sorted(r["stored_bytes"] for r in rows)
    c = run_cli("ls", "--db", db, "-o", "csv", "--tenant", "acme", "--limit", "3")
    table = list(csv.DictReader(io.StringIO(c.stdout)))
    assert list(table[0]) == LS_FIELDS and len(table) == 3
    assert {r["tenant"] for r in table} == {"acme"}
    s = run_cli("ls", "--db", db, "-o", "json", "--search", "hotpot")
    assert all("hotpot" in r["label"] for r in json.loads(s.stdout))


def test_ls_table_when_piped_is_plain_text(run_cli, fixture_db):
    result = run_cli("ls", "--db", fixture_db.path, "--limit", "5")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["ID", "LABEL", "TENANT"]
    assert len(lines) == 1 + 5 + 1 and "5 of 50 contexts" in lines[-1]
    assert "\x1b[" not in result.stdout and "─" not in result.stdout


def test_ls_table_on_a_terminal_uses_rich(run_cli, fixture_db, monkeypatch):
    monkeypatch.setattr("evicctl.console.output.stdout_is_terminal", lambda: True)
    result = run_cli("ls", "--db", fixture_db.path, "--limit", "3")
    assert result.exit_code == 0
    assert "─" in result.stdout  # rich's header rule
    assert "ctx-00000" in result.stdout


def test_ls_unknown_tier_lists_the_valid_ones(run_cli, fixture_db):
    _one_error_line(run_cli("ls", "--db", fixture_db.path, "--tier", "ssd"), 2, "unknown tier 'ssd'", "gpu, cpu, disk")


def test_ls_unknown_sort_and_bad_format_are_usage_errors(run_cli, fixture_db):
    _one_error_line(run_cli("ls", "--db", fixture_db.path, "--sort", "nonsense"), 2, "unknown sort key", "utility")
    _one_error_line(run_cli("ls", "--db", fixture_db.path, "-o", "xml"), 2, "xml")
    _one_error_line(run_cli("ls", "--db", fixture_db.path, "--limit", "-1"), 2)
    _one_error_line(run_cli("ls", "--no-such-flag"), 2, "--no-such-flag")


def test_db_from_environment_variable(run_cli, fixture_db):
    result = run_cli("ls", "-o", "json", "--limit", "1", env={"EVICCTL_DB": str(fixture_db.path)})
    assert result.exit_code == 0 and json.loads(result.stdout)[0]["id"] == "ctx-00000"


# ---- show / tiers / history --------------------------------------------------------------
def test_show_json_shape(run_cli, fixture_db):
    result = run_cli("show", "ctx-00003", "--db", fixture_db.path, "-o", "json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert list(data) == ["context", "placement", "reason", "room_note", "alpha", "cost_model", "profiles",
                          "options", "events", "lifetimes"]
    assert data["context"]["id"] == "ctx-00003"
    assert set(data["placement"]) == {"tier", "codec", "stored_bytes", "checksum", "location", "since"}
    assert {"codec", "metric", "quality", "quality_sd", "n_queries", "measured_at"} <= set(data["profiles"][0])
    opt_fields = {"codec", "tier", "stored_bytes", "quality", "predicted_ttft_s", "utility", "chosen", "fits"}
    assert all(set(o) == opt_fields for o in data["options"])
    chosen = [o for o in data["options"] if o["chosen"]]
    assert len(chosen) == 1
    assert (chosen[0]["tier"], chosen[0]["codec"]) == (data["placement"]["tier"], data["placement"]["codec"])
    assert {(o["tier"]) for o in data["options"]} >= {"gpu", "cpu", "disk", "dropped"}
    assert all(list(e) == EVENT_FIELDS for e in data["events"])


def test_show_says_a_prior_is_a_prior(run_cli, fixture_db):
    """A profile with no queries of its own is the codec's prior: no measurement time."""
    import sqlite3

    with sqlite3.connect(fixture_db.path) as db:
        db.execute("UPDATE profiles SET n_queries = 0 WHERE context_id = 'ctx-00003'")
        db.execute("UPDATE profiles SET n_queries = 5 WHERE context_id = 'ctx-00003' AND codec = "
                   "(SELECT MIN(codec) FROM profiles WHERE context_id = 'ctx-00003')")
    data = json.loads(run_cli("show", "ctx-00003", "--db", fixture_db.path, "-o", "json").stdout)
    sources = {p["codec"]: (p["source"], p["measured_at"], p["n_queries"]) for p in data["profiles"]}
    assert any(s == "measured" and at is not None and n == 5 for s, at, n in sources.values())
    priors = [v for v in sources.values() if v[0] == "prior"]
    assert priors and all(at is None and n == 0 for _, at, n in priors)
    table = run_cli("show", "ctx-00003", "--db", fixture_db.path).stdout
    assert "prior" in table


def test_show_table_and_csv(run_cli, fixture_db):
    table = run_cli("show", "ctx-00003", "--db", fixture_db.path)
    assert table.exit_code == 0 and "placement" in table.stdout and "Options" in table.stdout
    c = run_cli("show", "ctx-00003", "--db", fixture_db.path, "-o", "csv")
    rows = list(csv.DictReader(io.StringIO(c.stdout)))
    assert rows and rows[0]["context_id"] == "ctx-00003"


def test_show_unknown_context_exits_3(run_cli, fixture_db):
    _one_error_line(run_cli("show", "ctx-nope", "--db", fixture_db.path), 3, "no such context 'ctx-nope'")


def test_tiers_json_fields(run_cli, fixture_db):
    result = run_cli("tiers", "--db", fixture_db.path, "-o", "json")
    tiers = json.loads(result.stdout)
    assert [t["name"] for t in tiers] == ["gpu", "cpu", "disk"]
    assert list(tiers[0]) == ["name", "backend", "rank", "capacity_bytes", "used_bytes", "used_fraction", "read_bps",
                              "write_bps", "hits", "hit_rate_1m", "contexts", "evictions", "median_lifetime_s",
                              "median_idle_s", "occupancy_history"]
    assert all(0 <= v <= 1 for t in tiers for v in t["occupancy_history"])
    assert sum(t["contexts"] for t in tiers) == len(fixture_db.context_ids) - len(fixture_db.dropped)
    table = run_cli("tiers", "--db", fixture_db.path)
    assert table.exit_code == 0 and "CAPACITY" in table.stdout


def test_tiers_hit_rate_over_the_last_minute(run_cli, tmp_path, make_fixture_db):
    info = make_fixture_db(tmp_path / "hr.db", 10, now=time.time())
    tiers = json.loads(run_cli("tiers", "--db", info.path, "-o", "json").stdout)
    rates = [t["hit_rate_1m"] for t in tiers]
    # fixture counters: tier rank r gains (3 - r) hits per second, misses 1 per 2 s
    assert rates == pytest.approx([3 / 6.5, 2 / 6.5, 1 / 6.5], rel=0.05)


def test_history_filters_and_formats(run_cli, fixture_db):
    db = fixture_db.path
    all_events = json.loads(run_cli("history", "--db", db, "-o", "json", "--limit", "0").stdout)
    assert len(all_events) == fixture_db.events + 1 and list(all_events[0]) == EVENT_FIELDS
    ids = [e["id"] for e in all_events]
    assert ids == sorted(ids)
    latest = json.loads(run_cli("history", "--db", db, "-o", "json", "--limit", "5").stdout)
    assert [e["id"] for e in latest] == ids[-5:]
    one = json.loads(run_cli("history", "ctx-00004", "--db", db, "-o", "json").stdout)
    assert one and {e["context_id"] for e in one} == {"ctx-00004"}
    cmd = [json.loads(x) for x in run_cli("history", "--db", db, "-o", "jsonl", "--kind", "command").stdout.splitlines()]
    assert [e["actor"] for e in cmd] == ["operator"]
    by_actor = run_cli("history", "--db", db, "-o", "csv", "--actor", "operator")
    assert len(list(csv.DictReader(io.StringIO(by_actor.stdout)))) == 1
    since = json.loads(run_cli("history", "--db", db, "-o", "json", "--since", "2025-11-29T09:50:00", "--limit", "0").stdout)
    assert since and all(e["ts"] >= fixture_db.now - 600 - 3600 for e in since)
    assert len(since) < len(all_events)


def test_history_bad_inputs(run_cli, fixture_db):
    db = fixture_db.path
    _one_error_line(run_cli("history", "ghost", "--db", db), 3, "no such context")
    _one_error_line(run_cli("history", "--db", db, "--since", "yesterday"), 2, "invalid --since", "1h")
    _one_error_line(run_cli("history", "--db", db, "--follow", "-o", "json"), 2, "--follow")


# ---- database problems -------------------------------------------------------------------
def test_missing_database(run_cli, tmp_path):
    _one_error_line(run_cli("ls", "--db", tmp_path / "none.db"), 1, "no database at", "evicctl demo")
    assert not (tmp_path / "none.db").exists()


def test_corrupt_database(run_cli, tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_bytes(os.urandom(8192))
    for args in (("ls",), ("tiers",), ("history",), ("show", "x"), ("pin", "x")):
        _one_error_line(run_cli(*args, "--db", bad), 1, "corrupt or not an evicctl database")


def test_database_path_is_a_directory(run_cli, tmp_path):
    _one_error_line(run_cli("ls", "--db", tmp_path), 1, "is a directory")
    _one_error_line(run_cli("pin", "x", "--db", tmp_path), 1, "is a directory")


def test_locked_database(run_cli, fixture_db):
    holder = sqlite3.connect(fixture_db.path, isolation_level=None)
    holder.execute("PRAGMA journal_mode = DELETE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        _one_error_line(run_cli("ls", "--db", fixture_db.path), 1, "locked")
    finally:
        holder.execute("ROLLBACK")
        holder.close()


_AS_NOBODY = textwrap.dedent("""
    import contextlib, io, os, sys
    import evicctl.cli
    # The same command once as root, output discarded: it imports every module the command
    # needs (the interpreter's own files are not readable to `nobody` on every machine).
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        with contextlib.suppress(SystemExit):
            evicctl.cli.main(sys.argv[1:])
    os.setgid(65534); os.setuid(65534)  # now an ordinary user
    evicctl.cli.main(sys.argv[1:])
""")


def test_permission_denied(run_cli, tmp_path, make_fixture_db):
    if os.geteuid() != 0:
        info = make_fixture_db(tmp_path / "private.db", 3)
        os.chmod(info.path, 0)
        try:
            _one_error_line(run_cli("ls", "--db", info.path), 1, "permission denied")
        finally:
            os.chmod(info.path, 0o600)
        return
    # root reads anything: run the real CLI in a child that drops to `nobody`
    shared = Path(tempfile.mkdtemp(prefix="evicctl-perm-"))
    try:
        os.chmod(shared, 0o755)
        info = make_fixture_db(shared / "private.db", 3)  # 0600, owned by root
        proc = subprocess.run([sys.executable, "-c", _AS_NOBODY, "ls", "--db", str(info.path)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.strip().splitlines() == [f"evicctl: cannot open database {info.path}: permission denied"]
        hidden = shared / "locked-dir" / "private.db"
        make_fixture_db(hidden, 2)  # a 0700 directory it cannot enter
        proc = subprocess.run([sys.executable, "-c", _AS_NOBODY, "tiers", "--db", str(hidden)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1 and "permission denied on a directory above it" in proc.stderr
        assert "Traceback" not in proc.stderr
    finally:
        shutil.rmtree(shared)


# ---- mutations ---------------------------------------------------------------------------
def test_pin_done_prints_command_id_and_events(run_cli, live_db, manager_thread):
    manager_thread(live_db.path)
    result = run_cli("pin", "ctx-00002", "--tier", "cpu", "--db", live_db.path)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("command ") and " done: pin ctx-00002 tier=cpu" in lines[0]
    assert any(line.strip().startswith("event") and " pin " in line for line in lines)
    assert any("command" in line and "pin done" in line for line in lines[1:])


def test_pin_json_output(run_cli, live_db, manager_thread):
    manager_thread(live_db.path)
    result = run_cli("pin", "ctx-00002", "--codec", "int8", "--db", live_db.path, "-o", "json")
    data = json.loads(result.stdout)
    assert data["status"] == "done" and data["args"] == {"codec": "int8"}
    assert [e["kind"] for e in data["events"]] == ["pin", "command"]


def test_refused_pin_exits_5_with_the_reason(run_cli, live_db, manager_thread):
    manager_thread(live_db.path)
    _one_error_line(run_cli("pin", "ctx-00002", "--tier", "gpu", "--db", live_db.path), 5, "refused", "does not fit")


def test_no_manager_exits_4_at_once(run_cli, fixture_db):
    t0 = time.monotonic()
    line = _one_error_line(run_cli("unpin", "ctx-00001", "--db", fixture_db.path), 4, "no manager running",
                           "last heartbeat", "by pid 4242")
    assert time.monotonic() - t0 < 3, line
    with sqlite3.connect(fixture_db.path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM commands WHERE status = 'pending'").fetchone()[0] == 0


def test_timeout_exits_4(run_cli, live_db):
    from evicctl.control import ControlServer
    from evicctl.store.database import Store

    with Store.open(live_db.path) as store:
        ControlServer(store, "t", {}).heartbeat()  # alive, never polls
    _one_error_line(run_cli("unpin", "ctx-00001", "--timeout", "0.2", "--db", live_db.path), 4, "timed out", "cancelled")


def test_no_wait_returns_the_command_id(run_cli, live_db, manager_thread):
    manager_thread(live_db.path)
    result = run_cli("recompress", "ctx-00001", "--codec", "int8", "--no-wait", "--db", live_db.path)
    assert result.exit_code == 0 and result.stdout.startswith("command ") and "queued" in result.stdout


def test_unknown_tier_and_codec_in_mutations(run_cli, live_db, manager_thread):
    manager_thread(live_db.path)
    db = live_db.path
    _one_error_line(run_cli("pin", "ctx-00001", "--tier", "ssd", "--db", db), 2, "unknown tier 'ssd'", "cpu")
    _one_error_line(run_cli("evict", "ctx-00001", "--to", "ssd", "--yes", "--db", db), 2, "unknown tier", "drop")
    _one_error_line(run_cli("pin", "ctx-00001", "--codec", "zip", "--db", db), 2, "unknown codec 'zip'", "int8")
    _one_error_line(run_cli("recompress", "ctx-00001", "--codec", "knorm@7", "--db", db), 2, "codec")
    _one_error_line(run_cli("recompress", "ctx-00001", "--db", db), 2, "--codec")
    _one_error_line(run_cli("pin", "ctx-nope", "--db", db), 3, "no such context")


def test_evict_confirmation(run_cli, live_db, manager_thread, monkeypatch):
    manager_thread(live_db.path)
    db = live_db.path
    _one_error_line(run_cli("evict", "ctx-00001", "--db", db), 2, "--yes")
    monkeypatch.setattr("evicctl.console.mutate.stdin_is_terminal", lambda: True)
    no = run_cli("evict", "ctx-00001", "--db", db, input="n\n")
    assert no.exit_code == 1 and "nothing evicted" in no.stderr and "Evict ctx-00001" in no.stdout
    yes = run_cli("evict", "ctx-00001", "--db", db, input="y\n")
    assert yes.exit_code == 0 and "done: evict ctx-00001 to=drop" in yes.stdout
    dry = run_cli("evict", "ctx-00001", "--to", "disk", "--dry-run", "--db", db, "-o", "json")
    assert dry.exit_code == 0 and json.loads(dry.stdout)["args"] == {"to": "disk", "dry_run": True}


# ---- top / demo / bench plumbing ---------------------------------------------------------
def test_top_bad_inputs(run_cli, fixture_db, tmp_path):
    _one_error_line(run_cli("top", "--interval", "0.1", "--db", fixture_db.path), 2, "--interval", "0.25")
    _one_error_line(run_cli("top", "--db", fixture_db.path), 2, "needs a terminal", "--once")
    _one_error_line(run_cli("top", "--once", "--db", tmp_path / "x.db"), 1, "no database at")
    _one_error_line(run_cli("top", "--sort", "zzz", "--db", fixture_db.path), 2, "sort")


def _fake_module(monkeypatch, name: str, attr: str) -> list[dict]:
    calls: list[dict] = []
    mod = types.ModuleType(name)
    setattr(mod, attr, lambda *a, **kw: calls.append({"args": a, **kw}))
    monkeypatch.setitem(sys.modules, name, mod)
    return calls


def test_top_once_calls_render_once(run_cli, fixture_db, monkeypatch):
    calls = _fake_module(monkeypatch, "evicctl.tui.once", "render_once")
    assert run_cli("top", "--once", "--sort", "hits", "--db", fixture_db.path).exit_code == 0
    (path, _console, sort) = calls[0]["args"]
    assert (Path(path), sort) == (fixture_db.path, "hits")


def test_top_sort_accepts_what_the_dashboard_accepts(run_cli, fixture_db, monkeypatch):
    calls = _fake_module(monkeypatch, "evicctl.tui.once", "render_once")
    spellings = ["-hits", "+hits", "HITS", "stored", "last", "compression", "+age", "misses"]
    for sort in spellings:
        result = run_cli("top", "--once", "--sort", sort, "--db", fixture_db.path)
        assert result.exit_code == 0, (sort, result.stderr)
    assert run_cli("top", "--once", "--sort=-size", "--db", fixture_db.path).exit_code == 0
    assert [c["args"][2] for c in calls] == [*spellings, "-size"]  # passed on as given: run_top parses it too
    # validated before anything runs: an unknown key never reaches the dashboard
    for bad in ("zzz", "-zzz", "+", "hits-"):
        _one_error_line(run_cli("top", "--once", "--sort", bad, "--db", fixture_db.path), 2,
                        f"unknown sort key {bad!r}", "hits", "utility")
    assert len(calls) == len(spellings) + 1
    # without --once the sort passes and the next check (a terminal) speaks
    _one_error_line(run_cli("top", "--sort", "-hits", "--db", fixture_db.path), 2, "needs a terminal")


def test_top_once_renders_with_a_signed_sort(run_cli, fixture_db):
    result = run_cli("top", "--once", "--sort", "+hits", "--db", fixture_db.path)
    assert result.exit_code == 0, result.stderr
    assert "ctx-" in result.stdout and result.stderr == ""


def test_demo_passes_given_options_and_the_defaults_it_prints(run_cli, monkeypatch, tmp_path):
    calls = _fake_module(monkeypatch, "evicctl.engine.demo", "run_demo")
    result = run_cli("demo", "--headless", "--duration", "30", "--contexts", "8", "--cpu-capacity", "64MiB",
                     "--db", tmp_path / "d.db")
    assert result.exit_code == 0, result.stderr
    assert calls == [{"args": (), "headless": True, "db_path": tmp_path / "d.db", "duration_s": 30.0, "contexts": 8,
                      "seed": 0, "cpu_capacity_bytes": 64 << 20, "disk_capacity_bytes": 1 << 30}]
    _one_error_line(run_cli("demo", "--cpu-capacity", "lots"), 2, "invalid size")


def test_bench_passes_options(run_cli, monkeypatch):
    calls = _fake_module(monkeypatch, "evicctl.replay", "run_bench")
    result = run_cli("bench", "--policy", "lru", "--policy", "evicpress", "--zipf", "1.1", "-o", "json")
    assert result.exit_code == 0, result.stderr
    assert calls == [{"args": (), "live": False, "output": "json", "policies": ("lru", "evicpress"), "zipf": 1.1}]


def test_missing_optional_part_is_one_line(run_cli, monkeypatch):
    from evicctl.console.common import lazy_attr
    from evicctl.errors import EvicctlError

    with pytest.raises(EvicctlError, match="not available in this installation"):
        lazy_attr("evicctl.no_such_part", "run", "evicctl thing")
    monkeypatch.setitem(sys.modules, "evicctl.replay", types.ModuleType("evicctl.replay"))
    _one_error_line(run_cli("bench"), 1, "evicctl bench is not available")


# ---- history --follow (a real process, stopped with Ctrl-C) ------------------------------
def test_history_follow_streams_new_events_until_ctrl_c(live_db):
    import signal

    from evicctl.store.database import Store

    proc = subprocess.Popen(
        [sys.executable, "-m", "evicctl.cli", "history", "--follow", "-o", "jsonl", "--limit", "2", "--db", str(live_db.path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        first = [json.loads(proc.stdout.readline()) for _ in range(2)]
        with Store.open(live_db.path) as store:
            for k in range(3):
                b = store.batch()
                b.event(kind="move", context_id="ctx-00001", reason=f"follow-{k}")
                store.flush(b)
        new = [json.loads(proc.stdout.readline()) for _ in range(3)]
        assert [e["reason"] for e in new] == ["follow-0", "follow-1", "follow-2"]
        assert new[0]["id"] > first[-1]["id"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
