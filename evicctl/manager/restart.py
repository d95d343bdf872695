"""Restart: rebuild a Manager's state from what the previous one left in the store.

With the same database and cache directory, disk-tier copies are adopted (their checksums
verified), memory-tier ones are reported gone (an event each; the context is dropped and
recomputed on its next use), pins and profiles come back from the store, and files no
placement points at (a crashed move's half, a lost copy) are deleted.

`recover` fills the manager's runtime (runtime.Runtime: contexts, tier_hits, misses, freq,
dirty), batches its events in the runtime's batch, flushes them, and returns how many orphan
files it deleted.
"""

from __future__ import annotations

import logging
import time

from evicctl.errors import CorruptDataError
from evicctl.manager.placer.pricing import codec_sizes
from evicctl.manager.placer.types import DROPPED_TIER
from evicctl.manager.state import ContextState, tier_key

log = logging.getLogger(__name__)

SHAPE_KEYS = ("layers", "kv_heads", "head_dim", "dtype_bytes", "window_numel")


def recover(m, codec_names: tuple[str, ...], tiers, previous_heartbeat_at: float) -> int:
    """Rebuild the state a previous manager left in the store (see the module docstring) into
    `m` (the manager's runtime.Runtime); returns how many orphan files it deleted."""
    now = time.time()
    store = m.store
    rows = {r["id"]: r for r in store.query("SELECT * FROM contexts")}
    m.tier_hits = {r["name"]: r["hits"] for r in store.query("SELECT name, hits FROM tiers")}
    m.misses = sum(r["misses"] for r in rows.values())
    placements = {r["context_id"]: r for r in store.query("SELECT * FROM placements")}
    shape = tuple(m.kv_shape.get(k, 0) for k in SHAPE_KEYS) if m.kv_shape else None
    for cid, r in rows.items():
        ctx = ContextState(
            cid, r["tokens"], r["raw_bytes"], tenant=r["tenant"], label=r["label"], created_at=r["created_at"],
            last_access_at=r["last_access_at"], hits=r["hits"], misses=r["misses"], shape=shape,
            pin_tier=r["pin_tier"], pin_codec=r["pin_codec"], quality_floor=r["quality_floor"],
            utility=r["utility"], priced_freq=r["priced_freq"], miss_s=r["miss_s"],
        )  # fmt: skip
        ctx.set_sizes(codec_sizes(codec_names, ctx.tokens, shape, ctx.raw_bytes))
        m.contexts[cid] = ctx
        # freq was written as the decayed rate at (about) the last heartbeat
        m.freq.set(cid, r["freq"], min(previous_heartbeat_at, now))
    for r in store.query("SELECT * FROM profiles ORDER BY measured_at"):
        ctx = m.contexts.get(r["context_id"])
        if ctx is not None:
            ctx.keep_profile(r["codec"], r["quality"], r["quality_sd"], r["metric"])
    adopted: set[str] = set()
    for cid, ctx in m.contexts.items():
        refuse_unconfigured_pin(m.batch, ctx, m.tier_by_name, codec_names)
        location = _adopt(m, ctx, placements.get(cid), now)
        if location:
            adopted.add(location)
        m.dirty.add(cid)
    orphans_deleted = delete_orphans(tiers, adopted)
    _record_restart(m, len(rows), len(adopted), orphans_deleted)
    m.flush()
    return orphans_deleted


def _record_restart(m, known: int, adopted: int, orphans_deleted: int) -> None:
    """One "restart" event (the per-context events do not show a restart that found nothing),
    and commands the previous manager claimed but never answered are answered now."""
    from evicctl.control import fail_interrupted

    previous = m.store.query("SELECT pid, host FROM manager WHERE id = 1")
    interrupted = fail_interrupted(m.store)
    if not previous:
        return  # a first start: nothing to restart from
    m.batch.event(kind="restart", reason=(
        f"restart after pid {previous[0]['pid']} on {previous[0]['host']}: {known} contexts known, "
        f"{adopted} disk copies adopted, "
        f"{orphans_deleted} orphan files deleted, {interrupted} interrupted commands failed"
    ))  # fmt: skip


def _adopt(m, ctx: ContextState, row, now: float) -> str | None:
    """Re-attach a context's copy from its placement row; returns its location if adopted."""
    batch = m.batch
    if row is None or row["tier"] == DROPPED_TIER:
        ctx.since = row["since"] if row else now
        batch.upsert("placements", ctx.placement_row())
        return None
    tier = m.tier_by_name.get(row["tier"])
    key = tier_key(ctx.id, row["codec"])
    gone = {"context_id": ctx.id, "from_tier": row["tier"], "to_tier": DROPPED_TIER,
            "from_codec": row["codec"], "bytes": row["stored_bytes"], "utility_before": ctx.utility}  # fmt: skip
    if tier is None or not hasattr(tier, "adopt"):
        # Memory tiers do not survive a restart; a tier no longer configured is gone too.
        batch.event(kind="drop", reason="recovery", **gone)
    else:
        try:
            nbytes = tier.adopt(key, row["location"], row["checksum"], verify=True)
        except CorruptDataError as exc:
            log.warning("context %s lost at restart: %s", ctx.id, exc)
            batch.event(kind="lost", reason="lost", **gone)
        else:
            ctx.tier, ctx.codec, ctx.key, ctx.stored_bytes = row["tier"], row["codec"], key, nbytes
            ctx.checksum, ctx.location, ctx.since = row["checksum"], row["location"], row["since"]
            if row["codec"] not in ctx.sizes:
                ctx.add_size(row["codec"], nbytes)
            batch.event(kind="recovery", reason="recovery", context_id=ctx.id, to_tier=row["tier"],
                        to_codec=row["codec"], bytes=nbytes)  # fmt: skip
            return row["location"]
    ctx.since = now
    batch.upsert("placements", ctx.placement_row())
    return None


def refuse_unconfigured_pin(batch, ctx, tiers_by_name, codec_names) -> str | None:
    """A pin naming a tier or codec this manager no longer has is kept (the operator's intent
    survives a configuration change and comes back with the tier), but cannot be honoured:
    say so with an event instead of planning as if it were not there. Returns the reason."""
    problems = []
    if ctx.pin_tier is not None and ctx.pin_tier != DROPPED_TIER and ctx.pin_tier not in tiers_by_name:
        problems.append(f"tier {ctx.pin_tier!r} is not configured (tiers: {', '.join(tiers_by_name)})")
    if ctx.pin_codec is not None and ctx.pin_codec not in codec_names:
        problems.append(f"codec {ctx.pin_codec!r} is not in the menu")
    if not problems:
        return None
    reason = "pin not honoured: " + "; ".join(problems)
    log.warning("context %s: %s", ctx.id, reason)
    batch.event(kind="pin", reason=reason, context_id=ctx.id, to_tier=ctx.pin_tier, to_codec=ctx.pin_codec)
    return reason


def delete_orphans(tiers, adopted: set[str]) -> int:
    """Delete files in disk tiers that no placement points at; returns how many."""
    deleted = 0
    for tier in tiers:
        if not hasattr(tier, "files"):
            continue
        for path in tier.files():
            if str(path) not in adopted:
                path.unlink(missing_ok=True)
                deleted += 1
    if deleted:
        log.info("deleted %d orphan file(s)", deleted)
    return deleted
