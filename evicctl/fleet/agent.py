"""FleetAgent: one per manager with a shared tier, on its own thread.

Every `heartbeat_s` it registers the manager (a zset of heartbeats), publishes its summary
(host, engine, tiers, the shared tier's state), its context rows (with their access rates,
which the leader's policy reads) and its new events into the cluster. Every `command_poll_s`
it takes fleet commands addressed to its manager and queues each through the manager's own
control channel (the same path as a local `evicctl pin`), then writes back the answer.

Leadership of the shared tier: each agent tries to take or renew a lease (`elect`, a Lua
script on the ledger's slot) every heartbeat; the holder's epoch is its fencing token. The
leader sweeps the ledger (holds of managers that stopped heartbeating, doomed objects whose
leases ran out, reservations whose writer died) and evicts by the fleet policy when the
cluster is over its high watermark. Every eviction re-checks the epoch, and the object's
slot refuses an epoch older than one it has seen, so a leader that was paused (SIGSTOP) and
wakes after its lease ran out cannot act on stale authority.

The local SQLite store stays the manager's source of truth; what the agent publishes is a
read model, stamped with its time so readers show how stale it is.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import asdict

from evicctl.fleet.keys import FleetKeys
from evicctl.fleet.policy import SharedObject, choose_evictions, fleet_rates

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
LEADER_LEASE_S = 3.0  # a dead leader is replaced within this long
HOLDER_TIMEOUT_S = 30.0  # a manager silent this long loses its holds (LMCache drops instances at 30 s)
RESERVATION_GRACE_S = 10.0  # a reservation with no object after this long: its writer died
COMMAND_POLL_S = 0.1
PUBLISHED_CONTEXTS = 5000  # the rows a manager publishes (highest utility first)
EVENTS_MAXLEN = 10000
COMMAND_TIMEOUT_S = 10.0


class FleetAgent:
    def __init__(self, manager, tier, *, heartbeat_s: float = HEARTBEAT_S, leader_lease_s: float = LEADER_LEASE_S,
                 holder_timeout_s: float = HOLDER_TIMEOUT_S, command_poll_s: float = COMMAND_POLL_S) -> None:  # fmt: skip
        self.manager, self.tier = manager, tier
        self.id = tier.holder
        self.keys = FleetKeys(tier.namespace)
        self.heartbeat_s, self.leader_lease_s = heartbeat_s, leader_lease_s
        self.holder_timeout_s, self.command_poll_s = holder_timeout_s, command_poll_s
        self.epoch = 0  # > 0 while this manager leads the shared tier
        self.started_at = time.time()
        self.evicted = 0
        self._last_event_id: int | None = None
        self._last_beat = 0.0
        self._last_problem: str | None = None
        self._stop = threading.Event()
        self._store = None
        self._thread = threading.Thread(target=self._run, name=f"evicctl-fleet-{self.id}", daemon=True)

    def start(self) -> FleetAgent:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        try:
            if self.epoch:
                self.tier.resign(self.id)  # hand over at once rather than after the lease
            self.tier.client.zrem(self.keys.managers, self.id)
            self.tier.client.delete(self.keys.summary(self.id), self.keys.contexts(self.id))
        except Exception as exc:  # noqa: BLE001 - a dead cluster must not stop a manager closing
            log.info("fleet agent %s: could not deregister (%s)", self.id, exc)
        if self._store is not None:
            self._store.close()

    # ------------------------------------------------------------ the loop

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if time.monotonic() - self._last_beat >= self.heartbeat_s:
                    self._last_beat = time.monotonic()
                    self.beat()
                self.serve_commands()
            except Exception as exc:  # noqa: BLE001 - a node down: say it once, keep going
                problem = f"{type(exc).__name__}: {exc}"
                if problem != self._last_problem:
                    log.warning("fleet agent %s: %s (serving goes on from the local tiers)", self.id, problem)
                self._last_problem = problem
            else:
                self._last_problem = None
            self._stop.wait(self.command_poll_s)

    def beat(self) -> None:
        """Register, publish, and do the leader's work if this manager leads."""
        self.tier.retry_pending()
        self.lead()
        self.publish()

    # ------------------------------------------------------------ publishing

    def _reader(self):
        if self._store is None:
            from evicctl.store.database import Store

            self._store = Store.open(self.manager.config.db_path, readonly=True)
        return self._store

    def publish(self) -> None:
        from evicctl.snapshot.read import last_event_id, read_contexts, read_events, read_tiers

        store = self._reader()
        now = time.time()
        rows, total = read_contexts(store, sort="utility", limit=PUBLISHED_CONTEXTS)
        tiers = [{**asdict(t), "used_fraction": t.used_fraction} for t in read_tiers(store)]
        if self._last_event_id is None:
            self._last_event_id = max(0, last_event_id(store) - 100)  # the recent past, not all history
        events = read_events(store, after_id=self._last_event_id, limit=1000)
        client, keys = self.tier.client, self.keys
        client.set(keys.summary(self.id), json.dumps(self.summary(now, tiers, total)), ex=3600)
        client.set(keys.contexts(self.id), json.dumps([asdict(r) for r in rows]), ex=3600)
        for e in events:
            client.xadd(keys.events, {"manager": self.id, "event": json.dumps(asdict(e))},
                        maxlen=EVENTS_MAXLEN, approximate=True)  # fmt: skip
            self._last_event_id = e.id
        client.zadd(keys.managers, {self.id: int(now * 1000)})

    def summary(self, now: float, tiers: list[dict], contexts: int) -> dict:
        capacity, used = self.tier.cluster_usage()
        shared = {
            "tier": self.tier.name, "state": self.tier.state, "detail": self.tier.state_detail,
            "state_since": self.tier.state_since, "cluster_capacity_bytes": capacity, "cluster_used_bytes": used,
            "held_bytes": self.tier.used_bytes, "refusals": list(self.tier.refusals)[-20:],
            "model": self.tier.model, "fingerprint": self.tier.fingerprint,
        }  # fmt: skip
        return {
            "id": self.id, "host": socket.gethostname(), "engine": self.id, "pid": os.getpid(),
            "db_path": str(self.manager.config.db_path), "started_at": self.started_at, "published_at": now,
            "leader": self.epoch > 0, "epoch": self.epoch, "evicted": self.evicted,
            "contexts": contexts, "tiers": tiers, "shared": shared,
        }  # fmt: skip

    def fleet_event(self, **fields) -> None:
        """An event the fleet itself caused (the leader's evictions), beside the managers' own."""
        event = {"id": 0, "ts": time.time(), "actor": f"fleet-leader@{self.epoch}", **fields}
        self.tier.client.xadd(self.keys.events, {"manager": self.id, "event": json.dumps(event)},
                              maxlen=EVENTS_MAXLEN, approximate=True)  # fmt: skip

    # ------------------------------------------------------------ leadership

    def live_managers(self, now_ms: int | None = None) -> list[str]:
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        ids = self.tier.client.zrangebyscore(self.keys.managers, now_ms - int(self.holder_timeout_s * 1000), "+inf")
        return sorted({i.decode() if isinstance(i, bytes) else i for i in ids} | {self.id})

    def lead(self) -> None:
        try:
            epoch = self.tier.elect(self.id, self.leader_lease_s)
        except Exception:
            self.epoch = 0  # cannot renew: act as a follower (the lease runs out on the server too)
            raise
        if epoch != self.epoch:
            log.info("fleet agent %s: %s", self.id, f"leads at epoch {epoch}" if epoch else "follows")
        self.epoch = epoch
        if epoch:
            self.sweep()
            self.enforce_capacity()

    def sweep(self) -> None:
        live = self.live_managers()
        now_ms = int(time.time() * 1000)
        for obj, row in self.tier.ledger().items():
            if self.tier.reap(obj, live) == "absent" and now_ms - int(row["at"]) > RESERVATION_GRACE_S * 1000:
                self.tier.release(obj, row["tok"])  # its writer died between reserve and write

    def enforce_capacity(self) -> None:
        capacity, used = self.tier.cluster_usage(max_age_s=0)
        ledger = self.tier.ledger()
        objects = [SharedObject(k, r["ctx"], int(r["n"]), int(r["at"])) for k, r in ledger.items()]
        published = {}
        for mid in self.live_managers():
            raw = self.tier.client.get(self.keys.contexts(mid))
            published[mid] = json.loads(raw) if raw else []
        for obj in choose_evictions(objects, fleet_rates(published), capacity_bytes=capacity, used_bytes=used):
            if not self.tier.still_leads(self.id, self.epoch):
                log.warning("fleet agent %s: lost the lead during eviction; stopping", self.id)
                self.epoch = 0
                return
            verdict = self.tier.evict(obj.key, self.epoch, f"fleet policy at epoch {self.epoch}: cluster over "
                                                            f"{int(100 * used / capacity)}% of capacity")  # fmt: skip
            if verdict == "fenced":
                self.epoch = 0
                return
            self.evicted += verdict == "deleted"
            self.fleet_event(context_id=obj.context_id, kind="evict", from_tier=self.tier.name, to_tier="dropped",
                             bytes=obj.nbytes, reason=f"shared-tier pressure ({verdict})")  # fmt: skip

    # ------------------------------------------------------------ fleet commands

    def serve_commands(self) -> None:
        while (raw := self.tier.client.lpop(self.keys.commands(self.id))) is not None:
            request = json.loads(raw)
            threading.Thread(target=self._answer, args=(request,), daemon=True).start()

    def _answer(self, request: dict) -> None:
        from evicctl.control import ControlClient

        reply: dict = {"manager": self.id, "host": socket.gethostname()}
        try:
            with ControlClient(self.manager.config.db_path) as client:
                command_id = client.submit(request["verb"], request["context_id"], request.get("args") or {},
                                           actor=f"{request.get('actor', 'fleet')} via fleet")  # fmt: skip
                outcome = client.wait(command_id, float(request.get("timeout_s", COMMAND_TIMEOUT_S)))
                events = client.events_of(outcome)
            reply.update(command_id=command_id, status=outcome.status, message=outcome.message,
                         result=outcome.result, events=[asdict(e) for e in events])  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - every failure is an answer the operator sees
            reply.update(status="failed", message=f"{type(exc).__name__}: {exc}", exit_code=getattr(exc, "exit_code", 1))
        key = self.keys.reply(request["request_id"])
        self.tier.client.rpush(key, json.dumps(reply, default=str))
        self.tier.client.expire(key, 300)
