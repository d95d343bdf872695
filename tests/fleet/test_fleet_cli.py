"""`evicctl --fleet URL ls|tiers|history|show|top` and fleet mutations against managers
sharing a real cluster."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

from fleet_helpers import make_kv, open_manager, wait_for

from evicctl.console.fleet import fleet_argv
from evicctl.fleet.sharing import SharedCache
from evicctl.fleet.view import FleetManager


def evicctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-P", "-m", "evicctl.cli", *args], capture_output=True, text=True, timeout=60)


def test_fleet_spellings_become_the_fleet_group() -> None:
    assert fleet_argv(["--fleet", "redis://h:1", "ls", "-o", "json"]) == ["fleet", "ls", "--url", "redis://h:1", "-o", "json"]
    assert fleet_argv(["show", "doc", "--fleet=redis://h:1"]) == ["fleet", "show", "--url", "redis://h:1", "doc"]
    assert fleet_argv(["ls", "-o", "json"]) == ["ls", "-o", "json"]


def test_staleness_states() -> None:
    def m(age: float) -> str:
        return FleetManager("e", "h", 0.0, age, {}).state

    assert (m(0.5), m(10), m(60)) == ("live", "stale", "gone")


def test_fleet_reads_every_manager_and_pins_where_the_context_lives(tmp_path, cluster, namespace) -> None:
    east = open_manager(tmp_path, cluster.url, namespace, "east")
    west = open_manager(tmp_path, cluster.url, namespace, "west")
    fleet = ["--fleet", cluster.url]
    try:
        SharedCache(east).store("both", make_kv(seed=1), prefill_s=2.0)
        SharedCache(west).store("both", make_kv(seed=1), prefill_s=2.0)
        SharedCache(west).store("west-only", make_kv(seed=2), prefill_s=2.0)

        def listed():
            out = evicctl(*fleet, "ls", "--namespace", namespace, "-o", "json")
            rows = json.loads(out.stdout) if out.returncode == 0 else []
            return rows if len(rows) == 3 else None

        rows = wait_for(listed, 15, 0.3)
        host = socket.gethostname()
        assert sorted((r["where"], r["id"]) for r in rows) == [
            (f"{host}/east", "both"), (f"{host}/west", "both"), (f"{host}/west", "west-only")]
        tiers = json.loads(evicctl(*fleet, "tiers", "--namespace", namespace, "-o", "json").stdout)
        assert {(t["where"], t["name"], t["state"]) for t in tiers} >= {(f"{host}/east", "redis", "ok")}
        table = evicctl(*fleet, "tiers", "--namespace", namespace)
        assert "shared tier:" in table.stdout and "leader" in table.stdout
        wait_for(lambda: len([e for e in json.loads(evicctl(*fleet, "history", "--namespace", namespace, "--kind",
                                                            "admit", "-o", "json").stdout)]) >= 3, 10, 0.3)  # fmt: skip
        shown = json.loads(evicctl(*fleet, "show", "both", "--namespace", namespace, "-o", "json").stdout)
        assert sorted(m["manager"] for m in shown["managers"]) == ["east", "west"]

        pinned = evicctl(*fleet, "pin", "both", "--tier", "cpu", "--namespace", namespace, "-o", "json")
        answers = json.loads(pinned.stdout)
        assert pinned.returncode == 0, pinned.stderr
        assert sorted((a["manager"], a["status"]) for a in answers) == [("east", "done"), ("west", "done")]
        assert east.placement("both") is not None
        assert [r["pin_tier"] for r in east.rt.store.query("SELECT pin_tier FROM contexts WHERE id='both'")] == ["cpu"]
        one = json.loads(evicctl(*fleet, "evict", "west-only", "--yes", "--namespace", namespace, "-o", "json").stdout)
        assert [(a["manager"], a["status"]) for a in one] == [("west", "done")]  # only the owner is asked
        missing = evicctl(*fleet, "pin", "nowhere", "--namespace", namespace)
        assert missing.returncode == 3 and "no such context" in missing.stderr
        once = evicctl("top", *fleet, "--once", "--namespace", namespace)
        assert once.returncode == 0 and "Managers" in once.stdout and "east" in once.stdout
    finally:
        east.close()
        west.close()
