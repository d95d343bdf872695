"""evicctl's utility as a vLLM CPU-offloading CachePolicy (imports vLLM: load it through
`evicctl.integrations.vllm`, which says how to install vLLM when it is missing).

Chunks to contexts: a context is one prefix chain, the chunks that requests over the same
document share. A request names its context in kv_transfer_params["evicctl_context"]
(the caller-given id of DESIGN §3); otherwise the first chunk the request shows the policy
decides: a chunk already known (resident or remembered) brings its context, a new one
starts a context named by its block hash ("vllm-<16 hex>"). Later chunks of the request
join that context, so a document's chunks and the per-request tails after it share one
row in the store, while each chunk keeps its own frequency.

Eviction: lowest priority first, where priority = log(decayed reuse frequency) +
log(seconds a hit on it saves) (vllm_score), capped by the priority of the chunk before it
in the request (a chunk is worth nothing once its prefix is gone, vLLM only hits prefixes),
ties broken tail first. Pinned contexts (`evicctl pin`) are skipped like `protected` keys;
released ones (`evicctl evict`) go first.

The scheduler thread owns every structure here. Operators' commands arrive from the
recorder thread through `_inbox` (a deque: append/popleft are atomic) and are applied at the
start of the next evict; the recorder learns what happened through `journal`.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from vllm.v1.kv_offload.base import OffloadKey, ReqContext
from vllm.v1.kv_offload.cpu.policies.base import CachePolicy, ChunkStatus

from evicctl.integrations.vllm_config import VllmPolicyConfig
from evicctl.integrations.vllm_score import ChunkPricer, access_weight, log_add

CONTEXT_PARAM = "evicctl_context"  # kv_transfer_params key naming a request's context
LABEL_PARAM = "evicctl_label"
RELEASED = -math.inf  # priority of a chunk an operator released


@dataclass(slots=True)
class _RequestState:
    owner: object
    generation: int
    context_id: str
    last_priority: float = math.inf  # priority of the previous chunk of this request


class EvicctlCachePolicy(CachePolicy):
    """Load with kv_connector_extra_config {"eviction_policy": "EvicctlCachePolicy",
    "cache_policy_module_path": "evicctl.integrations.vllm"}."""

    def __init__(self, cache_capacity: int, config: VllmPolicyConfig | None = None) -> None:
        super().__init__(cache_capacity)
        self.config = config = config or VllmPolicyConfig.from_env()
        self.pricer = ChunkPricer.from_cost_file(config.costs_path, config.chunk_tokens, config.chunk_bytes)
        self.chunks: dict[OffloadKey, ChunkStatus] = {}
        self._priority: dict[OffloadKey, float] = {}
        self._position: dict[OffloadKey, int] = {}
        self._log_freq: dict[OffloadKey, float] = {}
        self._context_of: dict[OffloadKey, str] = {}
        self._members: dict[str, set[OffloadKey]] = {}  # context -> resident chunks
        self._evictable: set[OffloadKey] = set()
        self._heap: list[tuple[float, int, int, OffloadKey]] = []  # (priority, -pos, stamp, key)
        self._stamp: dict[OffloadKey, int] = {}  # the one current heap entry of each key
        self._next_stamp = 0
        self._ghosts: OrderedDict[OffloadKey, tuple[float, str]] = OrderedDict()
        self._ghost_capacity = int(config.ghost_factor * cache_capacity)
        self._clock = 0.0  # finished requests
        self._generation = 0
        self.pinned: set[str] = set()
        self.released: set[str] = set()
        self._inbox: deque[tuple[str, str]] = deque()
        self.journal: deque[tuple] = deque()
        self.recorder = None
        if config.record:
            from evicctl.integrations.vllm_recorder import Recorder

            self.recorder = Recorder(self, config).start()

    # ---- vLLM's CachePolicy ------------------------------------------------------------
    def get(self, key: OffloadKey) -> ChunkStatus | None:
        return self.chunks.get(key)

    def insert(self, key: OffloadKey, chunk: ChunkStatus, req_context: ReqContext) -> None:
        state = self._state(key, req_context)
        ghost = self._ghosts.pop(key, None)
        now_w = access_weight(self._clock, self.config.half_life_requests)
        log_freq = now_w if ghost is None else log_add(ghost[0], now_w)
        position = req_context.get_offload_key_position(key)
        self.chunks[key] = chunk
        self._log_freq[key] = log_freq
        self._position[key] = position if position is not None else 0
        ctx = state.context_id
        self._context_of[key] = ctx
        members = self._members.get(ctx)
        if members is None:
            members = self._members[ctx] = set()
            self.journal.append(("context", ctx, _label(req_context, ctx)))
        members.add(key)
        priority = RELEASED if ctx in self.released else min(
            log_freq + self.pricer.log_saved(position), state.last_priority
        )
        state.last_priority = priority
        self._priority[key] = priority
        self.journal.append(("admit", ctx, 1, self._position[key]))
        if chunk.ref_cnt == 0:
            self._evictable.add(key)
            self._push(key)

    def remove(self, key: OffloadKey) -> None:
        """A failed store: forget the chunk as if it never came (no frequency kept)."""
        ctx = self._forget(key)
        self._evictable.discard(key)
        self.journal.append(("remove", ctx, 1))

    def touch(self, keys: Iterable[OffloadKey], req_context: ReqContext) -> None:
        self._access(keys, (), req_context)

    def on_store_miss(self, keys: Iterable[OffloadKey], req_context: ReqContext) -> None:
        # insert() counts the access that stores these; counting the miss too would double it
        return

    def on_request_access(self, keys: Iterable[OffloadKey], req_context: ReqContext) -> None:
        for key in keys:  # resolve the request's context from its first chunk, once
            self._state(key, req_context)
            return

    def on_request_finished(
        self,
        key_groups: Sequence[Sequence[OffloadKey]],
        insertion_only_keys: set[OffloadKey],
        reused_keys: set[OffloadKey],
        req_context: ReqContext,
    ) -> None:
        for keys in key_groups:
            self._access(keys, insertion_only_keys, req_context)
        state = req_context.get_state(_RequestState)
        if state is not None and state.owner is self:
            if reused_keys and state.context_id in self.released:
                self._unrelease(state.context_id)  # used again: the release has served its turn
            observed = sum(len(g) for g in key_groups)
            self.journal.append(("access", state.context_id, len(reused_keys), observed))
        self._clock += 1.0

    def evict(self, n: int, protected: set[OffloadKey]) -> list[tuple[OffloadKey, ChunkStatus]] | None:
        if n == 0:
            return []
        if self._inbox:
            self._apply_commands()
        chosen: list[tuple[float, int, int, OffloadKey]] = []
        kept_back: list[tuple[float, int, int, OffloadKey]] = []
        heap, stamp, evictable, pinned, context_of = (
            self._heap, self._stamp, self._evictable, self.pinned, self._context_of
        )
        while heap and len(chosen) < n:
            entry = heapq.heappop(heap)
            key = entry[3]
            if stamp.get(key) != entry[2] or key not in evictable:
                continue  # stale: re-prioritised, in use, or gone
            if key in protected or (pinned and context_of[key] in pinned):
                kept_back.append(entry)
                continue
            chosen.append(entry)
        for entry in kept_back:
            heapq.heappush(heap, entry)
        if len(chosen) < n:  # atomic: put everything back, change nothing
            for entry in chosen:
                heapq.heappush(heap, entry)
            return None
        out = []
        per_context: dict[str, int] = {}
        for entry in chosen:
            key = entry[3]
            chunk = self.chunks[key]
            log_freq = self._log_freq[key]
            ctx = self._forget(key)
            evictable.discard(key)
            self._remember(key, log_freq, ctx)
            per_context[ctx] = per_context.get(ctx, 0) + 1
            out.append((key, chunk))
        for ctx, count in per_context.items():
            self.journal.append(("evict", ctx, count, "operator" if ctx in self.released else "capacity"))
        self._compact_if_needed()
        return out

    def clear(self) -> None:
        for table in (self.chunks, self._priority, self._position, self._log_freq, self._context_of,
                      self._members, self._stamp, self._ghosts):  # fmt: skip
            table.clear()
        self._evictable.clear()
        self._heap.clear()
        self._clock = 0.0
        self._generation += 1
        self.journal.append(("clear",))

    def mark_evictable(self, key: OffloadKey) -> None:
        self._evictable.add(key)
        self._push(key)

    def mark_non_evictable(self, key: OffloadKey) -> None:
        self._evictable.discard(key)

    # ---- operators (called from the recorder thread) -------------------------------------
    def submit(self, verb: str, context_id: str) -> None:
        """Queue pin/unpin/release for the scheduler thread; pins act at once (a set add)."""
        if verb == "pin":
            self.pinned.add(context_id)
        elif verb == "unpin":
            self.pinned.discard(context_id)
        self._inbox.append((verb, context_id))

    def resident_chunks(self, context_id: str) -> int:
        return len(self._members.get(context_id, ()))

    def close(self) -> None:
        if self.recorder is not None:
            self.recorder.stop()

    # ---- internals ---------------------------------------------------------------------
    def _state(self, key: OffloadKey, req_context: ReqContext) -> _RequestState:
        state = req_context.get_state(_RequestState)
        if state is None or state.owner is not self or state.generation != self._generation:
            state = _RequestState(self, self._generation, self._context_for(key, req_context))
            req_context.set_state(state)
        return state

    def _context_for(self, key: OffloadKey, req_context: ReqContext) -> str:
        params = req_context.kv_transfer_params
        if params and params.get(CONTEXT_PARAM):
            return str(params[CONTEXT_PARAM])
        ctx = self._context_of.get(key)
        if ctx is None:
            ghost = self._ghosts.get(key)
            ctx = ghost[1] if ghost is not None else "vllm-" + bytes(key[:8]).hex()
        return ctx

    def _access(self, keys: Iterable[OffloadKey], skip: set[OffloadKey] | tuple, req_context: ReqContext) -> None:
        """One reuse of `keys` (head first): bump frequency, re-price along the prefix."""
        now_w = access_weight(self._clock, self.config.half_life_requests)
        before = math.inf
        released = self.released
        for key in keys:
            if key not in self.chunks:
                continue
            log_freq = self._log_freq[key]
            if key not in skip:
                log_freq = self._log_freq[key] = log_add(log_freq, now_w)
            if released and self._context_of[key] in released:
                priority = RELEASED
            else:
                priority = min(log_freq + self.pricer.log_saved(self._position[key]), before)
            before = priority
            if priority != self._priority[key]:
                self._priority[key] = priority
                if key in self._evictable:
                    self._push(key)

    def _push(self, key: OffloadKey) -> None:
        self._next_stamp += 1
        self._stamp[key] = self._next_stamp
        heapq.heappush(self._heap, (self._priority[key], -self._position[key], self._next_stamp, key))

    def _forget(self, key: OffloadKey) -> str:
        del self.chunks[key]
        del self._priority[key]
        del self._position[key]
        del self._log_freq[key]
        self._stamp.pop(key, None)
        ctx = self._context_of.pop(key)
        members = self._members.get(ctx)
        if members is not None:
            members.discard(key)
        return ctx

    def _remember(self, key: OffloadKey, log_freq: float, ctx: str) -> None:
        if self._ghost_capacity <= 0:
            return
        self._ghosts[key] = (log_freq, ctx)
        if len(self._ghosts) > self._ghost_capacity:
            self._ghosts.popitem(last=False)

    def _compact_if_needed(self) -> None:
        if len(self._heap) > max(64, 4 * len(self._evictable)):
            self._heap = [e for e in self._heap if self._stamp.get(e[3]) == e[2] and e[3] in self._evictable]
            heapq.heapify(self._heap)

    def _apply_commands(self) -> None:
        while self._inbox:
            verb, ctx = self._inbox.popleft()
            if verb == "release":
                self.released.add(ctx)
                self._reprice(ctx, RELEASED)
            elif verb == "pin" and ctx in self.released:
                self._unrelease(ctx)

    def _unrelease(self, ctx: str) -> None:
        self.released.discard(ctx)
        self._reprice(ctx, None)

    def _reprice(self, ctx: str, priority: float | None) -> None:
        for key in self._members.get(ctx, ()):
            p = priority if priority is not None else self._log_freq[key] + self.pricer.log_saved(self._position[key])
            self._priority[key] = p
            if key in self._evictable:
                self._push(key)


def _label(req_context: ReqContext, ctx: str) -> str:
    params = req_context.kv_transfer_params
    if params and params.get(LABEL_PARAM):
        return str(params[LABEL_PARAM])
    return f"vLLM prefix {ctx[5:13]}" if ctx.startswith("vllm-") else ctx
