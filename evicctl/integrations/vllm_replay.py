"""Replay requests through vLLM's CPU offloading manager as its scheduler drives it.

Per request, in vLLM's order: `on_new_request`; `lookup` chunk by chunk from the head until
the first miss (vLLM only reuses a prefix); `prepare_load` of the hit prefix; `prepare_store`
of the chunks after it; `on_request_finished`. Transfers complete `inflight` requests later
(`complete_load`, `complete_store`), so loads in use and stores not yet ready overlap the
next requests' evictions, as on a busy server. The GPU prefix cache is left out: every hit
counted here is a CPU hit.

Chunk keys are vLLM's: `hash_block_tokens` (sha256 over CBOR) chained over 16-token blocks,
the key of a chunk is its last block's hash (`make_offload_key`), its position the chunk's
end token. A context's block hashes are computed once and the query blocks chained on top.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from vllm.utils.hashing import sha256_cbor
from vllm.v1.core import kv_cache_utils
from vllm.v1.kv_offload.base import LookupResult, ReqContext, make_offload_key

from evicctl.integrations.vllm_spec import ChunkLayout

kv_cache_utils.init_none_hash(sha256_cbor)


@dataclass(frozen=True)
class Request:
    context: int  # index into the replay's contexts
    query_tokens: tuple[int, ...]  # token ids after the context (question + template tail)
    kv_transfer_params: dict | None = None


class ChunkHasher:
    """vLLM's offload keys of a prompt = context tokens + query tokens."""

    def __init__(self, contexts: Sequence[Sequence[int]], layout: ChunkLayout) -> None:
        self.contexts = [tuple(int(t) for t in c) for c in contexts]
        self.layout = layout
        self._prefix: dict[int, list[bytes]] = {}  # context -> hashes of its full blocks

    def _block_hashes(self, tokens: Sequence[int], parent: bytes | None) -> list[bytes]:
        n = self.layout.tokens_per_block
        out = []
        for start in range(0, len(tokens) - n + 1, n):
            parent = kv_cache_utils.hash_block_tokens(sha256_cbor, parent, tokens[start:start + n])
            out.append(parent)
        return out

    def keys(self, request: Request) -> list[tuple[bytes, int]]:
        """[(offload key, end token)] of the request's full chunks, head first."""
        n = self.layout.tokens_per_block
        ctx = self.contexts[request.context]
        prefix = self._prefix.get(request.context)
        if prefix is None:
            prefix = self._prefix[request.context] = self._block_hashes(ctx, None)
        rest = ctx[len(prefix) * n:] + tuple(request.query_tokens)
        hashes = prefix + self._block_hashes(rest, prefix[-1] if prefix else None)
        per = self.layout.blocks_per_chunk
        return [
            (make_offload_key(hashes[i], 0), (i + 1) * n)
            for i in range(per - 1, len(hashes), per)
        ]

    def prompt_tokens(self, request: Request) -> int:
        return len(self.contexts[request.context]) + len(request.query_tokens)


@dataclass
class ReplayStats:
    requests: int = 0
    prompt_tokens: int = 0
    chunks: int = 0  # full chunks the requests asked for
    hit_chunks: int = 0  # served from the CPU tier (prefix hits)
    hit_requests: int = 0
    stored_chunks: int = 0  # chunks vLLM's manager accepted for storing (keys_to_store)
    stores_refused: int = 0  # prepare_store returned None (nothing evictable)
    evicted_chunks: int = 0
    manager_s: float = 0.0  # wall seconds inside the manager (and so the policy)
    manager_calls: int = 0
    per_request_hits: list[int] = field(default_factory=list)

    @property
    def hit_rate(self) -> float:
        return self.hit_chunks / self.chunks if self.chunks else 0.0


class Replayer:
    """Drives one CPUOffloadingManager; `run(requests)` returns its stats."""

    def __init__(self, manager, hasher: ChunkHasher, *, inflight: int = 4) -> None:
        self.manager, self.hasher, self.inflight = manager, hasher, inflight
        self.stats = ReplayStats()
        self._pending: deque[tuple[ReqContext, list, list]] = deque()  # (req, loaded, stored)
        self._n = 0

    def run(self, requests: Sequence[Request]) -> ReplayStats:
        for request in requests:
            self.step(request)
        self.drain()
        return self.stats

    def step(self, request: Request) -> int:
        """One request; returns how many of its chunks hit."""
        m, s = self.manager, self.stats
        self._n += 1
        req = ReqContext(f"r{self._n}", kv_transfer_params=request.kv_transfer_params)
        keyed = self.hasher.keys(request)
        for key, end in keyed:
            req.set_offload_key_position(key, end)
        keys = [k for k, _ in keyed]
        t0 = time.perf_counter()
        m.on_new_request(req)
        hit = 0
        for key in keys:
            if m.lookup(key, req) is not LookupResult.HIT:
                break
            hit += 1
        loaded = keys[:hit]
        if loaded:
            m.prepare_load(loaded, req)
        out = m.prepare_store(keys[hit:], req) if hit < len(keys) else None
        stored = list(out.keys_to_store) if out is not None else []
        s.manager_s += time.perf_counter() - t0
        s.manager_calls += 1 + hit + bool(loaded) + (hit < len(keys))
        if out is None and hit < len(keys):
            s.stores_refused += 1
        elif out is not None:
            s.evicted_chunks += len(out.evicted_keys)
            s.stored_chunks += len(stored)
        self._pending.append((req, loaded, stored))
        while len(self._pending) > self.inflight:
            self._complete(*self._pending.popleft())
        s.requests += 1
        s.prompt_tokens += self.hasher.prompt_tokens(request)
        s.chunks += len(keys)
        s.hit_chunks += hit
        s.hit_requests += hit > 0
        s.per_request_hits.append(hit)
        return hit

    def drain(self) -> None:
        while self._pending:
            self._complete(*self._pending.popleft())

    def _complete(self, req: ReqContext, loaded: list, stored: list) -> None:
        t0 = time.perf_counter()
        if loaded:
            self.manager.complete_load(loaded, req)
        if stored:
            self.manager.complete_store(stored, req)
        self.manager.on_request_finished(req)
        self.stats.manager_s += time.perf_counter() - t0
        self.stats.manager_calls += 1 + bool(loaded) + bool(stored)
