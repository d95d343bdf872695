"""The demo's serving loop on the tiny model with a real Manager and store: requests are
served in arrival order, misses admit and queue profiles, idle time runs them, the summary
adds up; tier settings are checked."""

from __future__ import annotations

import time

import pytest
from rich.console import Console

from evicctl.config import ManagerConfig, TierConfig, per_store_disk_dir
from evicctl.engine.data import QA, Context, split_questions
from evicctl.engine.demo import DemoRun, _tier_configs, print_summary
from evicctl.engine.engine import Engine
from evicctl.engine.priors import default_priors
from evicctl.engine.profiler import Profiler, ProfilerSettings, read_stored_profiles
from evicctl.engine.workload import zipf_poisson
from evicctl.errors import UsageError

CODECS = ("none", "int8", "knorm@0.5")


def _contexts() -> list[Context]:
    out = []
    for i, topic in enumerate(["Normans", "Normandy", "France"]):
        text = f"The {topic} were the people who in the 10th and 11th centuries gave their name to Normandy. " * 3
        qas = [QA(f"{i}-{j}", f"Where is {topic} {j}?", ("France",)) for j in range(4)]
        prof, test = split_questions(f"c{i}", qas, 0)
        out.append(Context(f"c{i}", topic, "squad", text, 60, prof, test))
    return out


def test_demo_run_serves_profiles_when_idle_and_summarises(tiny_model, tiny_tokenizer, tmp_path):
    from evicctl.manager.manager import Manager

    config = ManagerConfig(db_path=tmp_path / "d.db", cache_dir=tmp_path, codecs=CODECS,
                           tiers=(TierConfig("cpu", capacity_bytes=1 << 24),))
    contexts = _contexts()
    with Manager(config) as manager:
        priors = {c: s for c, s in default_priors().items() if c in CODECS}
        profiler = Profiler(manager, tiny_model, tiny_tokenizer, manager.codec_names,
                            ProfilerSettings(questions=1, max_new_tokens=4), priors)
        engine = Engine(manager, tiny_model, tiny_tokenizer)
        workload = zipf_poisson(contexts, rate_rps=5.0, requests=12, seed=0)
        run = DemoRun(engine, profiler, contexts, workload, 4, time.monotonic(), None)
        seen = []
        run.on_served = seen.append
        summary = run.run()
        profiler.run_all()
        assert [s.index for s in seen] == list(range(12))
        first = {}
        for s in seen:
            first.setdefault(s.context_id, s)
        assert all(s.hit_tier is None for s in first.values())  # a context's first request is a miss
        # later ones hit unless the placer dropped the context (for this tiny model a miss is cheap)
        assert sum(summary.hits_by_tier.values()) == 12 - summary.misses
        assert summary.first_request_s is not None
        assert all(s.quality is not None and 0 < s.quality <= 1 for s in summary.served)
        assert all(profiler.is_profiled(c) for c in {s.context_id for s in seen})
    rows = read_stored_profiles(tmp_path / "d.db")
    assert {r["codec"] for r in rows} == set(CODECS) and all(r["n_queries"] >= 1 for r in rows)
    console = Console(record=True, width=120)
    print_summary(summary, console)
    text = console.export_text()
    assert "requests" in text and "misses" in text and "TTFT hit" in text


def test_demo_stops_when_asked(tiny_model, tiny_tokenizer, dict_manager):
    profiler = Profiler(dict_manager, tiny_model, tiny_tokenizer, ("none",), ProfilerSettings(questions=1))
    engine = Engine(dict_manager, tiny_model, tiny_tokenizer)
    run = DemoRun(engine, profiler, _contexts(), zipf_poisson(_contexts(), rate_rps=0.01, requests=5, seed=0),
                  4, time.monotonic(), None)
    run.on_served = lambda served: run.stop.set()
    summary = run.run()
    assert summary.requests == 0 and len(summary.served) == 1  # stopped while waiting for the 2nd


def test_tier_configs(tmp_path):
    disk = per_store_disk_dir(tmp_path / "a.db", tmp_path)
    assert disk.parent == tmp_path / "disk" and disk != per_store_disk_dir(tmp_path / "b.db", tmp_path)
    cpu = _tier_configs("cpu", None, None, None, disk)
    assert [t.name for t in cpu] == ["cpu", "disk"] and cpu[1].path == disk
    gpu = _tier_configs("cuda", 1 << 20, 2 << 20, 3 << 20, tmp_path)
    assert [(t.name, t.capacity_bytes) for t in gpu] == [("gpu", 1 << 20), ("cpu", 2 << 20), ("disk", 3 << 20)]
    with pytest.raises(UsageError, match="CUDA"):
        _tier_configs("cpu", 1 << 20, None, None, tmp_path)
