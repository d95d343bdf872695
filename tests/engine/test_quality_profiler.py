"""Profiler on the tiny model with the real codecs: `none` scores exactly 1, lossy codecs
less; jobs run in small steps; estimates reach the manager; online samples and re-profiling;
stored profiles are re-read."""

from __future__ import annotations

import pytest
import torch

from evicctl.engine import hf, prompt
from evicctl.engine.data import QA, Context
from evicctl.engine.engine import Engine
from evicctl.engine.profiler import Profiler, ProfilerSettings, read_stored_profiles
from evicctl.engine.quality import kl_quality, token_f1
from evicctl.engine.shrinkage import CodecStats
from evicctl.errors import UsageError

DOC = "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy. " * 4
QAS = tuple(QA(f"q{i}", q, ("France",)) for i, q in enumerate(
    ["In what country is Normandy located?", "When were the Normans in Normandy?", "Who gave their name?"]
))
CONTEXT = Context("doc", "doc", "squad", DOC, 80, QAS[:2], QAS[2:])
CODECS = ("none", "int8", "knorm@0.5", "snapkv@0.75+int4")


def _profiler(model, tok, manager, **kw):
    return Profiler(manager, model, tok, CODECS, ProfilerSettings(questions=2, max_new_tokens=6, **kw))


def test_kl_quality_bounds():
    p = torch.log_softmax(torch.randn(3, 10), -1)
    assert kl_quality(p, p) == 1.0
    assert 0.0 < kl_quality(p, torch.log_softmax(torch.randn(3, 10), -1)) < 1.0
    with pytest.raises(ValueError):
        kl_quality(p, p[:2])


def test_token_f1():
    assert token_f1("The France", ("France",)) == 1.0
    assert token_f1("north of France", ("France",)) == pytest.approx(0.5)
    assert token_f1("x", ()) is None


def test_measure_none_is_exactly_one_and_lossy_is_lower(tiny_model, tiny_tokenizer, dict_manager):
    prof = _profiler(tiny_model, tiny_tokenizer, dict_manager)
    kv, _ = hf.prefill_context(tiny_model, prompt.context_ids(tiny_tokenizer, DOC))
    scores = prof.measure(CONTEXT, kv, list(QAS[:2]))
    assert scores["none"] == [1.0, 1.0]
    assert all(0.0 < s < 1.0 for s in scores["snapkv@0.75+int4"])
    assert min(scores["int8"]) > max(scores["snapkv@0.75+int4"])  # heavier loses more
    assert prof.tallies["knorm@0.5"]["doc"].n == 2


def test_jobs_run_in_steps_and_publish(tiny_model, tiny_tokenizer, dict_manager):
    prof = _profiler(tiny_model, tiny_tokenizer, dict_manager)
    prof.admitted(CONTEXT)  # no KV held: the job prefills it first
    assert dict_manager.profiles == []  # no prior, no data: nothing to publish yet
    steps = 0
    while prof.step():
        steps += 1
    # prefill, 2 reference answers, one unit per codec
    assert steps == 1 + 2 + len(CODECS) and prof.pending == 0
    rows = {p["codec"]: p for p in dict_manager.profiles if p["context_id"] == "doc"}
    assert set(rows) == set(CODECS) and rows["none"]["quality"] == 1.0
    assert rows["int8"]["n_queries"] == 2 and rows["int8"]["metric"] == "teacher-forced"
    assert prof.is_profiled("doc") and prof.enqueue(CONTEXT)  # re-enqueue allowed once done


def test_priors_publish_pooled_estimates_before_profiling(tiny_model, tiny_tokenizer, dict_manager):
    priors = {"int8": CodecStats(0.95, 0.001, 0.002, 10, 0.0003)}
    prof = Profiler(dict_manager, tiny_model, tiny_tokenizer, ("int8",), ProfilerSettings(questions=1), priors)
    prof.admitted(CONTEXT)
    (row,) = dict_manager.profiles
    assert row["quality"] == pytest.approx(0.95) and row["n_queries"] == 0 and row["quality_sd"] > 0


def test_online_sample_scores_reports_and_triggers_reprofile(tiny_model, tiny_tokenizer, dict_manager):
    engine = Engine(dict_manager, tiny_model, tiny_tokenizer)
    prof = _profiler(tiny_model, tiny_tokenizer, dict_manager, online_sample_rate=1.0)
    engine.answer("doc", DOC, QAS[2].question, max_new_tokens=6)
    prof.known["doc"] = CONTEXT
    kv = dict_manager.kvs["doc"]
    from evicctl.manager.codecs.codec import get_codec

    codec = get_codec("snapkv@0.75+int4")
    dict_manager.kvs["doc"] = codec.decode(codec.encode(kv))
    dict_manager.codec_of["doc"] = codec.name
    ans = engine.answer("doc", DOC, QAS[2].question, max_new_tokens=6, keep_logprobs=True)
    assert ans.codec == "snapkv@0.75+int4"
    dict_manager.stale_below = 1.0  # the manager will call this profile stale
    assert prof.sample(CONTEXT, QAS[2], ans)
    assert prof.step()
    tally = prof.tallies["snapkv@0.75+int4"]["doc"]
    assert tally.n == 1 and 0.0 < tally.mean < 1.0
    assert dict_manager.online == [("doc", "snapkv@0.75+int4", tally.mean)]
    assert prof.reprofiles == 1 and "doc" in prof.queued
    assert prof.reprofile_stale() == 0  # already queued: not twice
    prof.run_all()
    assert "doc" not in prof.queued


def test_samples_only_lossy_hits(tiny_model, tiny_tokenizer, dict_manager):
    engine = Engine(dict_manager, tiny_model, tiny_tokenizer)
    prof = _profiler(tiny_model, tiny_tokenizer, dict_manager, online_sample_rate=1.0)
    miss = engine.answer("doc", DOC, QAS[2].question, max_new_tokens=4)
    hit = engine.answer("doc", DOC, QAS[2].question, max_new_tokens=4, keep_logprobs=True)
    assert not prof.sample(CONTEXT, QAS[2], miss) and not prof.sample(CONTEXT, QAS[2], hit)  # miss; "none"


def test_load_stored_rows_and_read_from_sqlite(tmp_path, tiny_model, tiny_tokenizer, dict_manager):
    import sqlite3

    db = tmp_path / "s.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE profiles (context_id, codec, metric, quality, quality_sd, raw_mean, f1, n_queries, measured_at)")
    conn.execute("INSERT INTO profiles VALUES ('doc', 'int8', 'teacher-forced', 0.9, 0.05, 0.92, 0.5, 4, 0)")
    conn.execute("INSERT INTO profiles VALUES ('doc', 'int8', 'answer-similarity', 0.5, 0.05, 0.5, NULL, 4, 0)")
    conn.commit()
    conn.close()
    rows = read_stored_profiles(db)
    assert len(rows) == 2 and read_stored_profiles(tmp_path / "missing.db") == []
    prof = _profiler(tiny_model, tiny_tokenizer, dict_manager)
    assert prof.load_stored(rows) == 1
    assert prof.is_profiled("doc") and prof.tallies["int8"]["doc"].mean == pytest.approx(0.92)


def test_answer_similarity_with_the_packaged_minilm():
    from evicctl.engine.quality import AnswerSimilarity

    sim = AnswerSimilarity()
    same, close, far = sim.scores(
        ["in France", "The Normans came from Normandy", "photosynthesis in plants"],
        ["in France", "Normandy was home of the Normans", "The Normans came from Normandy"],
    )
    assert same == 1.0 and 0.5 < close < 1.0 and far < close


def test_answer_similarity_metric_profiles(tiny_model, tiny_tokenizer, dict_manager):
    prof = Profiler(dict_manager, tiny_model, tiny_tokenizer, ("none", "knorm@0.5"),
                    ProfilerSettings(metric="answer-similarity", questions=1, max_new_tokens=4))
    kv, _ = hf.prefill_context(tiny_model, prompt.context_ids(tiny_tokenizer, DOC))
    scores = prof.measure(CONTEXT, kv, [QAS[0]])
    assert scores["none"] == [1.0] and 0.0 <= scores["knorm@0.5"][0] <= 1.0
    with pytest.raises(UsageError, match="metric"):
        ProfilerSettings(metric="bleu")
