"""Measure per-context quality profiles of the real model, for the replay's quality model.

For each of N SQuAD contexts (~1k tokens, at least `questions` answerable questions), the
full KV is prefilled once, the full-KV answer to each question is generated, and every codec
of the placer's menu is scored per question with the profiler's metric (teacher-forced
exp(-KL) by default: 172 ms a question against 1.4 s for answer similarity, DESIGN §8).
Per-question scores are kept, so the replay can split them into a profiling half (what the
placer believes) and a test half (what a served request gets).

Writes JSON after every context (a partial file is usable). Heavy (~1 min a context on
2 shared cores); run it in the background:

    nohup .venv/bin/python -m evicctl.replay.measure_profiles --contexts 16 \
        --out evicctl/data/smollm2_profiles.json > /tmp/profiles.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from evicctl.config import DEFAULT_CODECS, default_cache_dir

PROFILES_FORMAT = 1


def measure(n_contexts: int, questions: int, out: Path, cache_dir: Path, seed: int, threads: int | None) -> None:
    import torch

    from evicctl.engine import hf, prompt
    from evicctl.engine.data import load_contexts
    from evicctl.engine.model import load_model
    from evicctl.engine.profiler import Profiler, ProfilerSettings

    if threads:
        torch.set_num_threads(threads)
    model, tokenizer = load_model(cache_dir, "cpu")
    contexts = load_contexts(tokenizer, n_contexts, hotpot_fraction=0.0, min_questions=questions, seed=seed)
    settings = ProfilerSettings(questions=questions, seed=seed)
    profiler = Profiler(None, model, tokenizer, DEFAULT_CODECS, settings)
    doc = {
        "format": PROFILES_FORMAT,
        "model": "SmolLM2-135M-Instruct (fp32, CPU)",
        "metric": settings.metric,
        "max_new_tokens": settings.max_new_tokens,
        "questions_per_context": questions,
        "codecs": list(DEFAULT_CODECS),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "contexts": [],
    }
    for context in contexts:
        start = time.perf_counter()
        ids = prompt.context_ids(tokenizer, context.text)  # [1, T]
        t0 = time.perf_counter()
        kv, _ = hf.prefill_context(model, ids)
        prefill_s = time.perf_counter() - t0
        picked = list(context.questions)[:questions]
        scores = profiler.measure(context, kv, picked)
        doc["contexts"].append(
            {
                "id": context.id,
                "source": context.source,
                "tokens": int(ids.shape[1]),
                "prefill_s": round(prefill_s, 4),
                "questions": [qa.id for qa in picked],
                "scores": {codec: [round(float(s), 5) for s in vals] for codec, vals in scores.items()},
            }
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(out)
        print(f"{context.id}: {ids.shape[1]} tokens, {time.perf_counter() - start:.1f} s", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, default=16)
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "data" / "smollm2_profiles.json")
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    measure(args.contexts, args.questions, args.out, args.cache_dir, args.seed, args.threads)


if __name__ == "__main__":
    from evicctl.entry import keep_checkout_root_off_path

    keep_checkout_root_off_path()
    main()
