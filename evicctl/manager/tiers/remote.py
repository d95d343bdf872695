"""The redis tier: a context's safetensors bytes (as the disk tier writes them) and their
sha256 in a Redis hash per context. RedisTier is one manager's private keyspace; the tier
several managers share (a cluster, content addresses, cluster-wide accounting, leases) is
SharedRedisTier in remote_shared.py, which make_redis_tier (remote_build.py) builds by default.

The redis client library is imported when a tier is built (make_redis_tier, or RedisTier
without a client), never when this module is imported.
"""

from __future__ import annotations

import time

from evicctl.errors import CorruptDataError
from evicctl.manager.codecs.codec import Stored
from evicctl.manager.tiers import st_format
from evicctl.manager.tiers.tier import (
    Entry,
    PutResult,
    Tier,
    deserialize,
    serialize,
    sha256_hex,
)
from evicctl.redact import redact_url

DEFAULT_URL = "redis://127.0.0.1:6379/0"


class RedisTier(Tier):
    """A Redis hash per context: {data: safetensors bytes, sha256: hex}."""

    backend = "redis"

    def __init__(
        self,
        url: str,
        *,
        capacity_bytes: int,
        name: str = "redis",
        rank: int = 0,
        prefix: str = "evicctl:kv:",
        client=None,
    ) -> None:
        super().__init__(name=name, rank=rank, capacity_bytes=capacity_bytes)
        if client is None:
            import redis

            client = redis.Redis.from_url(url)  # redis:// or rediss:// (TLS), user and password in it
        # shown in errors, logs and `evicctl tiers`: without the password
        self.url, self.prefix, self.client = redact_url(url), prefix, client

    def close(self) -> None:
        self.client.close()

    def key_for(self, context_id: str) -> str:
        return self.prefix + context_id

    def put(self, context_id: str, stored: Stored) -> PutResult:
        start = time.perf_counter()
        data = serialize(context_id, stored)
        checksum = sha256_hex(data)
        key = self.key_for(context_id)
        with self._lock:  # the write and the index switch together (see get)
            self.client.hset(key, mapping={"data": data, "sha256": checksum})
            self._entries[context_id] = Entry(stored.nbytes, key, checksum)
        seconds = time.perf_counter() - start
        self.observe("write", stored.nbytes, seconds)
        return PutResult(key, checksum, seconds)

    def get(self, context_id: str) -> tuple[Stored, float]:
        with self._lock:
            entry = self._entries.get(context_id)
        key = entry.location if entry else self.key_for(context_id)
        start = time.perf_counter()
        data, remote_sum = self.client.hmget(key, ["data", "sha256"])
        if data is None:
            if entry is None:
                raise KeyError(context_id)
            raise CorruptDataError(f"stored KV {key} is gone from {self.url}")
        with self._lock:
            after = self._entries.get(context_id)
        # our own checksum when we wrote (or adopted) it, before or after the fetch (a put of
        # ours may have replaced it meanwhile); else the writer's, from the hash
        expected = {e.checksum for e in (entry, after) if e is not None and e.checksum}
        if sha256_hex(data) not in (expected or {(remote_sum or b"").decode()}):
            raise CorruptDataError(f"stored KV {key} fails its sha256 checksum")
        stored = deserialize(data)
        seconds = time.perf_counter() - start
        self.observe("read", stored.nbytes, seconds)
        return stored, seconds

    def contains(self, context_id: str) -> bool:
        """Held by this tier, or put there by another engine sharing the server."""
        return super().contains(context_id) or bool(self.client.exists(self.key_for(context_id)))

    def delete(self, context_id: str) -> None:
        with self._lock:
            entry = self._entries.pop(context_id, None)
        self.client.delete(entry.location if entry else self.key_for(context_id))

    def adopt(self, context_id: str, location: str, checksum: str | None, *, verify: bool = True) -> int:
        """Re-attach a key written before a restart; returns its Stored.nbytes."""
        data = self.client.hget(location, "data")
        if data is None:
            raise CorruptDataError(f"stored KV {location} is gone from {self.url}")
        if verify and checksum is not None and sha256_hex(data) != checksum:
            raise CorruptDataError(f"stored KV {location} fails its sha256 checksum")
        nbytes = st_format.payload_nbytes(st_format.split(data)[0])
        with self._lock:
            self._entries[context_id] = Entry(nbytes, location, checksum)
        return nbytes
