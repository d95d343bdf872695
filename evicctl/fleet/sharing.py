"""Cross-engine reuse: what an engine calls instead of Manager.lookup / Manager.store when
its manager has a shared tier.

`store` keeps the context locally as usual and writes it through to the shared tier (held as
"<manager>#share", so this manager's placer moving it between its own tiers does not take it
away from the others). `lookup` tries the manager first; on a local miss it looks for the
context in the shared tier at any codec (an existence check: no lease), reads it under a
lease, and hands it to the manager to keep, so the next lookup is local.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from evicctl.fleet.hook import shared_tier_of

log = logging.getLogger(__name__)

SHARE_CODEC = "none"  # what is written through: the full KV, so every engine serves it exactly


@dataclass(frozen=True)
class Served:
    kv: object  # evicctl.manager.kv.KV on the requested device
    source: str  # "local" (this manager's tiers) or "remote" (another engine's object)
    tier: str
    codec: str
    load_s: float


class SharedCache:
    """An engine's view of its manager plus the fleet's shared tier."""

    def __init__(self, manager, *, share_codec: str = SHARE_CODEC) -> None:
        self.manager, self.tier, self.share_codec = manager, shared_tier_of(manager), share_codec

    def store(self, context_id: str, kv, *, prefill_s: float | None = None, tenant: str = "default", label=None):
        placement = self.manager.store(context_id, kv, prefill_s=prefill_s, tenant=tenant, label=label)
        if self.tier is not None:
            self._share(context_id, kv)
        return placement

    def _share(self, context_id: str, kv) -> None:
        from evicctl.errors import RefusedError
        from evicctl.manager.codecs.codec import get_codec

        try:
            self.tier.share(context_id, get_codec(self.share_codec).encode(kv))
        except RefusedError as exc:  # recorded by the tier (and the cluster); the local copy serves
            log.info("context %s not shared: %s", context_id, exc)

    def lookup(self, context_id: str, device=None, *, tenant: str = "default", keep: bool = True) -> Served | None:
        """This manager's copy, else another engine's; with keep=False the caller calls keep()
        itself once it has started answering (keeping is off the TTFT's critical path)."""
        hit = self.manager.lookup(context_id, device)
        if hit is not None:
            return Served(hit.kv, "local", hit.tier, hit.codec, hit.load_s)
        if self.tier is None:
            return None
        remote = self.fetch_remote(context_id, device)
        if remote is not None and keep:
            self.keep(context_id, remote, tenant=tenant)
        return remote

    def keep(self, context_id: str, served: Served, *, tenant: str = "default") -> None:
        """Hand a remote hit to this manager: the next lookup is local."""
        self.manager.store(context_id, served.kv, tenant=tenant)

    def fetch_remote(self, context_id: str, device=None) -> Served | None:
        """Another engine's copy, decoded on `device`, or None (absent, evicted, unreachable)."""
        from evicctl.errors import CorruptDataError
        from evicctl.manager.codecs.codec import get_codec
        from evicctl.manager.tiers.remote_client import redis_errors

        try:
            codecs = self.tier.codecs_of(context_id)
        except redis_errors():
            return None
        for codec in sorted(codecs, key=lambda c: c != self.share_codec):  # the full KV first
            try:
                got = self.tier.fetch(context_id, codec)
            except CorruptDataError as exc:
                log.info("context %s/%s not read from the shared tier: %s", context_id, codec, exc)
                continue
            if got is not None:
                stored, load_s = got
                start = time.perf_counter()
                kv = get_codec(codec).decode(stored, device or self.manager.config.device)
                return Served(kv, "remote", self.tier.name, codec, load_s + time.perf_counter() - start)
        return None
