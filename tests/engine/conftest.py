"""Fixtures for engine tests: a tiny random-initialised Llama and a tiny byte-level tokenizer
with a ChatML template, so tests run in milliseconds without the packaged model."""

from __future__ import annotations

import pytest
from tiny_llama import make_tiny_model

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy.",
    "Question: Answer: Document: In what country is Normandy located? France.",
    "A tiny tokenizer for tests of the engine, the profiler and the demo.",
] * 4


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>"
    )
    fast.chat_template = CHATML
    return fast


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer):
    return make_tiny_model(len(tiny_tokenizer))


class DictManager:
    """The Manager API surface the engine uses, over a dict: a stand-in where a test is
    about the engine, not placement (the real Manager has its own tests)."""

    def __init__(self) -> None:
        self.kvs: dict = {}
        self.prefills: list[tuple[int, int, float]] = []
        self.profiles: list[dict] = []
        self.stored: list[str] = []
        self.codec_of: dict[str, str] = {}  # context -> codec name its KV is labelled with
        self.online: list[tuple[str, str, float]] = []
        self.stale: set[str] = set()
        self.stale_below = 0.0

    def lookup(self, context_id, device=None):
        from types import SimpleNamespace

        kv = self.kvs.get(context_id)
        if kv is None:
            return None
        return SimpleNamespace(kv=kv, tier="cpu", codec=self.codec_of.get(context_id, "none"), stored_bytes=kv.nbytes, load_s=0.0, decode_s=0.0)

    def store(self, context_id, kv, *, label=None, tenant="default", prefill_s=None):
        self.kvs[context_id] = kv
        self.stored.append(context_id)

    def report_prefill(self, new_tokens, cached_tokens, seconds):
        self.prefills.append((new_tokens, cached_tokens, seconds))

    def record_profile(self, context_id, codec, quality, quality_sd, n_queries, metric, raw_mean=None, f1=None):
        self.profiles.append(dict(context_id=context_id, codec=codec, quality=quality, quality_sd=quality_sd,
                                  n_queries=n_queries, metric=metric, raw_mean=raw_mean, f1=f1))

    def known(self, context_id):
        return context_id in self.kvs

    def record_online_quality(self, context_id, codec, quality):
        """Stale once a measurement falls below `stale_below` (a test sets it)."""
        self.online.append((context_id, codec, quality))
        if quality < self.stale_below:
            self.stale.add(context_id)
        return context_id in self.stale

    def reprofile_candidates(self):
        return sorted(self.stale)


@pytest.fixture
def dict_manager():
    return DictManager()
