"""The fleet's read model, as the CLI sees it: every registered manager's published summary,
context rows and events, each stamped with how old it is. The managers' SQLite stores stay the
truth; this is what they last published (every agent.HEARTBEAT_S)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from evicctl.errors import EvicctlError
from evicctl.fleet.agent import HEARTBEAT_S, HOLDER_TIMEOUT_S
from evicctl.fleet.keys import FleetKeys
from evicctl.redact import redact_url

STALE_AFTER_S = 3 * HEARTBEAT_S  # three missed heartbeats


class FleetUnreachableError(EvicctlError):
    """The fleet's Redis does not answer (the message names the URL)."""


@dataclass(frozen=True)
class FleetManager:
    id: str
    host: str
    heartbeat_at: float
    age_s: float
    summary: dict

    @property
    def state(self) -> str:
        """live, stale (missed heartbeats: frozen, partitioned, busy) or gone (its holds are dropped)."""
        if self.age_s <= STALE_AFTER_S:
            return "live"
        return "stale" if self.age_s <= HOLDER_TIMEOUT_S else "gone"

    @property
    def where(self) -> str:
        return f"{self.host}/{self.id}"


def staleness(m: FleetManager) -> str:
    return m.state if m.state != "live" else f"{m.age_s:.1f}s"


class FleetView:
    def __init__(self, url: str, namespace: str = "evk") -> None:
        from evicctl.manager.tiers.remote_client import connect, redis_errors

        self.url, self.keys = redact_url(url), FleetKeys(namespace)  # shown in errors: no password
        self.namespace = namespace
        self._errors = redis_errors()
        try:
            self.client = connect(url)
        except Exception as exc:  # noqa: BLE001 - the client raises many kinds for a dead URL
            raise FleetUnreachableError(f"fleet {self.url} is unreachable: {exc}") from None

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> FleetView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except self._errors as exc:
            raise FleetUnreachableError(f"fleet {self.url}: {type(exc).__name__}: {exc}") from None

    def managers(self, now: float | None = None) -> list[FleetManager]:
        now = time.time() if now is None else now
        entries = self.call(self.client.zrange, self.keys.managers, 0, -1, withscores=True)
        out = []
        for raw_id, score_ms in entries:
            mid = raw_id.decode()
            raw = self.call(self.client.get, self.keys.summary(mid))
            summary = json.loads(raw) if raw else {}
            out.append(FleetManager(mid, summary.get("host", "?"), score_ms / 1000, max(0.0, now - score_ms / 1000), summary))
        return sorted(out, key=lambda m: m.where)

    def contexts(self, managers: list[FleetManager]) -> list[dict]:
        rows = []
        for m in managers:
            raw = self.call(self.client.get, self.keys.contexts(m.id))
            for row in json.loads(raw) if raw else []:
                rows.append({**row, "where": m.where, "manager": m.id, "age": staleness(m)})
        return rows

    def owners(self, context_id: str, managers: list[FleetManager]) -> list[FleetManager]:
        """Managers whose published rows include the context (placed anywhere, or dropped)."""
        ids = {r["manager"] for r in self.contexts(managers) if r["id"] == context_id}
        return [m for m in managers if m.id in ids]

    def events(self, *, context_id: str | None = None, kind: str | None = None, since: float | None = None,
               limit: int = 100) -> list[dict]:  # fmt: skip
        """Newest last; each with the manager it came from."""
        out = []
        for stream_id, fields in self.call(self.client.xrevrange, self.keys.events, count=max(limit * 20, 1000)):
            event = json.loads(fields[b"event"])
            if (context_id and event.get("context_id") != context_id) or (kind and event.get("kind") != kind):
                continue
            if since is not None and event.get("ts", 0) < since:
                break
            out.append({**event, "manager": fields[b"manager"].decode(), "stream_id": stream_id.decode()})
            if limit and len(out) >= limit:
                break
        return out[::-1]

    def shared(self) -> dict:
        """The cluster's own accounting: capacity, used, per tenant, the leader and its epoch."""
        from evicctl.manager.tiers.remote_keys import control_keys

        ctl = control_keys(self.namespace)
        cap, used, leader, epoch = self.call(self.client.mget, [ctl.capacity, ctl.used, ctl.leader, ctl.epoch])
        tenants = self.call(self.client.hgetall, ctl.tenant_used)
        quotas = self.call(self.client.hgetall, ctl.quota)
        refusals = self.call(self.client.xlen, ctl.refusals)
        return {
            "capacity_bytes": int(cap or 0), "used_bytes": int(used or 0),
            "leader": leader.decode() if leader else None, "epoch": int(epoch or 0), "refusals": refusals,
            "tenants": {k.decode(): {"used_bytes": int(v), "quota_bytes": int(quotas[k]) if k in quotas else None}
                        for k, v in tenants.items()},
        }  # fmt: skip
