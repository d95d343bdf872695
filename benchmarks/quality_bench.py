"""Quality per codec on the real model, and how well a few questions predict a context's quality.

Part A: every codec of the default menu on N contexts (SQuAD chunks + HotpotQA examples of
~1k tokens), teacher-forced exp(-KL) on the first `--questions` questions of each: mean
and spread per codec (the table the placer relies on), with profiling cost per unit.
Part B (held-out study): on the SQuAD contexts with >= 8 questions, `--study-codecs` on 8
questions each; for k = 1..4 profiling questions, the held-out MAE (last 4 questions) of
the context's raw mean, the pooled codec mean over the other contexts, and the shrinkage
estimate; plus single-question reliability tau²/(tau²+sigma²).

Results are cached per context in a JSONL file, so an interrupted run resumes where it
stopped. Prints rich tables and the per-codec stats for evicctl/engine/priors.py.

    .venv/bin/python benchmarks/quality_bench.py [--contexts 30] [--study 20] [--cache-dir D]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from evicctl.config import DEFAULT_CODECS, default_cache_dir
from evicctl.engine import hf, prompt
from evicctl.engine.data import QA, Context, load_contexts
from evicctl.engine.model import load_model
from evicctl.engine.profiler import Profiler, ProfilerSettings
from evicctl.engine.quality import token_f1
from evicctl.engine.shrinkage import Tally, codec_stats, estimate

STUDY_CODECS = ("int4", "snapkv@0.5", "keydiff@0.5", "knorm@0.5", "snapkv@0.75")
STUDY_QUESTIONS = 8
HELD_OUT = 4


class NullManager:
    def record_profile(self, *args, **kwargs) -> None:
        pass


def _context_from_dict(d: dict) -> Context:
    qas = {k: tuple(QA(q["id"], q["question"], tuple(q["answers"])) for q in d[k]) for k in ("profiling", "test")}
    return Context(d["id"], d["label"], d["source"], d["text"], d["tokens"], qas["profiling"], qas["test"])


def measure_context(prof: Profiler, context, questions: int, study: bool) -> dict:
    """Scores per codec (list aligned with the context's questions) and unit timings."""
    t0 = time.perf_counter()
    kv, _ = hf.prefill_context(prof.model, prompt.context_ids(prof.tokenizer, context.text).to(prof.device))
    prefill_s = time.perf_counter() - t0
    qas = list(context.questions[: STUDY_QUESTIONS if study else questions])
    ref_s, refs = [], []
    for qa in qas:
        t = time.perf_counter()
        refs.append(prof.reference(kv, qa))
        ref_s.append(time.perf_counter() - t)
    scores, unit_s = {}, {}
    for codec in prof.codecs:
        use = refs if (study and codec in STUDY_CODECS) else refs[:questions]
        t = time.perf_counter()
        scores[codec] = prof.score_codec(kv, codec, use)
        unit_s[codec] = (time.perf_counter() - t) / len(use)
    return {
        "context": context.id, "source": context.source, "tokens": kv.tokens, "study": study,
        "device": str(prof.device) if prof.device.type != "cuda" else torch.cuda.get_device_name(prof.device),
        "scores": scores, "prefill_s": prefill_s, "reference_s": ref_s, "per_question_s": unit_s,
        "f1_none": [token_f1(r.text, r.qa.answers) for r in refs],
        "answers": [r.text for r in refs[:2]],
    }


def load_cache(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            out[rec["context"]] = rec
    return out


def part_a_table(records: list[dict], questions: int) -> Table:
    table = Table(title=f"Part A: teacher-forced exp(-KL) per codec, {len(records)} contexts x {questions} questions")
    for col in ("codec", "mean", "sd across contexts", "min", "p10", "max", "CoV", "s/question"):
        table.add_column(col, justify="right" if col != "codec" else "left")
    for codec in DEFAULT_CODECS:
        per_ctx = np.array([np.mean(r["scores"][codec][:questions]) for r in records])
        cost = np.mean([r["per_question_s"][codec] for r in records])
        table.add_row(
            codec, f"{per_ctx.mean():.3f}", f"{per_ctx.std(ddof=1):.3f}", f"{per_ctx.min():.3f}",
            f"{np.percentile(per_ctx, 10):.3f}", f"{per_ctx.max():.3f}",
            f"{per_ctx.std(ddof=1) / per_ctx.mean():.2f}", f"{cost:.3f}",
        )
    return table


def held_out_mae(records: list[dict], codec: str, k: int, mode: str) -> tuple[dict[str, float], float]:
    """MAE against each context's last HELD_OUT questions of: its raw mean of the first k,
    the pooled mean of the other contexts, and the shrinkage estimate.

    mode "cold": every context has k questions (a fresh deployment without priors);
    "priors": the other contexts are fully profiled (STUDY_QUESTIONS each), as the shipped
    priors are, and only the context at hand has k."""
    scores = {r["context"]: np.array(r["scores"][codec]) for r in records}
    err: dict[str, list[float]] = {"raw": [], "pooled": [], "shrink": []}
    weights = []
    for c, s in scores.items():
        held, own = s[-HELD_OUT:].mean(), Tally.of(s[:k])
        others = {o: Tally.of(x[:k] if mode == "cold" else x) for o, x in scores.items() if o != c}
        stats = codec_stats(others)
        est = estimate(own, stats)
        err["raw"].append(abs(own.mean - held))
        err["pooled"].append(abs(stats.mean - held))
        err["shrink"].append(abs(est.quality - held))
        weights.append(est.weight)
    return {key: float(np.mean(v)) for key, v in err.items()}, float(np.mean(weights))


def study(records: list[dict]) -> list[Table]:
    """Held-out MAE by questions per context, leave-one-context-out pooled/shrinkage."""
    tables = []
    ks = range(1, STUDY_QUESTIONS - HELD_OUT + 1)
    for mode in ("cold", "priors"):
        title = {"cold": "cold start: every context has k questions",
                 "priors": "with priors: the other contexts fully profiled"}[mode]
        per = Table(title=f"Held-out MAE (last {HELD_OUT} of {STUDY_QUESTIONS} questions), {len(records)} contexts, {title}")
        for col in ("codec", "k", "raw mean", "pooled", "shrinkage", "shrink/pooled", "mean w"):
            per.add_column(col, justify="right" if col != "codec" else "left")
        avg = {k: {"raw": [], "pooled": [], "shrink": []} for k in ks}
        for codec in STUDY_CODECS:
            for k in ks:
                m, w = held_out_mae(records, codec, k, mode)
                for key in m:
                    avg[k][key].append(m[key])
                per.add_row(codec, str(k), f"{m['raw']:.3f}", f"{m['pooled']:.3f}", f"{m['shrink']:.3f}",
                            f"{m['shrink'] / m['pooled']:.2f}", f"{w:.2f}")
        summary = Table(title=f"Held-out MAE averaged over {len(STUDY_CODECS)} codecs, {title}")
        for col in ("k questions", "raw mean", "pooled", "shrinkage", "shrinkage vs pooled", "shrinkage vs raw"):
            summary.add_column(col, justify="right")
        for k in ks:
            m = {key: float(np.mean(v)) for key, v in avg[k].items()}
            summary.add_row(str(k), f"{m['raw']:.4f}", f"{m['pooled']:.4f}", f"{m['shrink']:.4f}",
                            f"{m['shrink'] / m['pooled']:.3f}x", f"{m['shrink'] / m['raw']:.3f}x")
        tables += [per, summary]
    rel = Table(title="Single-question reliability (ICC) and questions needed for reliability 0.5")
    for col in ("codec", "tau2", "sigma2", "ICC", "questions for 0.5"):
        rel.add_column(col, justify="right" if col != "codec" else "left")
    for codec in STUDY_CODECS:
        stats = codec_stats({r["context"]: Tally.of(r["scores"][codec]) for r in records})
        icc = stats.tau2 / (stats.tau2 + stats.sigma2) if stats.tau2 + stats.sigma2 > 0 else 0.0
        need = stats.sigma2 / stats.tau2 if stats.tau2 > 0 else float("inf")
        rel.add_row(codec, f"{stats.tau2:.5f}", f"{stats.sigma2:.5f}", f"{icc:.3f}", f"{need:.1f}")
    return [*tables, rel]


def priors(records: list[dict]) -> dict[str, dict]:
    """Per-codec stats over every measured question of every context (for priors.py)."""
    out = {}
    for codec in DEFAULT_CODECS:
        stats = codec_stats({r["context"]: Tally.of(r["scores"][codec]) for r in records})
        out[codec] = {k: round(v, 6) if isinstance(v, float) else v for k, v in stats.to_dict().items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", type=int, default=30)
    ap.add_argument("--study", type=int, default=20, help="contexts (SQuAD, >= 8 questions) in the held-out study")
    ap.add_argument("--questions", type=int, default=2, help="questions per context in part A")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    ap.add_argument("--results", type=Path, default=None, help="JSONL of per-context results (resumable)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--export-contexts", type=Path, default=None, help="write the chosen contexts to JSON and stop")
    ap.add_argument("--contexts-file", type=Path, default=None, help="read contexts from --export-contexts output")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is faster on a busy machine)")
    args = ap.parse_args()
    console = Console(width=None if sys.stdout.isatty() else 150)
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_model(args.cache_dir, args.device)
    results = args.results or args.cache_dir / "bench" / f"quality_bench_s{args.seed}_q{args.questions}.jsonl"
    results.parent.mkdir(parents=True, exist_ok=True)
    done = load_cache(results)
    if args.contexts_file:
        contexts = [_context_from_dict(d) for d in json.loads(args.contexts_file.read_text())][: args.contexts]
    else:
        contexts = load_contexts(tok, args.contexts, min_questions=STUDY_QUESTIONS, seed=args.seed)
    if args.export_contexts:
        args.export_contexts.write_text(json.dumps([dataclasses.asdict(c) for c in contexts]))
        console.print(f"wrote {len(contexts)} contexts to {args.export_contexts}")
        return
    study_ids = [c.id for c in contexts if len(c.questions) >= STUDY_QUESTIONS][: args.study]
    prof = Profiler(NullManager(), model, tok, DEFAULT_CODECS, ProfilerSettings(max_new_tokens=24), device=args.device)
    start = time.perf_counter()
    for i, context in enumerate(contexts):
        if context.id in done:
            continue
        t = time.perf_counter()
        rec = measure_context(prof, context, args.questions, context.id in study_ids)
        with results.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        done[context.id] = rec
        console.print(f"[{i + 1}/{len(contexts)}] {context.id} ({rec['tokens']} tok, "
                      f"{'study' if rec['study'] else 'menu'}): {time.perf_counter() - t:.1f} s")
    records = [done[c.id] for c in contexts]
    console.print(f"measured in {time.perf_counter() - start:.0f} s this run; results in {results}")
    console.print(part_a_table(records, args.questions))
    ref = np.mean([s for r in records for s in r["reference_s"]])
    pre = np.mean([r["prefill_s"] for r in records])
    tf = np.mean([r["per_question_s"][c] for r in records for c in DEFAULT_CODECS])
    devices = sorted({r.get("device", "cpu") for r in records})
    cost = Table(title=f"Profiling cost on {', '.join(devices)} (SmolLM2-135M, fp32)")
    for col in ("step", "seconds", "ratio to a reference answer"):
        cost.add_column(col, justify="right" if col != "step" else "left")
    cost.add_row("prefill of the context", f"{pre:.2f}", f"{pre / ref:.2f}")
    cost.add_row("full-KV reference answer (<= 24 tokens) + its teacher-forced pass", f"{ref:.2f}", "1.00")
    cost.add_row("one codec, one question (compress + teacher-forced pass)", f"{tf:.3f}", f"{tf / ref:.3f}")
    q = args.questions
    per_ctx_codec = ref * q / len(DEFAULT_CODECS) + tf * q
    cost.add_row(f"one (context, codec) profile with {q} questions (reference shared by codecs)",
                 f"{per_ctx_codec:.2f}", f"{per_ctx_codec / ref:.2f}")
    console.print(cost)
    f1 = [x for r in records for x in r["f1_none"] if x is not None]
    console.print(f"full-KV answers: mean token F1 vs gold {np.mean(f1):.3f} over {len(f1)} questions")
    study_records = [done[c] for c in study_ids]
    if len(study_records) >= 3:
        for table in study(study_records):
            console.print(table)
    console.print("priors (evicctl/engine/priors.py):")
    console.print_json(json.dumps(priors(records)))


if __name__ == "__main__":
    main()
