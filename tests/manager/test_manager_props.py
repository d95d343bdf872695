"""Stateful property test: random store / lookup / profile / pin / evict / tick / crash sequences.

Invariants: no tier over capacity after a tick; every known context has exactly one placement
(a tier or dropped) in memory and in the store; a pinned context stays on its pinned tier while
it is stored; a crash between any two steps of a move leaves a store that a restarted manager
finds consistent (every disk placement's file exists and passes its checksum, no orphan files).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from manager_helpers import KV_BYTES, make_config, make_kv

from evicctl.control import ControlClient
from evicctl.manager.manager import Manager, disk_dir_of
from evicctl.manager.state import tier_key

IDS = st.sampled_from([f"c{i}" for i in range(6)])
CODECS = ("int8", "int4", "knorm@0.5", "knorm@0.5+int8")


class Crash(Exception):
    """Stands for the process dying at a step of a move."""


class ManagerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="evicctl-props-"))
        self.config = make_config(self.root, cpu_bytes=2 * KV_BYTES, disk_bytes=3 * KV_BYTES, quality_floor=0.5)
        self.manager = Manager(self.config, probe=False)  # not started: the machine drives the ticks
        self.client = ControlClient(self.config.db_path)
        self.pins: dict[str, str] = {}

    def teardown(self) -> None:
        self.client.close()
        self.manager.close()
        shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------ rules

    @rule(cid=IDS, tokens=st.sampled_from([32, 64]))
    def store(self, cid, tokens):
        self.manager.store(cid, make_kv(int(cid[1:]), tokens=tokens))

    def known_id(self, data) -> str:
        return data.draw(st.sampled_from(sorted(self.manager.context_ids())))

    @precondition(lambda self: self.manager.context_ids())
    @rule(data=st.data())
    def lookup(self, data):
        cid = self.known_id(data)
        hit = self.manager.lookup(cid)
        if hit is not None:
            assert hit.kv.layers == 2 and hit.kv.tokens in (32, 64)
            assert hit.tier == self.manager.placement(cid).tier or self.manager.placement(cid).tier != "dropped"

    @precondition(lambda self: self.manager.context_ids())
    @rule(data=st.data(), codec=st.sampled_from(CODECS), quality=st.floats(0.3, 1.0))
    def profile(self, data, codec, quality):
        self.manager.record_profile(self.known_id(data), codec, quality, 0.02, 8)

    @precondition(lambda self: self.manager.context_ids())
    @rule(data=st.data(), tier=st.sampled_from(["cpu", "disk"]))
    def pin(self, data, tier):
        cid = self.known_id(data)
        status, _ = self.command("pin", cid, {"tier": tier})
        if status == "done":
            self.pins[cid] = tier

    @precondition(lambda self: self.manager.context_ids())
    @rule(data=st.data())
    def unpin(self, data):
        cid = self.known_id(data)
        status, _ = self.command("unpin", cid, {})
        if status == "done":
            self.pins.pop(cid, None)

    @precondition(lambda self: self.manager.context_ids())
    @rule(data=st.data(), to=st.sampled_from(["disk", "drop"]))
    def evict(self, data, to):
        cid = self.known_id(data)
        status, result = self.command("evict", cid, {"to": to})
        if status == "done" and to == "drop":
            assert self.manager.placement(cid).tier == "dropped"

    @rule()
    def tick(self):
        self.manager.tick()
        for tier in self.manager.tiers:
            assert tier.used_bytes <= tier.capacity_bytes, (tier, self.placements())

    @precondition(lambda self: self.manager.context_ids())
    @rule(stage=st.sampled_from(["copied", "switched", "admit-copied"]), cid=IDS)
    def crash_and_restart(self, stage, cid):
        def fault(at: str) -> None:
            if at == stage:
                raise Crash(at)

        self.manager.fault = fault
        try:
            self.manager.rt.replan_needed = True
            self.manager.store(cid, make_kv(int(cid[1:])))  # admission and pressure: moves happen
            self.manager.tick()
        except Crash:
            pass
        # The process dies: memory is gone, nothing is flushed; files and the database stay.
        self.manager.rt.store.close()
        self.manager = Manager(self.config, probe=False)
        self.check_store_after_restart()

    # ------------------------------------------------------------------ invariants

    def command(self, verb, cid, args):
        command_id = self.client.submit(verb, cid, args, actor="prop")
        self.manager.tick()
        return self.client.outcome(command_id)

    def placements(self) -> dict:
        return {c: self.manager.placement(c) for c in self.manager.context_ids()}

    @invariant()
    def one_placement_each(self):
        rows = self.manager.rt.store.query("SELECT context_id, tier FROM placements")
        known = set(self.manager.context_ids())
        stored_rows = {r["context_id"] for r in rows}
        assert len(rows) == len(stored_rows)  # one row per context
        flushed = {r[0] for r in self.manager.rt.store.query("SELECT id FROM contexts")}
        assert stored_rows == flushed and flushed <= known
        for placement in self.placements().values():
            assert placement is not None and (placement.tier in ("cpu", "disk", "dropped"))

    @invariant()
    def pinned_stays_pinned(self):
        for cid, tier in self.pins.items():
            placement = self.manager.placement(cid)
            if placement is not None and placement.tier != "dropped" and self.manager.context(cid).pin_tier == tier:
                assert placement.tier == tier, (cid, placement)

    def check_store_after_restart(self):
        disk = disk_dir_of(self.config)
        rows = [dict(r) for r in self.manager.rt.store.query("SELECT * FROM placements")]
        assert not [r for r in rows if r["tier"] == "cpu"]  # memory does not survive a restart
        locations = set()
        disk_tier = self.manager.tier_named("disk")
        for r in rows:
            if r["tier"] == "disk":
                assert Path(r["location"]).is_file() and r["checksum"]
                # Read and checked again by the tier itself (CorruptDataError on a mismatch),
                # whatever checksum format it writes.
                disk_tier.adopt(tier_key(r["context_id"], r["codec"]), r["location"], r["checksum"], verify=True)
                locations.add(r["location"])
        assert {str(p) for p in disk.glob("*.safetensors")} == locations  # no orphans left
        assert not list(disk.glob(".*.tmp"))
        contexts = {r[0] for r in self.manager.rt.store.query("SELECT id FROM contexts")}
        assert contexts == {r["context_id"] for r in rows}
        for cid, tier in self.pins.items():
            if tier == "disk" and self.manager.known(cid) and self.manager.placement(cid).tier != "dropped":
                assert self.manager.placement(cid).tier == "disk"


ManagerMachine.TestCase.settings = settings(
    max_examples=25, stateful_step_count=20, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestManagerMachine = ManagerMachine.TestCase
