"""The ``kvzip`` scorer: KVzip scores from the engine's reconstruction pass, parity with
kvpress's KVzipPress.

kvpress 0.5.5 drives KVzip itself (a context manager around the model) with the
transformers 4 keyword ``past_key_values``, which transformers 5 renamed ``cache`` inside the
decoder layers; its own code runs here unchanged but for that one keyword, passed on by a
shim around its forward hook. Its scores (``score_val``, after ``compress_post`` gives the
sinks max + 1) must equal ours, chunked or not. Its kept sets cannot: kvpress evicts the
lowest scores across every head and layer at once (``layerwise=False``) or across the heads
of a layer (``layerwise=True``), so heads keep different counts, which evicctl's KV form
(every head of a layer keeps the same count) does not represent. The closest faithful
comparison, asserted here, is the per-head top-k of kvpress's own scores.
"""

from __future__ import annotations

import dataclasses
import importlib

import pytest
import torch
from test_codecs import _kvpress_presses
from test_scorers_expected import tiny_llama

from evicctl.engine import hf, kvzip
from evicctl.manager.codecs.codec import decode, get_codec
from evicctl.manager.codecs.names import SINK_TOKENS, WINDOW_TOKENS, kept_count
from evicctl.manager.codecs.scorers import MissingScoresError

# kvpress's driver passes the cache under its transformers 4 name; transformers 5 says so
pytestmark = pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
DOC = (
    "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, "
    "a region in France. They were descended from Norse raiders and pirates from Denmark, Iceland "
    "and Norway who, under their leader Rollo, agreed to swear fealty to King Charles III. "
)


def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    tok.train_from_iterator([DOC, "Repeat the previous context exactly."] * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>")
    fast.chat_template = CHATML
    return fast


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tokenizer = tiny_tokenizer()
    path = tmp_path_factory.mktemp("tok")
    tokenizer.save_pretrained(path)
    model = tiny_llama()
    model.config.name_or_path = str(path)  # kvpress loads the tokenizer from there
    # kvpress's context: the chat template's user prefix, then the document
    ids = tokenizer.encode("<|im_start|>user\n" + DOC, return_tensors="pt", add_special_tokens=False)
    return model, tokenizer, ids


def _kvzip_press():
    _kvpress_presses()  # puts kvpress in sys.modules without running its package __init__
    return importlib.import_module("kvpress.presses.kvzip_press").KVzipPress


def kvpress_scores(model, ids: torch.Tensor, chunk_tokens: int):
    """kvpress's KVzip run on `ids`: (the prefill's KV, score_val [L, H, T] after compress_post,
    its prefix length, its suffix ids)."""
    from transformers import DynamicCache

    press = _kvzip_press()(compression_ratio=0.5, chunk_size=chunk_tokens)
    original_hook, original_post, seen = press.forward_hook, press.compress_post, {}

    def hook(module, args, kwargs, output):  # transformers 5 passes the cache as `cache`
        return original_hook(module, args, {**kwargs, "past_key_values": kwargs["cache"]}, output)

    def post(model):
        original_post(model)
        seen["scores"] = press.score_val[:, 0].float().clone()

    press.forward_hook, press.compress_post = hook, post
    cache = DynamicCache(config=model.config)
    with torch.no_grad(), press(model):
        model.model(input_ids=ids, past_key_values=cache)
        kv = hf.kv_from_cache(cache, ids.shape[1])
        seen["prefix"], seen["suffix"] = press.prefix_length, press._suffix_ids.clone()
    for layer in model.model.layers:  # kvpress's eviction marks; inert without its attention patch
        layer.self_attn.__dict__.pop("masked_key_indices", None)
    return kv, seen["scores"], seen["prefix"], seen["suffix"]


@pytest.mark.parametrize("chunk_tokens", [2048, 48])
def test_scores_equal_kvpress(setup, chunk_tokens: int) -> None:
    """One chunk (the default 2048), and a context reconstructed in chunks of 48 tokens."""
    model, tokenizer, ids = setup
    assert ids.shape[1] > 2 * 48  # several chunks below
    kv, theirs, prefix, suffix = kvpress_scores(model, ids, chunk_tokens)
    prompt = kvzip.repeat_prompt(tokenizer)
    assert prefix == kvzip.chat_prefix_tokens(tokenizer) and torch.equal(prompt.suffix, suffix)
    ours = kvzip.kvzip_scores(model, kv, ids, prompt, prefix_tokens=prefix, chunk_tokens=chunk_tokens)
    assert ours.shape == theirs.shape == (kv.layers, kv.kv_heads, kv.tokens)
    assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-6)
    assert bool((ours[..., prefix:] > 0).all())  # every reconstructed token is attended to


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_kept_tokens_are_the_per_head_top_k_of_kvpress(setup, ratio: float) -> None:
    model, tokenizer, ids = setup
    kv, theirs, prefix, _ = kvpress_scores(model, ids, 2048)
    scores = kvzip.kvzip_scores(model, kv, ids, kvzip.repeat_prompt(tokenizer), prefix_tokens=prefix)
    kv = dataclasses.replace(kv, token_scores={"kvzip": scores})
    keep = kept_count(kv.tokens, ratio)
    got = decode(get_codec(f"kvzip@{ratio}").encode(kv)).positions
    protected = torch.zeros(kv.tokens, dtype=torch.bool)
    protected[:SINK_TOKENS] = protected[kv.tokens - WINDOW_TOKENS :] = True
    want = theirs.masked_fill(protected, float("inf")).topk(keep, dim=-1).indices.sort(-1).values
    assert torch.equal(got, want)


def test_the_pass_leaves_the_kv_alone(setup) -> None:
    model, tokenizer, ids = setup
    kv, _ = hf.prefill_context(model, ids)
    before = [k.clone() for k in kv.keys]
    kvzip.kvzip_scores(model, kv, ids, kvzip.repeat_prompt(tokenizer))
    assert all(torch.equal(a, b) for a, b in zip(before, kv.keys, strict=True))
    with pytest.raises(ValueError, match="full KV"):
        kvzip.kvzip_scores(model, decode(get_codec("expected@0.5").encode(kv)), ids, kvzip.repeat_prompt(tokenizer))


def test_without_scores_the_codec_refuses(setup) -> None:
    model, _, ids = setup
    kv, _ = hf.prefill_context(model, ids)  # expected scores only: kvzip is a separate pass
    assert set(kv.token_scores) == {"expected"}
    with pytest.raises(MissingScoresError, match="kvzip needs the per-token kvzip scores"):
        get_codec("kvzip@0.5+int2").encode(kv)


def test_a_manager_offers_and_recompresses_kvzip_only_where_the_scores_are(tmp_path, run_cli) -> None:
    """`evicctl recompress CTX --codec kvzip@0.5+int2` through a running manager: done for a
    context stored with kvzip scores (from its stored copy, whose scores travelled in fp16);
    refused, one line, exit 5, for one stored without them (an engine not configured for
    kvzip), which the placer is never offered a kvzip codec for."""
    from test_codecs import make_kv

    from evicctl.config import ManagerConfig, TierConfig
    from evicctl.manager.codecs.names import parse_codec_name
    from evicctl.manager.manager import Manager
    from evicctl.manager.placer.pricing import ROW_PROFILED, option_rows

    codecs = ("none", "int4", "kvzip@0.5", "kvzip@0.5+int2", "expected@0.5+int2")
    config = ManagerConfig(
        db_path=tmp_path / "e.db", cache_dir=tmp_path / "cache", codecs=codecs, tick_s=0.02,
        tiers=(TierConfig("cpu", capacity_bytes=64 << 20), TierConfig("disk", capacity_bytes=256 << 20)),
    )  # fmt: skip
    kv = make_kv(layers=2, heads=2, tokens=300, dim=32, q_heads=4, seed=7)  # expected and kvzip scores
    plain = dataclasses.replace(kv, token_scores={"expected": kv.token_scores["expected"]})
    with Manager(config, probe=False) as m:
        m.store("zipped", kv)
        m.store("plain", plain)
        for ctx in ("zipped", "plain"):
            for codec in codecs[1:]:
                m.record_profile(ctx, codec, 0.9, 0.01, 8, "teacher-forced")
        parts = [parse_codec_name(c) for c in codecs]
        offered = {cid: option_rows(m.context(cid), codecs, parts)[ROW_PROFILED].tolist() for cid in ("zipped", "plain")}
        assert offered == {"zipped": [1.0] * 5, "plain": [1.0, 1.0, 0.0, 0.0, 1.0]}

        done = run_cli("recompress", "zipped", "--codec", "kvzip@0.5+int2", "--db", config.db_path)
        assert done.exit_code == 0, (done.stdout, done.stderr)
        placement = m.placement("zipped")
        assert placement.codec == "kvzip@0.5+int2" and placement.stored_bytes == get_codec("kvzip@0.5+int2").predict_bytes(kv)
        rounded = dataclasses.replace(kv, token_scores={n: s.half().float() for n, s in kv.token_scores.items()})
        want = decode(get_codec("kvzip@0.5+int2").encode(rounded)).positions
        assert torch.equal(m.lookup("zipped").kv.positions, want)

        refused = run_cli("recompress", "plain", "--codec", "kvzip@0.5+int2", "--db", config.db_path)
        assert refused.exit_code == 5 and len(refused.stderr.strip().splitlines()) == 1
        assert "carries no kvzip scores" in refused.stderr and m.placement("plain").codec != "kvzip@0.5+int2"
        assert run_cli("recompress", "plain", "--codec", "expected@0.5+int2", "--db", config.db_path).exit_code == 0

        # after a restart the manager does not know until a hit; a command reads the copy
        with m.state_lock:
            m.context("plain").token_scores = None
        again = run_cli("recompress", "plain", "--codec", "kvzip@0.5", "--db", config.db_path)
        assert again.exit_code == 5 and m.context("plain").token_scores == frozenset({"expected"})
