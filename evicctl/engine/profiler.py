"""Quality profiles: per context and codec, measured on the context's profiling questions,
shrunk toward the codec's pooled mean (shrinkage.py), sharpened by sampled served requests.

Work is split into small units (one reference answer, or one codec over a context's
questions: ~0.2-1.5 s each on 2 cores) run by `step()` when the engine is idle, so
profiling never blocks a request (the paper profiles when the GPU has idle time).
Jobs are generators that yield after each unit.

Online: a sampled hit served from a compressed KV is scored against a full recompute of
the same answer (one forward of context + question + answer); its exp(-KL) joins the
context's measurements and goes to the manager (record_online_quality), which keeps the
running mean, writes a "reprofile" event when it falls config.reprofile_drop below the
profile (the paper's 0.3), and says so: the context is then profiled again on fresh
questions.
"""

from __future__ import annotations

import collections
import logging
import random
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from evicctl.engine import hf, kvzip, prompt
from evicctl.engine.data import QA, Context
from evicctl.engine.quality import (
    METRICS,
    AnswerSimilarity,
    kl_quality,
    teacher_forced_logprobs,
    token_f1,
)
from evicctl.engine.shrinkage import CodecStats, Estimate, Tally, codec_stats, estimate
from evicctl.errors import NoSuchContextError, UsageError
from evicctl.manager.codecs.codec import get_codec
from evicctl.manager.codecs.scorers import available_scorers
from evicctl.manager.kv import KV

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProfilerSettings:
    metric: str = "teacher-forced"
    questions: int = 4  # profiling questions per pass over a context
    max_new_tokens: int = 24
    online_sample_rate: float = 0.25  # share of compressed hits scored online
    max_held_kvs: int = 2  # queued jobs that keep their full KV (46 MB per 1k tokens, fp32)
    max_online_queue: int = 8
    seed: int = 0
    kvzip: bool = False  # compute KVzip scores when the profiler prefills a context itself (as the engine)

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise UsageError(f"unknown quality metric {self.metric!r}; valid: {', '.join(METRICS)}")


@dataclass(frozen=True)
class Reference:
    """The full-KV answer to one question and what it needs for scoring."""

    qa: QA
    question_ids: torch.Tensor  # [1, Q]
    answer_ids: list[int]
    text: str
    logprobs: torch.Tensor | None  # [A+1, vocab] teacher-forced on the full KV


class Profiler:
    def __init__(
        self,
        manager,
        model,
        tokenizer,
        codecs: Iterable[str],
        settings: ProfilerSettings = ProfilerSettings(),
        priors: dict[str, CodecStats] | None = None,
        similarity: AnswerSimilarity | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.manager, self.model, self.tokenizer = manager, model, tokenizer
        self.codecs = tuple(codecs)
        self.settings = settings
        self.priors = dict(priors or {})
        self.similarity = similarity or (AnswerSimilarity() if settings.metric == "answer-similarity" else None)
        self.device = torch.device(device)
        self.stop_ids = prompt.stop_token_ids(tokenizer)
        self.tallies: dict[str, dict[str, Tally]] = {c: {} for c in self.codecs}  # codec -> ctx -> tally
        self.f1: dict[tuple[str, str], Tally] = {}  # (ctx, codec) -> F1 vs gold
        self.questions_used: dict[str, int] = {}
        self.known: dict[str, Context] = {}
        self.units_done = 0
        self.reprofiles = 0
        self._jobs: collections.deque[Iterator[None]] = collections.deque()
        self._queued: set[str] = set()
        self._held_kvs = 0
        self._online_queued = 0
        self._rng = random.Random(settings.seed)

    # ------------------------------------------------------------ queries

    def stats(self, codec: str) -> CodecStats | None:
        return codec_stats(self.tallies[codec], self.priors.get(codec))

    def estimate(self, context_id: str, codec: str) -> Estimate | None:
        stats = self.stats(codec)
        return None if stats is None else estimate(self.tallies[codec].get(context_id, Tally()), stats)

    def is_profiled(self, context_id: str) -> bool:
        return any(self.tallies[c].get(context_id, Tally()).n for c in self.codecs if c != "none")

    @property
    def pending(self) -> int:
        return len(self._jobs)

    @property
    def queued(self) -> frozenset[str]:
        """Contexts with a profile job waiting or running."""
        return frozenset(self._queued)

    # ------------------------------------------------------------ scheduling

    def admitted(self, context: Context, kv: KV | None = None) -> None:
        """A context was stored: publish pooled estimates now, profile it when idle."""
        self.known[context.id] = context
        self.publish([context.id])
        if not self.is_profiled(context.id):
            self.enqueue(context, kv)

    def enqueue(self, context: Context, kv: KV | None = None) -> bool:
        if context.id in self._queued:
            return False
        self.known[context.id] = context
        hold = kv is not None and self._held_kvs < self.settings.max_held_kvs
        self._held_kvs += hold
        self._queued.add(context.id)
        self._jobs.append(self._profile_job(context, kv if hold else None, hold))
        return True

    def sample(self, context: Context, qa: QA, answer) -> bool:
        """Maybe score a served answer online (hits on a lossy codec only)."""
        if (
            not answer.hit
            or answer.codec in (None, "none")
            or answer.logprobs is None
            or not answer.token_ids
            or self._online_queued >= self.settings.max_online_queue
            or self._rng.random() >= self.settings.online_sample_rate
        ):
            return False
        self._online_queued += 1
        self._jobs.append(self._online_job(context, qa, answer))
        return True

    def step(self) -> bool:
        """Run one unit of queued work; False when there is none."""
        while self._jobs:
            try:
                next(self._jobs[0])
                self.units_done += 1
                return True
            except StopIteration:
                self._jobs.popleft()
        return False

    def run_all(self) -> None:
        while self.step():
            pass

    # ------------------------------------------------------------ jobs

    def _profile_job(self, context: Context, kv: KV | None, held: bool) -> Iterator[None]:
        try:
            if kv is None:
                ids = prompt.context_ids(self.tokenizer, context.text).to(self.device)
                kv, _ = hf.prefill_context(self.model, ids)
                if self.settings.kvzip:
                    kv = kvzip.with_kvzip_scores(self.model, kv, ids, self.tokenizer)
                yield
            questions = self._next_questions(context)
            refs = []
            for qa in questions:
                refs.append(self.reference(kv, qa))
                self._add_f1(context.id, "none", refs[-1].text, qa)
                yield
            for codec in self.scorable(kv):
                for score in self.score_codec(kv, codec, refs, context.id):
                    self._add(context.id, codec, score)
                yield
            self.publish([context.id])
            self.publish([c for c in self.known if c != context.id])  # pooled stats moved
        finally:
            self._queued.discard(context.id)
            self._held_kvs -= held

    def _online_job(self, context: Context, qa: QA, answer) -> Iterator[None]:
        try:
            served = answer.logprobs  # [A, vocab]: the distributions that chose each token
            c_ids = prompt.context_ids(self.tokenizer, context.text)
            q_ids = prompt.question_ids(self.tokenizer, qa.question)
            a_ids = torch.tensor([list(answer.token_ids[:-1])], dtype=torch.long)
            ids = torch.cat([c_ids, q_ids, a_ids], dim=1).to(self.device)  # [1, T + Q + A - 1]
            logits = hf.forward(self.model, ids, keep_logits=len(answer.token_ids)).logits[0]
            score = kl_quality(torch.log_softmax(logits.float(), -1), served.to(logits.device))
            self._add(context.id, answer.codec, score)
            self._add_f1(context.id, answer.codec, answer.text, qa)
            self.publish([context.id], codecs=[answer.codec])
            self._report_online(context, answer.codec, score)
            yield
        finally:
            self._online_queued -= 1

    def _report_online(self, context: Context, codec: str, score: float) -> None:
        try:
            stale = self.manager.record_online_quality(context.id, codec, score)
        except NoSuchContextError:
            return
        if stale and self.enqueue(context):
            log.info("re-profiling %s: online quality of %s fell below its profile", context.id, codec)
            self.reprofiles += 1

    def reprofile_stale(self) -> int:
        """Queue the contexts the manager calls stale (costliest first); returns how many."""
        queued = 0
        for context_id in self.manager.reprofile_candidates():
            context = self.known.get(context_id)
            if context is not None and self.enqueue(context):
                self.reprofiles += 1
                queued += 1
        return queued

    def _next_questions(self, context: Context) -> list[QA]:
        pool = list(context.profiling) or list(context.test)
        start = self.questions_used.get(context.id, 0)
        n = min(self.settings.questions, len(pool))
        self.questions_used[context.id] = start + n
        return [pool[(start + i) % len(pool)] for i in range(n)]

    # ------------------------------------------------------------ measuring (also used directly)

    def reference(self, kv: KV, qa: QA) -> Reference:
        q_ids = prompt.question_ids(self.tokenizer, qa.question).to(self.device)
        tokens = self.generate(kv, q_ids)
        logprobs = teacher_forced_logprobs(self.model, kv, q_ids, tokens) if self.settings.metric == "teacher-forced" else None
        return Reference(qa, q_ids, tokens, self._text(tokens), logprobs)

    def generate(self, kv: KV, question_ids: torch.Tensor) -> list[int]:
        result = hf.forward(self.model, question_ids, hf.cache_from_kv(kv, self.model.config), kv.tokens)
        tokens, _ = hf.greedy_decode(
            self.model, result.cache, result.logits[:, -1], kv.tokens + question_ids.shape[1],
            self.settings.max_new_tokens, self.stop_ids,
        )
        return tokens

    def scorable(self, kv: KV) -> list[str]:
        """The codecs this KV can be encoded with: a codec whose scorer needs side data the KV
        lacks (kvzip scores of an engine not configured for them) is not measured; the manager
        never offers it for that context."""
        have = available_scorers(kv)
        return [c for c in self.codecs if get_codec(c).scorer in (None, *have)]

    def score_codec(self, kv: KV, codec: str, refs: list[Reference], context_id: str | None = None) -> list[float]:
        """Quality of `codec` on this KV for each reference question, by the configured metric."""
        c = get_codec(codec)
        compressed = c.decode(c.encode(kv), self.device)
        if self.settings.metric == "teacher-forced":
            return [
                kl_quality(r.logprobs, teacher_forced_logprobs(self.model, compressed, r.question_ids, r.answer_ids))
                for r in refs
            ]
        texts = [self._text(self.generate(compressed, r.question_ids)) for r in refs]
        if context_id is not None:
            for r, text in zip(refs, texts, strict=True):
                self._add_f1(context_id, codec, text, r.qa)
        return self.similarity.scores(texts, [r.text for r in refs])

    def measure(self, context: Context, kv: KV, questions: list[QA]) -> dict[str, list[float]]:
        """Synchronously score every codec on `questions` (bench and tests); adds to tallies."""
        self.known[context.id] = context
        refs = [self.reference(kv, qa) for qa in questions]
        for r in refs:
            self._add_f1(context.id, "none", r.text, r.qa)
        out = {}
        for codec in self.scorable(kv):
            out[codec] = self.score_codec(kv, codec, refs, context.id)
            for score in out[codec]:
                self._add(context.id, codec, score)
        return out

    # ------------------------------------------------------------ bookkeeping

    def _add(self, context_id: str, codec: str, score: float) -> None:
        per = self.tallies.setdefault(codec, {})
        per[context_id] = per.get(context_id, Tally()).add(score)

    def _add_f1(self, context_id: str, codec: str, text: str, qa: QA) -> None:
        f1 = token_f1(text, qa.answers)
        if f1 is not None:
            self.f1[(context_id, codec)] = self.f1.get((context_id, codec), Tally()).add(f1)

    def publish(self, context_ids: Iterable[str], codecs: Iterable[str] | None = None) -> int:
        """Send current estimates to the manager (which writes them to the store)."""
        sent = 0
        for codec in codecs or self.codecs:
            stats = self.stats(codec)
            if stats is None:
                continue
            for ctx in context_ids:
                est = estimate(self.tallies[codec].get(ctx, Tally()), stats)
                f1 = self.f1.get((ctx, codec))
                try:
                    self.manager.record_profile(
                        ctx, codec, est.quality, est.sd, est.n, self.settings.metric,
                        raw_mean=est.raw_mean, f1=None if f1 is None else f1.mean,
                    )
                except NoSuchContextError:  # forgotten by the manager meanwhile
                    continue
                sent += 1
        return sent

    def load_stored(self, rows: Iterable[dict]) -> int:
        """Re-read profiles a previous run stored (their means and counts, not spreads)."""
        loaded = 0
        for row in rows:
            if row.get("metric") != self.settings.metric or row.get("codec") not in self.tallies:
                continue
            if not row.get("n_queries") or row.get("raw_mean") is None:
                continue
            ctx, codec = row["context_id"], row["codec"]
            self.tallies[codec][ctx] = Tally.summary(float(row["raw_mean"]), int(row["n_queries"]))
            if row.get("f1") is not None:
                self.f1[(ctx, codec)] = Tally.summary(float(row["f1"]), int(row["n_queries"]))
            loaded += 1
        return loaded

    def _text(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True).strip()


def read_stored_profiles(db_path: Path | str) -> list[dict]:
    """Profile rows of an existing store (read-only); [] if there is no store yet."""
    path = Path(db_path)
    if not path.is_file():
        return []
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute("SELECT * FROM profiles")]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        log.warning("could not read stored profiles from %s: %s", path, exc)
        return []
