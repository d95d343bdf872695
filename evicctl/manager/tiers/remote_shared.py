"""SharedRedisTier: the redis tier when several managers (engines, hosts) share one Redis
Cluster or server. What changes from a private tier:

- objects are content-addressed by (model fingerprint, context id, codec) (remote_keys), so
  two engines with the same model store one object and different models never collide;
- capacity is the cluster's, accounted by server-side scripts (remote_lua): a write reserves
  its bytes in a ledger first and is refused, with a row in the cluster's refusals stream and
  a RemoteRefusedError for the manager to record, when it would pass the cluster capacity or
  its tenant's quota. Never a silent lost write;
- an object is kept while any manager holds it (a holders set): one manager's eviction drops
  only its own hold;
- a read takes a lease that eviction respects (a leased object is doomed, not deleted, and
  the last reader or the leader's sweep finishes it); leases expire on the server's clock and
  existence checks (contains, codecs_of) never take or renew one;
- the capacity the placer sees is this manager's bytes plus the cluster's free bytes: it plans
  into room that exists, and the reservation settles races between managers.

A node that does not answer makes the tier "unreachable": writes are refused (recorded), reads
fail as lost copies (never served), and the placer sees no free room; the manager keeps
serving from its other tiers. The first successful call makes it "ok" again.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections import deque

from evicctl.manager.codecs.codec import Stored
from evicctl.manager.state import tier_key
from evicctl.manager.tiers import remote_lua
from evicctl.manager.tiers.remote import RedisTier
from evicctl.manager.tiers.remote_client import (
    RemoteRefusedError,
    RemoteUnavailableError,
    redis_errors,
)
from evicctl.manager.tiers.remote_keys import (
    DEFAULT_NAMESPACE,
    ObjectKeys,
    codec_of_object,
    control_keys,
    keys_of_object,
    model_fingerprint,
    object_keys,
)
from evicctl.manager.tiers.tier import Entry, PutResult, deserialize, serialize, sha256_hex

log = logging.getLogger(__name__)

DEFAULT_LEASE_TTL_S = 10.0  # Mooncake's default; a read of a few hundred MB fits well inside
USAGE_REFRESH_S = 0.5  # the placer asks for capacity often; the cluster is asked at most this often


def default_holder() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class SharedRedisTier(RedisTier):
    """See the module docstring. `holder` names this manager in holders sets and leases."""

    shared = True

    def __init__(self, url: str, *, capacity_bytes: int, client, name: str = "redis", rank: int = 0,
                 namespace: str = DEFAULT_NAMESPACE, model: str = "default", holder: str | None = None,
                 lease_ttl_s: float = DEFAULT_LEASE_TTL_S, tenant_quotas: tuple[tuple[str, int], ...] = ()) -> None:  # fmt: skip
        self._configured_capacity = int(capacity_bytes)
        self._usage = (0.0, int(capacity_bytes), 0)  # (read at, cluster capacity, cluster used)
        super().__init__(url, capacity_bytes=capacity_bytes, name=name, rank=rank, client=client)
        self.namespace, self.model, self.fingerprint = namespace, model, model_fingerprint(model)
        self.holder = holder or default_holder()
        self.lease_ttl_ms = int(lease_ttl_s * 1000)
        self.ctl = control_keys(namespace)
        self.tenant_of = lambda context_id: "default"  # the fleet hook points this at the manager's contexts
        self.refusals: deque[dict] = deque(maxlen=200)  # this manager's refused writes, newest last
        self.state, self.state_detail, self.state_since = "ok", "", time.time()
        self._addr: dict[str, tuple[str, str]] = {}  # tier key -> (context id, codec)
        self._pending_drops: set[tuple[str, str]] = set()  # holds to drop once the server answers
        self._scripts = {n: client.register_script(src) for n, src in remote_lua.SCRIPTS.items()}
        self._state_lock = threading.Lock()
        self._guard(self._claim_capacity, tenant_quotas)

    # ------------------------------------------------------------ configuration and state

    def _claim_capacity(self, tenant_quotas) -> None:
        # The first manager sets the cluster's capacity; the others take it (one number for all).
        self.client.set(self.ctl.capacity, self._configured_capacity, nx=True)
        cluster = int(self.client.get(self.ctl.capacity))
        if cluster != self._configured_capacity:
            log.warning("shared tier %s: cluster capacity is %d B, not the %d B configured here",
                        self.name, cluster, self._configured_capacity)  # fmt: skip
        for tenant, quota_bytes in tenant_quotas:
            self.client.hset(self.ctl.quota, tenant, int(quota_bytes))

    def _guard(self, fn, *args):
        """Call fn; a server error marks the tier unreachable and re-raises it."""
        try:
            out = fn(*args)
        except redis_errors() as exc:
            self._set_state("unreachable", f"{type(exc).__name__}: {exc}")
            raise
        self._set_state("ok", "")
        return out

    def _set_state(self, state: str, detail: str) -> None:
        with self._state_lock:
            if state != self.state:
                log.warning("shared tier %s is %s %s", self.name, state, detail)
                self.state, self.state_since = state, time.time()
            self.state_detail = detail

    def _run(self, script: str, keys: list[str], args: list):
        return self._guard(lambda: self._scripts[script](keys=keys, args=args))

    def cluster_usage(self, *, max_age_s: float = USAGE_REFRESH_S) -> tuple[int, int]:
        """(cluster capacity, cluster used) in bytes, at most max_age_s old; the last known
        values while the server does not answer."""
        read_at, capacity, used = self._usage
        if time.monotonic() - read_at >= max_age_s:
            try:
                cap, use = self._guard(self.client.mget, [self.ctl.capacity, self.ctl.used])
                self._usage = read_at, capacity, used = time.monotonic(), int(cap or 0), int(use or 0)
            except redis_errors():
                self._usage = (time.monotonic(), capacity, used)
        return capacity, used

    @property
    def capacity_bytes(self) -> int:
        """What this manager may plan with: its own bytes plus the cluster's free bytes."""
        own = self.used_bytes
        if self.state != "ok":
            self.cluster_usage()  # one try per refresh period: does the server answer again?
            if self.state != "ok":
                return own
        capacity, used = self.cluster_usage()
        return own + max(0, capacity - used)

    @capacity_bytes.setter
    def capacity_bytes(self, value: int) -> None:
        self._configured_capacity = int(value)

    # ------------------------------------------------------------ addresses

    def _keys(self, context_id: str, codec: str) -> ObjectKeys:
        return object_keys(self.namespace, self.fingerprint, context_id, codec)

    def _address(self, key: str, codec: str) -> tuple[str, str]:
        """(context id, codec) of a manager's tier key (tier_key(context_id, codec))."""
        suffix = tier_key("", codec)
        context_id = key[: -len(suffix)] if key.endswith(suffix) else key
        return context_id, codec

    # ------------------------------------------------------------ the tier interface

    def put(self, context_id: str, stored: Stored) -> PutResult:
        """Store under this manager's tier key `context_id` (= tier_key(context, codec))."""
        key = context_id
        start = time.perf_counter()
        ctx, codec = self._address(key, stored.codec)
        obj, checksum = self.write(ctx, stored, self.holder)
        with self._lock:
            self._entries[key] = Entry(stored.nbytes, obj, checksum)
            self._addr[key] = (ctx, codec)
        seconds = time.perf_counter() - start
        self.observe("write", stored.nbytes, seconds)
        return PutResult(obj, checksum, seconds)

    def share(self, context_id: str, stored: Stored) -> str:
        """Write-through for other engines: the object is held under "<holder>#share", apart
        from this manager's placements (its placer moving the context does not unshare it).
        Returns the object key; RemoteRefusedError as put."""
        return self.write(context_id, stored, f"{self.holder}#share")[0]

    def write(self, ctx: str, stored: Stored, holder: str) -> tuple[str, str]:
        """Reserve, write, settle the ledger (see remote_lua); (object key, its sha256)."""
        codec = stored.codec
        data = serialize(ctx, stored)
        checksum = sha256_hex(data)
        keys, tenant, token = self._keys(ctx, codec), self.tenant_of(ctx), uuid.uuid4().hex[:16]
        ledger_args = [keys.obj, stored.nbytes, tenant, token, ctx, codec, holder]
        try:
            verdict = [_text(v) for v in self._run("reserve", self.ctl.accounting(), ledger_args)]
            if verdict[0] == "refused":
                self._refused(ctx, codec, tenant, stored.nbytes, verdict)
            written = [_text(v) for v in self._run(
                "write", keys.as_list(), [data, checksum, stored.nbytes, tenant, ctx, codec, holder, token])]  # fmt: skip
            if written[1] != verdict[1]:  # the ledger row must name the token the object carries
                self._run("ensure", self.ctl.accounting(), [keys.obj, stored.nbytes, tenant, written[1], ctx, codec])
        except redis_errors() as exc:
            self._note_refusal("unreachable", ctx, codec, tenant, stored.nbytes)
            raise RemoteRefusedError("unreachable", f"shared tier {self.name} is unreachable: {exc}") from None
        return keys.obj, written[2] or checksum

    def _refused(self, ctx: str, codec: str, tenant: str, nbytes: int, verdict: list[str]) -> None:
        reason, have, limit = verdict[1], int(verdict[2]), int(verdict[3])
        self._note_refusal(reason, ctx, codec, tenant, nbytes)
        what = f"tenant {tenant!r} quota" if reason == "quota" else "cluster capacity"
        raise RemoteRefusedError(reason, f"shared tier {self.name}: {nbytes} B for {ctx}/{codec} would pass the "
                                         f"{what} ({have} of {limit} B used)")  # fmt: skip

    def _note_refusal(self, reason: str, ctx: str, codec: str, tenant: str, nbytes: int) -> None:
        self.refusals.append({"ts": time.time(), "reason": reason, "context_id": ctx, "codec": codec,
                              "tenant": tenant, "bytes": nbytes})  # fmt: skip

    def get(self, context_id: str) -> tuple[Stored, float]:
        key = context_id
        with self._lock:
            entry, addr = self._entries.get(key), self._addr.get(key)
        if entry is None or addr is None:
            raise KeyError(key)
        got = self.fetch(*addr, expect_sha256=entry.checksum)
        if got is None:
            raise RemoteUnavailableError(f"stored KV {entry.location} is gone from the shared tier "
                                         f"({self.gone_reason(*addr) or 'evicted'})")  # fmt: skip
        return got

    def fetch(self, context_id: str, codec: str, *, expect_sha256: str | None = None) -> tuple[Stored, float] | None:
        """Read an object under a lease (any manager's: the cross-engine path); None if absent
        or being evicted. RemoteUnavailableError if the server does not answer or the bytes
        fail their checksum."""
        keys = self._keys(context_id, codec)
        start = time.perf_counter()
        try:
            lease = self.lease(context_id, codec)
            if lease is None:
                return None
            lease_id, meta = lease
            try:
                data = self._guard(self.client.hget, keys.obj, "data")
            finally:
                self.unlease(context_id, codec, lease_id)
        except redis_errors() as exc:
            raise RemoteUnavailableError(f"shared tier {self.name} is unreachable: {exc}") from None
        if data is None:  # cannot happen under a lease; a node that lost its data can
            return None
        if sha256_hex(data) != (expect_sha256 or _text(meta[0])):
            raise RemoteUnavailableError(f"stored KV {keys.obj} fails its sha256 checksum")
        stored = deserialize(data)
        seconds = time.perf_counter() - start
        self.observe("read", stored.nbytes, seconds)
        return stored, seconds

    def lease(self, context_id: str, codec: str, ttl_s: float | None = None) -> tuple[str, list] | None:
        """Take a read lease on an object: (lease id, [sha256, nbytes, token]), or None if it is
        absent or being evicted. Eviction leaves a leased object in place until the lease is
        released or expires (server time)."""
        keys = self._keys(context_id, codec)
        lease_id = f"{self.holder}:{uuid.uuid4().hex[:12]}"
        ttl_ms = self.lease_ttl_ms if ttl_s is None else int(ttl_s * 1000)
        meta = self._run("lease", [keys.obj, keys.leases], [lease_id, ttl_ms])
        return None if meta is None else (lease_id, meta)

    def unlease(self, context_id: str, codec: str, lease_id: str) -> str:
        """Release a lease; the last reader of an object being evicted deletes it ("deleted")."""
        keys = self._keys(context_id, codec)
        return self._finish(keys, self._run("unlease", keys.as_list(), [lease_id]))

    def evict(self, obj: str, epoch: int, reason: str) -> str:
        """The leader's eviction of any object (by its key), fenced by its epoch: "deleted",
        "leased" (doomed: the last reader or the sweep finishes it), "absent" or "fenced"."""
        keys = keys_of_object(obj)
        return self._finish(keys, self._run("drop", keys.as_list(), ["", "1", str(epoch), reason]))

    def reap(self, obj: str, live_managers: list[str]) -> str:
        """The sweep of one object: drop holds of managers no longer live, finish it if nobody
        holds it or it is doomed and unleased. "deleted", "leased", "kept" or "absent"."""
        import json

        keys = keys_of_object(obj)
        return self._finish(keys, self._run("reap", keys.as_list(), [json.dumps(sorted(live_managers))]))

    def release(self, obj: str, token: str = "") -> int:
        """Free an object's ledger row (a reservation whose writer died); returns bytes freed."""
        return int(self._run("release", self.ctl.accounting(), [obj, token]))

    def ledger(self) -> dict[str, dict]:
        """Every ledger row: object key -> {n (bytes), t (tenant), at (ms), tok, ctx, codec}."""
        import json

        rows = self._guard(self.client.hgetall, self.ctl.ledger)
        return {_text(k): json.loads(v) for k, v in rows.items()}

    def tenant_usage(self) -> dict[str, tuple[int, int | None]]:
        """tenant -> (bytes used, quota bytes or None), cluster-wide."""
        used = self._guard(self.client.hgetall, self.ctl.tenant_used)
        quotas = self._guard(self.client.hgetall, self.ctl.quota)
        names = {_text(k) for k in (*used, *quotas)}
        return {t: (int(used.get(t.encode(), 0)), int(quotas[t.encode()]) if t.encode() in quotas else None)
                for t in sorted(names)}  # fmt: skip

    # ------------------------------------------------------------ the leader's lease (fencing)

    def elect(self, candidate: str, lease_s: float) -> int:
        """Take or renew the shared tier's leadership: the epoch (fencing token) while
        `candidate` leads, 0 while another manager does."""
        return int(self._run("elect", [self.ctl.leader, self.ctl.epoch], [candidate, int(lease_s * 1000)]))

    def still_leads(self, candidate: str, epoch: int) -> bool:
        return bool(self._run("still_leads", [self.ctl.leader, self.ctl.epoch], [candidate, str(epoch)]))

    def resign(self, candidate: str) -> None:
        self._run("resign", [self.ctl.leader], [candidate])

    def leader(self) -> tuple[str | None, int]:
        """(current leader's id or None, current epoch)."""
        leader, epoch = self._guard(self.client.mget, [self.ctl.leader, self.ctl.epoch])
        return (None if leader is None else _text(leader)), int(epoch or 0)

    def codecs_of(self, context_id: str) -> list[str]:
        """The codecs any manager stored this context at (an existence check: no lease)."""
        members = self._guard(self.client.smembers, self._keys(context_id, "none").codecs)
        return sorted(_text(m) for m in members)

    def contains(self, context_id: str) -> bool:
        """Held by this manager and still on the server (an existence check: no lease)."""
        with self._lock:
            entry = self._entries.get(context_id)
        if entry is None:
            return False
        try:
            return bool(self._guard(self.client.exists, entry.location))
        except redis_errors():
            return True  # unknown: the index says held; a read decides

    def delete(self, context_id: str) -> None:
        """Drop this manager's hold; the object goes when nobody holds it and no lease is live."""
        with self._lock:
            self._entries.pop(context_id, None)
            addr = self._addr.pop(context_id, None)
        if addr is None:
            return
        self._pending_drops.add(addr)
        self.retry_pending()

    def retry_pending(self) -> int:
        """Drop the holds a failed delete left behind; returns how many remain."""
        for addr in list(self._pending_drops):
            keys = self._keys(*addr)
            try:
                self._finish(keys, self._run("drop", keys.as_list(), [self.holder, "0", "0", "released by its holders"]))
            except redis_errors():
                break
            self._pending_drops.discard(addr)
        return len(self._pending_drops)

    def _finish(self, keys: ObjectKeys, verdict) -> str:
        """After a script that may delete the object: release its ledger row (by token)."""
        status = _text(verdict[0])
        if status == "deleted":
            self._run("release", self.ctl.accounting(), [keys.obj, _text(verdict[1])])
        return status

    def adopt(self, context_id: str, location: str, checksum: str | None, *, verify: bool = True) -> int:
        """Re-attach (and hold again) an object written before a restart; returns its nbytes."""
        codec = codec_of_object(location)
        ctx, _ = self._address(context_id, codec)
        keys = keys_of_object(location)
        try:
            meta = self._run("hold", [keys.obj, keys.holders], [self.holder])
            data = self.client.hget(keys.obj, "data") if meta is not None and verify else None
        except redis_errors() as exc:
            raise RemoteUnavailableError(f"shared tier {self.name} is unreachable: {exc}") from None
        if meta is None:
            raise RemoteUnavailableError(f"stored KV {location} is gone from the shared tier")
        if verify and checksum is not None and (data is None or sha256_hex(data) != checksum):
            raise RemoteUnavailableError(f"stored KV {location} fails its sha256 checksum")
        nbytes = int(meta[1])
        with self._lock:
            self._entries[context_id] = Entry(nbytes, location, checksum or _text(meta[0]))
            self._addr[context_id] = (ctx, codec)
        return nbytes

    def gone_reason(self, context_id: str, codec: str) -> str | None:
        try:
            reason = self.client.get(self._keys(context_id, codec).gone)
        except redis_errors():
            return None
        return None if reason is None else _text(reason)

    def probe(self) -> None:
        try:
            super().probe()
        except (RemoteRefusedError, RemoteUnavailableError) as exc:
            log.warning("shared tier %s: bandwidth probe skipped (%s); using defaults", self.name, exc)

    def __repr__(self) -> str:
        return f"<SharedRedisTier {self.name} {self.fingerprint} {self.state} {self.used_bytes} B held>"


def _text(value) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)
