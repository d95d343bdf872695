"""Key names of the shared remote tier: content addresses and the cluster-wide ledger.

An object is addressed by (model fingerprint, context id, codec). Every key of one context
carries the same Redis Cluster hash tag, so the scripts that touch an object, its holders and
its leases run on one node, atomically. The tag is a sha256 of fingerprint and context id:
stable across processes and hosts (Python's ``hash()`` is salted per process, the cause of
LMCache #1897), and safe for ids that contain ``{`` or ``}``.

The ledger (capacity, used bytes, per-tenant use and quotas, one row per object, refusals)
and the leader's lease and epoch share one other tag, ``{<ns>:ctl}``: the accounting scripts
and the fencing check then run on one node too.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

DEFAULT_NAMESPACE = "evk"
TAG_HEX = 20  # 80 bits of sha256: collisions are not a concern at any realistic object count


def model_fingerprint(model: str) -> str:
    """16 hex of sha256 over the model's identity (name, revision, dtype: whatever the engine
    passes); two engines share objects exactly when their fingerprints match."""
    return hashlib.sha256(model.encode()).hexdigest()[:16]


def context_tag(fingerprint: str, context_id: str) -> str:
    return hashlib.sha256(f"{fingerprint}\0{context_id}".encode()).hexdigest()[:TAG_HEX]


@dataclass(frozen=True)
class ObjectKeys:
    """The keys of one (fingerprint, context, codec) object; all in one hash slot."""

    obj: str  # hash: data, sha256, nbytes, tenant, context_id, codec, token, doomed
    holders: str  # set of manager ids that keep the object as one of their placements
    leases: str  # zset: lease id -> expiry (server ms)
    codecs: str  # set: the codecs this context is stored at (for cross-engine lookups)
    fence: str  # highest leader epoch that evicted here (fencing a stale leader)
    gone: str  # why the object was last evicted, kept a while for the reader that misses it

    def as_list(self) -> list[str]:
        return [self.obj, self.holders, self.leases, self.codecs, self.fence, self.gone]


def object_keys(namespace: str, fingerprint: str, context_id: str, codec: str) -> ObjectKeys:
    base = f"{namespace}:{{{context_tag(fingerprint, context_id)}}}"
    obj = f"{base}:o:{codec}"
    return ObjectKeys(obj, obj + ":holders", obj + ":leases", base + ":codecs", base + ":fence", obj + ":gone")


def keys_of_object(obj: str) -> ObjectKeys:
    """The keys of an object from its `obj` key alone (the ledger's rows name only that)."""
    base, _, codec = obj.rpartition(":o:")
    return ObjectKeys(obj, obj + ":holders", obj + ":leases", base + ":codecs", base + ":fence", obj + ":gone")


def codec_of_object(obj: str) -> str:
    return obj.rpartition(":o:")[2]


@dataclass(frozen=True)
class ControlKeys:
    """The ledger and the leader's keys; all in the `{<ns>:ctl}` slot."""

    capacity: str  # string: cluster capacity in bytes (set once, by the first manager)
    used: str  # string: bytes reserved or stored, cluster-wide
    tenant_used: str  # hash: tenant -> bytes
    quota: str  # hash: tenant -> quota bytes
    ledger: str  # hash: object key -> "nbytes tenant reserved_ms token context_id"
    refusals: str  # stream: every refused write (capacity or quota), capped
    leader: str  # string: the leader's manager id, with a TTL (its lease)
    epoch: str  # string: the fencing token, incremented at every election

    def accounting(self) -> list[str]:
        return [self.capacity, self.used, self.tenant_used, self.quota, self.ledger, self.refusals]


def control_keys(namespace: str) -> ControlKeys:
    base = f"{namespace}:{{{namespace}:ctl}}"
    return ControlKeys(*(f"{base}:{n}" for n in ("capacity", "used", "tenant_used", "quota", "ledger", "refusals",
                                                 "leader", "epoch")))  # fmt: skip
