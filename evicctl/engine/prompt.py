"""One prompt layout shared by serving, profiling and benchmarks.

The context part must be a token prefix of every prompt that asks about it, so we render
the model's chat template once with a marker between the document and the question, split
the text there, and tokenize the two halves separately: the stored KV of the first half is
then exactly what a full prompt would have computed for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

SYSTEM_PROMPT = "Answer the question about the document in a few words."
_MARK = "\x00QUESTION\x00"


@dataclass(frozen=True)
class PromptIds:
    context: torch.Tensor  # [1, T] int64: chat header + document
    question: torch.Tensor  # [1, Q] int64: question + assistant header


@lru_cache(maxsize=8)
def split_template(tokenizer) -> tuple[str, str, str]:
    """(before_document, between, after_question) of the chat template around our marker."""
    rendered = tokenizer.apply_chat_template(
        [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"Document:\n{_MARK}doc{_MARK}"},
        ],
        tokenize=False,
        add_generation_prompt=True,
    )
    head, _, tail = rendered.partition(_MARK)
    _, _, tail = tail.partition(_MARK)
    return head, "\n\nQuestion: ", tail


def encode(tokenizer, text: str) -> torch.Tensor:
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    return ids.to(torch.long)  # [1, N]


def context_ids(tokenizer, context_text: str) -> torch.Tensor:
    """[1, T]: the reusable prefix whose KV is stored."""
    head, _, _ = split_template(tokenizer)
    return encode(tokenizer, head + context_text)


def question_ids(tokenizer, question: str) -> torch.Tensor:
    """[1, Q]: what is prefilled on top of a stored context."""
    _, between, tail = split_template(tokenizer)
    return encode(tokenizer, between + question.strip() + tail)


def prompt_ids(tokenizer, context_text: str, question: str) -> PromptIds:
    return PromptIds(context_ids(tokenizer, context_text), question_ids(tokenizer, question))


def stop_token_ids(tokenizer) -> frozenset[int]:
    """Tokens that end an answer: the chat end-of-turn and the tokenizer's eos."""
    ids = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
    return frozenset(i for i in ids if isinstance(i, int) and i >= 0)
