"""The reference engine: answers questions about contexts whose KV the manager keeps.

Miss: prefill context + question in one pass, answer, then hand the context's KV (with the
snapkv window queries and the per-token scores of the ``expected`` scorer, whose query
statistics that one prefill gathers) to the manager; storing happens after the answer so it
is not on the time-to-first-token path. With ``kvzip=True`` storing also runs KVzip's
reconstruction pass (kvzip.py) for the ``kvzip`` scorer: about one more prefill of the
context per miss (BENCHMARKS.md), so it is off unless configured; without it the manager
never offers the ``kvzip`` codecs for that context and refuses a recompress to them. Hit: take the KV from the manager and prefill only the
question on top of it, its positions continuing from the original context length.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from evicctl.engine import hf, kvzip, prompt, query_stats
from evicctl.manager.kv import KV


@dataclass(frozen=True)
class TTFTBreakdown:
    """Seconds. lookup_s is the manager's own overhead (its wall time minus load and decode);
    first_token_s is the wall time from the request to the first answer token (the TTFT);
    total_s to the last answer token; store_s (misses) is spent after the answer."""

    lookup_s: float
    load_s: float
    decode_s: float
    prefill_s: float
    first_token_s: float
    total_s: float
    store_s: float = 0.0

    @property
    def ttft_s(self) -> float:
        return self.first_token_s


@dataclass(frozen=True)
class Answer:
    text: str
    ttft: TTFTBreakdown
    hit_tier: str | None  # None on a miss
    codec: str | None  # codec of the KV the answer used; None on a miss (full prefill)
    token_ids: tuple[int, ...] = ()
    context_tokens: int = 0
    kept_tokens: int = 0  # tokens of context KV the answer attended to
    question_tokens: int = 0
    # Bookkeeping for the profiler, not part of the answer itself.
    full_kv: KV | None = field(default=None, repr=False, compare=False)  # misses: the fresh KV
    logprobs: torch.Tensor | None = field(default=None, repr=False, compare=False)  # [len, vocab]

    @property
    def hit(self) -> bool:
        return self.hit_tier is not None


def _sync(device: torch.device) -> None:
    """CUDA kernels run asynchronously: wait for them before reading the clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Engine:
    """HF transformers engine over a Manager (see evicctl.manager.manager.Manager)."""

    def __init__(self, manager, model, tokenizer, device: str | torch.device = "cpu", *, kvzip: bool = False) -> None:
        """kvzip: also compute KVzip scores when storing a context (one more pass; module docstring)."""
        self.manager, self.model, self.tokenizer = manager, model, tokenizer
        self.device = torch.device(device)
        self.stop_ids = prompt.stop_token_ids(tokenizer)
        self.kvzip = kvzip

    def answer(
        self,
        context_id: str,
        context_text: str,
        question: str,
        max_new_tokens: int = 24,
        *,
        label: str | None = None,
        tenant: str = "default",
        keep_logprobs: bool = False,
    ) -> Answer:
        start = time.perf_counter()
        q_ids = prompt.question_ids(self.tokenizer, question).to(self.device)  # [1, Q]
        found = self.manager.lookup(context_id, device=self.device)
        lookup_wall_s = time.perf_counter() - start
        if found is None:
            return self._miss(context_id, context_text, q_ids, max_new_tokens, start, label, tenant)
        return self._hit(found, q_ids, max_new_tokens, start, lookup_wall_s, keep_logprobs)

    def _hit(self, found, q_ids, max_new_tokens, start, lookup_wall_s, keep_logprobs) -> Answer:
        kv: KV = found.kv if found.kv.device == self.device else found.kv.to(self.device)
        cache = hf.cache_from_kv(kv, self.model.config)
        t0 = time.perf_counter()
        result = hf.forward(self.model, q_ids, cache, start_position=kv.tokens)
        _sync(self.device)
        prefill_s = time.perf_counter() - t0
        self.manager.report_prefill(q_ids.shape[1], kv.kept_tokens, prefill_s)
        first_token_s = time.perf_counter() - start
        tokens, logprobs = hf.greedy_decode(
            self.model, result.cache, result.logits[:, -1], kv.tokens + q_ids.shape[1],
            max_new_tokens, self.stop_ids, keep_logprobs,
        )
        ttft = TTFTBreakdown(
            lookup_s=max(0.0, lookup_wall_s - found.load_s - found.decode_s),
            load_s=found.load_s,
            decode_s=found.decode_s,
            prefill_s=prefill_s,
            first_token_s=first_token_s,
            total_s=time.perf_counter() - start,
        )
        return Answer(
            text=self._text(tokens), ttft=ttft, hit_tier=found.tier, codec=found.codec,
            token_ids=tuple(tokens), context_tokens=kv.tokens, kept_tokens=kv.kept_tokens,
            question_tokens=q_ids.shape[1], logprobs=logprobs,
        )

    def _miss(self, context_id, context_text, q_ids, max_new_tokens, start, label, tenant) -> Answer:
        lookup_s = time.perf_counter() - start
        c_ids = prompt.context_ids(self.tokenizer, context_text).to(self.device)  # [1, T]
        tokens_ctx = c_ids.shape[1]
        ids = torch.cat([c_ids, q_ids], dim=1)  # [1, T + Q]
        t0 = time.perf_counter()
        window_start = max(0, tokens_ctx - hf.WINDOW)
        with (
            hf.capture_window_queries(self.model, window_start, min(hf.WINDOW, tokens_ctx)) as captured,
            query_stats.capture_query_statistics(self.model, tokens_ctx) as stats,
        ):
            result = hf.forward(self.model, ids)
        _sync(self.device)
        prefill_s = time.perf_counter() - t0
        self.manager.report_prefill(ids.shape[1], 0, prefill_s)
        first_token_s = time.perf_counter() - start
        tokens, _ = hf.greedy_decode(
            self.model, result.cache, result.logits[:, -1], ids.shape[1], max_new_tokens, self.stop_ids
        )
        answered_s = time.perf_counter() - start
        # The cache grew by the answer; its first T positions are the context's KV, exactly.
        kv = hf.kv_from_cache(result.cache, tokens_ctx, hf.stack_window(captured))
        t1 = time.perf_counter()
        kv = self.scored(kv, c_ids, stats)
        # prefill_s tells the manager what a miss costs for this context (utility of keeping it)
        self.manager.store(context_id, kv, label=label, tenant=tenant, prefill_s=prefill_s)
        store_s = time.perf_counter() - t1
        ttft = TTFTBreakdown(
            lookup_s=lookup_s, load_s=0.0, decode_s=0.0, prefill_s=prefill_s,
            first_token_s=first_token_s, total_s=answered_s, store_s=store_s,
        )
        return Answer(
            text=self._text(tokens), ttft=ttft, hit_tier=None, codec=None, token_ids=tuple(tokens),
            context_tokens=tokens_ctx, kept_tokens=tokens_ctx, question_tokens=q_ids.shape[1],
            full_kv=kv,
        )

    def scored(self, kv: KV, context_ids: torch.Tensor, stats: dict) -> KV:
        """`kv` with its per-token scores: ``expected`` from the prefill's query statistics, and
        ``kvzip`` from a reconstruction pass when the engine is configured for it."""
        kv = query_stats.with_expected_scores(kv, stats)
        return kvzip.with_kvzip_scores(self.model, kv, context_ids, self.tokenizer) if self.kvzip else kv

    def _text(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True).strip()
