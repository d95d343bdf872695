"""End to end on the real packaged model (SmolLM2-135M-Instruct from the GGUF) and real data.

Converts the GGUF once into the user's cache dir (a cache: reused by the demo), then works
in tmp_path. About a minute on 2 idle cores.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e

LIGHT, HEAVY = "int8", "knorm@0.75"
NOISE = 0.05  # one question's teacher-forced score varies by more than this between codecs of one family


@pytest.fixture(scope="module")
def real():
    from evicctl.config import default_cache_dir
    from evicctl.engine.data import load_contexts
    from evicctl.engine.model import converted_folder, load_model

    cache = default_cache_dir()
    model, tokenizer = load_model(cache)
    (context,) = load_contexts(tokenizer, 1, hotpot_fraction=0.0, seed=3)
    return model, tokenizer, context, converted_folder(cache)


def test_store_compress_answer_and_profile(real, tmp_path):
    from evicctl.config import ManagerConfig, TierConfig
    from evicctl.engine import prompt
    from evicctl.engine.engine import Engine
    from evicctl.engine.profiler import Profiler, ProfilerSettings, read_stored_profiles
    from evicctl.manager.codecs.codec import get_codec
    from evicctl.manager.manager import Manager

    model, tokenizer, context, _ = real
    qa = context.test[0]
    config = ManagerConfig(
        db_path=tmp_path / "e.db", cache_dir=tmp_path, codecs=("none", LIGHT, HEAVY),
        tiers=(TierConfig("cpu", capacity_bytes=1 << 30),),
    )
    with Manager(config) as manager:
        engine = Engine(manager, model, tokenizer)
        miss = engine.answer(context.id, context.text, qa.question)
        assert not miss.hit and miss.text and manager.known(context.id)
        hit = engine.answer(context.id, context.text, qa.question)
        assert hit.hit and hit.codec == "none" and hit.text == miss.text  # stored KV reproduces the answer
        assert hit.ttft.prefill_s < miss.ttft.prefill_s  # only the question was prefilled

        kv = miss.full_kv
        prof = Profiler(manager, model, tokenizer, ("none", LIGHT, HEAVY), ProfilerSettings(questions=1))
        q_ids = prompt.question_ids(tokenizer, qa.question)
        answers = {}
        for name in (LIGHT, HEAVY):
            codec = get_codec(name)
            compressed = codec.decode(codec.encode(kv))
            assert compressed.kept_tokens <= kv.tokens
            answers[name] = prof._text(prof.generate(compressed, q_ids))
            assert answers[name]  # a real answer from each compressed KV

        scores = prof.measure(context, kv, [qa])
        assert scores["none"] == [1.0]
        assert 0.0 < scores[HEAVY][0] <= scores[LIGHT][0] + NOISE
        prof.publish([context.id])
        manager.flush()
    rows = {r["codec"]: r for r in read_stored_profiles(tmp_path / "e.db")}
    assert rows["none"]["quality"] == 1.0 and rows["none"]["n_queries"] == 1
    assert rows[HEAVY]["raw_mean"] == pytest.approx(scores[HEAVY][0])


def test_headless_demo_runs_to_its_summary(real, tmp_path):
    from rich.console import Console

    from evicctl.engine.demo import run_demo
    from evicctl.engine.model import converted_folder

    _, _, _, folder = real
    cache = tmp_path / "cache"
    converted_folder(cache).parent.mkdir(parents=True)
    converted_folder(cache).symlink_to(folder, target_is_directory=True)  # no second conversion
    console = Console(record=True, width=120)
    summary = run_demo(headless=True, contexts=2, requests=4, seed=1, db_path=tmp_path / "d.db",
                       cache_dir=cache, rate_rps=2.0, max_new_tokens=8, console=console)
    out = console.export_text()
    assert summary.requests == 4 and summary.misses >= 1
    assert summary.misses + sum(summary.hits_by_tier.values()) == 4
    assert "evicctl demo summary" in out and "TTFT" in out and "contexts at" in out
    assert summary.first_request_s is not None and summary.first_request_s < 60
