"""Carrying out a plan's moves, crash-safe: copy, switch, delete.

A move is executed copy first (the new copy is written beside the old one, under its own tier
key), then the context's placement row is switched (one transaction with its event), then the
old copy is deleted. A crash at any point leaves one valid copy that the store points at
(plus, at worst, an orphan file that the next start deletes: see `restart`).

The executor works on the manager's runtime.Runtime: `contexts` and `batch` under `lock`, the
tiers by name, `flush()` to write the batch, and the `fault` test hook; the manager hands it a
heartbeat to call between copies (a long plan must not look like a dead manager).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from evicctl.errors import CorruptDataError, RefusedError
from evicctl.manager.kv import KV
from evicctl.manager.metrics import EVICTION_KINDS, lifetime_of
from evicctl.manager.placer.types import DROPPED_TIER, Move, Plan
from evicctl.manager.state import EVENT_KIND, ContextState, tier_key

log = logging.getLogger(__name__)

# What step 1 of a move produced: (tier key, location, checksum, stored bytes); key "drop" for a drop.
Copy = tuple[str, str | None, str | None, int]
DROP_COPY: Copy = ("drop", None, None, 0)
NOT_ADMISSIONS = ("compress", "demote", "promote", "move", "drop")
SWITCH_CHUNK = 512  # moves switched per lock hold and transaction


class MoveExecutor:
    """Executes plans (and admissions) for one Manager; see the module docstring."""

    def __init__(self, rt, *, heartbeat: Callable[[], None], running: Callable[[], bool]) -> None:
        self.rt = rt  # runtime.Runtime: the manager's shared state
        self._heartbeat = heartbeat  # long plans heartbeat as they go (readers must see the manager alive)
        self._running = running  # without the control thread, writes are flushed at once

    def execute(self, plan: Plan, *, actor: str = "policy", command_id: int | None = None) -> list[int]:
        """Carry out a plan's moves (copy, switch rows, delete old copies); returns event ids.
        Admissions are skipped: they carry their KV, and `admit` does them."""
        m = self.rt
        with m.exec_lock:
            self._heartbeat()  # planning may have taken a while
            copies = []
            for move in plan.iter_moves(NOT_ADMISSIONS):
                copy = self._copy(move)
                if copy is not None:
                    copies.append((move, copy))
                self._heartbeat()
            self._fault("copied")
            old_copies, event_ids = [], []
            # A chunk of switches at a time, each chunk one transaction: an engine thread's
            # store() waits for the lock and the database for one chunk, not a whole plan.
            for start in range(0, len(copies), SWITCH_CHUNK):
                with m.lock:
                    for move, copy in copies[start : start + SWITCH_CHUNK]:
                        if not self._still_at(move):
                            # moved or lost since its copy was made: the new copy is nobody's
                            if move.to_codec is not None:
                                old_copies.append((m.tier_by_name[move.to_tier], copy[0]))
                            continue
                        old = self._switch(move, copy, actor, command_id)
                        if old is not None:
                            old_copies.append(old)
                event_ids += m.flush()
            self._fault("switched")
            with m.lock:
                live = {(ctx.tier, ctx.key) for ctx in m.contexts.values() if ctx.stored}
            for tier, key in old_copies:
                if (tier.name, key) in live:
                    continue  # the copy a context is served from: deleting it would lose the context
                tier.delete(key)
            return event_ids

    def admit(self, ctx: ContextState, kv: KV, plan: Plan, now: float) -> None:
        """Store a new context's KV as the plan says (the caller holds `_exec_lock`)."""
        from evicctl.manager.codecs.codec import get_codec

        m = self.rt
        move = plan.move_of(ctx.id)
        if move.to_codec is None:
            new = DROP_COPY
        else:
            stored = get_codec(move.to_codec).encode(kv)
            key = tier_key(ctx.id, move.to_codec)
            try:
                put = m.tier_by_name[move.to_tier].put(key, stored)
                new = (key, put.location, put.checksum, stored.nbytes)
            except (RefusedError, OSError) as exc:  # a shared tier's quota, a full or read-only disk
                self._refused(move, _why(exc))
                move, new = move._replace(to_tier=DROPPED_TIER, to_codec=None, to_bytes=0, kind="drop"), DROP_COPY
        self._fault("admit-copied")
        with m.lock:
            m.batch.upsert("contexts", ctx.row(m.freq.rate(ctx.id, now)))
            self._switch(move, new, "policy", None)
        m.flush()

    def lose(self, context_id: str, key: str | None, why: str, *, reason: str = "lost") -> None:
        """A copy failed its checksum or vanished: never served; the context becomes dropped."""
        m = self.rt
        with m.lock:
            ctx = m.contexts.get(context_id)
            if ctx is None or ctx.key != key or not ctx.stored:
                return
            tier = m.tier_by_name.get(ctx.tier)
            lifetime = lifetime_of(ctx, time.time())
            m.batch.event(
                context_id=context_id, kind="lost", from_tier=ctx.tier, to_tier=DROPPED_TIER,
                from_codec=ctx.codec, bytes=ctx.stored_bytes, reason=reason, utility_before=ctx.utility,
                **lifetime.columns(),
            )  # fmt: skip
            m.metrics.lost(ctx.tier, reason, ctx.tenant, lifetime)
            log.warning("context %s lost: %s", context_id, why)
            m.placed(ctx, -1)
            ctx.set_dropped(time.time())
            m.batch.upsert("placements", ctx.placement_row())
        if tier is not None and key is not None:
            tier.delete(key)
        if not self._running():
            m.flush()

    def _still_at(self, move: Move) -> bool:
        """Whether the context is still where the move starts (under _lock): a store() does not
        wait for a plan, so a context can be lost and stored again while its move copies."""
        ctx = self.rt.contexts.get(move.context_id)
        return ctx is not None and ctx.stored and ctx.tier == move.from_tier and ctx.codec == move.from_codec

    def _fault(self, stage: str) -> None:
        self.rt.at_fault_point(stage)

    def _copy(self, move: Move) -> Copy | None:
        """Step 1 of a move: the new copy, written beside the old one. None if the source is
        unreadable (the context is then lost: an event, a miss next time)."""
        from evicctl.manager.codecs.codec import get_codec

        m = self.rt
        with m.lock:
            ctx = m.contexts.get(move.context_id)
            if ctx is None or not ctx.stored or ctx.tier != move.from_tier or ctx.codec != move.from_codec:
                return None  # changed since it was planned; the next plan sees the new state
            src, key = m.tier_by_name[ctx.tier], ctx.key
        if move.to_codec is None:
            return DROP_COPY
        if move.to_tier == move.from_tier and tier_key(move.context_id, move.to_codec) == key:
            # Source and destination are the same tier key: copying then deleting the "old" copy
            # would delete the only one. Nothing to do.
            log.warning("context %s: ignoring a move onto its own copy (%s/%s)", move.context_id, ctx.tier, ctx.codec)
            return None
        if m.write_blocked(move.to_tier):
            return None  # a write there failed moments ago (said then): the next plans retry later
        try:
            stored, _ = src.get(key)
            if move.to_codec != move.from_codec:
                stored = get_codec(move.to_codec).encode(get_codec(move.from_codec).decode(stored, "cpu"))
            new_key = tier_key(move.context_id, move.to_codec)
            put = m.tier_by_name[move.to_tier].put(new_key, stored)
        except KeyError:
            return None
        except RefusedError as exc:  # a shared tier's capacity or quota: the context stays where it is
            self._refused(move, str(exc))
            return None
        except OSError as exc:
            # A full or read-only file system (ENOSPC, EROFS, EACCES): the tier wrote nothing it
            # keeps (temp file, then rename). The context stays where it is; one event, and the
            # tier takes no writes for a while instead of failing every tick.
            self._refused(move, _why(exc))
            m.block_writes(move.to_tier, _why(exc))
            return None
        except CorruptDataError as exc:
            self.lose(move.context_id, key, str(exc))
            return None
        return (new_key, put.location, put.checksum, stored.nbytes)

    def _refused(self, move: Move, why: str) -> None:
        """A tier refused a copy (a shared tier's capacity or a tenant's quota): an event, never
        a silent lost write."""
        log.warning("context %s: %s refused the copy: %s", move.context_id, move.to_tier, why)
        with self.rt.lock:
            self.rt.batch.event(context_id=move.context_id, kind="refused", from_tier=move.from_tier,
                                to_tier=move.to_tier, from_codec=move.from_codec, to_codec=move.to_codec,
                                bytes=move.to_bytes, reason=why)  # fmt: skip

    def _switch(self, move: Move, copy: Copy, actor: str, command_id: int | None):
        """Step 2 (under _lock): point the context at its new copy; batch the row and event.
        Returns the old copy (tier, key) to delete once the batch is written."""
        m = self.rt
        ctx = m.contexts[move.context_id]
        old = (m.tier_by_name[ctx.tier], ctx.key) if ctx.stored else None
        new_key, location, checksum, nbytes = copy
        if old is not None and (move.to_tier, new_key) == (ctx.tier, ctx.key):
            old = None  # the new copy overwrote the old one in place: nothing left to delete
        now = time.time()
        kind = EVENT_KIND.get(move.kind, "move")
        lifetime = lifetime_of(ctx, now) if ctx.stored else None  # of the copy leaving, before the switch
        m.placed(ctx, -1)
        if move.to_codec is None:
            ctx.set_dropped(now)
        else:
            ctx.tier, ctx.codec, ctx.key, ctx.stored_bytes = move.to_tier, move.to_codec, new_key, nbytes
            ctx.location, ctx.checksum, ctx.since = location, checksum, now
        m.placed(ctx, 1)
        ctx.utility = move.utility_after
        m.batch.upsert("placements", ctx.placement_row())
        m.batch.upsert("contexts", {"id": ctx.id, "utility": ctx.utility})
        m.batch.event(
            ts=now, context_id=ctx.id, kind=kind, from_tier=move.from_tier,
            to_tier=move.to_tier, from_codec=move.from_codec, to_codec=move.to_codec, bytes=nbytes,
            utility_before=move.utility_before, utility_after=move.utility_after, reason=move.reason,
            actor=actor, command_id=command_id,
            **(lifetime.columns() if lifetime is not None and kind in EVICTION_KINDS else {}),
        )  # fmt: skip
        m.metrics.moved(kind, move.from_tier, move.to_tier, move.reason, ctx.tenant, nbytes, lifetime)
        return old


def _why(exc: BaseException) -> str:
    """One line naming the failure: "No space left on device (ENOSPC)" for an OSError."""
    if isinstance(exc, OSError) and exc.errno is not None:
        import errno

        return f"{exc.strerror} ({errno.errorcode.get(exc.errno, exc.errno)})"
    return str(exc)
