"""Tables, rank correlations and shipped data from quality_menu.py's results (CPU only).

- scores the greedy answers with the paper's metric (MiniLM cosine against the full-KV
  answer, evicctl.engine.quality.AnswerSimilarity), here, so the scorer never travels;
- per codec: mean / sd across contexts / p10 of the per-context mean, both metrics;
- Spearman rank correlation across contexts between families (does a context that tolerates
  one family tolerate the others?), and the between-context share of the variance;
- whether choosing per context pays: at a quality floor, the bytes of the cheapest fixed
  codec whose mean clears it against each context's cheapest codec whose estimate (the
  profiling half, shrunk, as the replay's placer sees it) clears it, judged on the test half;
- `--write-profiles`: the bench's data file (format 1 + answer_similarity per context);
  `--print-priors`: the (mean, tau2, sigma2) rows for evicctl/engine/priors.py.

    .venv/bin/python -P benchmarks/quality_menu_report.py RESULTS.jsonl [--write-profiles F] [--print-priors]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from evicctl.engine.shrinkage import Tally, codec_stats
from evicctl.manager.codecs.names import stored_bytes
from evicctl.replay.profiles import profiles_from_scores

SHAPE = (30, 3, 64, 2)  # SmolLM2-135M: layers, kv heads, head dim; 16-bit storage
RANK_CODECS = ("int4", "int3", "int2", "snapkv@0.5", "keydiff@0.5", "knorm@0.5",
               "snapkv@0.5+int4", "snapkv@0.5+int2", "keydiff@0.5+int2",
               "kvzip@0.5", "expected@0.5", "kvzip@0.5+int4", "snapkv@0.5-pyramid", "think@0.5+int4")
FLOORS = (0.99, 0.97, 0.95, 0.9, 0.85, 0.8)


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def add_answer_similarity(records: list[dict]) -> None:
    """rec["answer_similarity"][codec] = cosines of the codec's answers vs the full-KV ones."""
    from evicctl.engine.quality import AnswerSimilarity

    sim = AnswerSimilarity()
    for rec in records:
        if not rec.get("answers"):
            continue
        refs = rec["reference_answers"][: len(next(iter(rec["answers"].values())))]
        rec["answer_similarity"] = {c: [round(s, 5) for s in sim.scores(a, refs)] for c, a in rec["answers"].items()}


def per_context(records: list[dict], key: str, codecs: tuple[str, ...]) -> np.ndarray:
    """[contexts, codecs] mean score of each context (records lacking `key` or any of the
    codecs, as a measurement of only some codecs has, are skipped)."""
    return np.array([[np.mean(r[key][c]) for c in codecs] for r in records
                     if r.get(key) and all(c in r[key] for c in codecs)])


def bytes_ratio(codec: str, tokens: int = 1100) -> float:
    return stored_bytes(codec, tokens, *SHAPE) / stored_bytes("none", tokens, *SHAPE)


def codec_table(records: list[dict], codecs: tuple[str, ...]) -> list[str]:
    squad = [r for r in records if r["source"] == "squad"]
    rows = ["| codec | bytes vs fp16 | TF contexts | TF mean | TF sd | TF p10 | TF ICC | AS contexts | AS mean | AS sd | AS p10 |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in codecs:
        tf = per_context(records, "teacher_forced", (c,))[:, 0]
        sim = per_context(records, "answer_similarity", (c,))
        sim = sim[:, 0] if sim.size else np.full(1, np.nan)
        icc = _icc({r["context"]: Tally.of(r["teacher_forced"][c]) for r in squad if c in r["teacher_forced"]})
        rows.append(f"| {c} | {bytes_ratio(c):.3f} | {len(tf)} | {tf.mean():.3f} | {tf.std(ddof=1):.3f} | "
                    f"{np.percentile(tf, 10):.3f} | {icc:.2f} | {len(sim)} | {sim.mean():.3f} | "
                    f"{sim.std(ddof=1):.3f} | {np.percentile(sim, 10):.3f} |")
    return rows


def _icc(tallies: dict[str, Tally]) -> float:
    """Between-context share of one question's variance: tau2 / (tau2 + sigma2)."""
    s = codec_stats(tallies)
    return s.tau2 / (s.tau2 + s.sigma2) if s.tau2 + s.sigma2 > 0 else float("nan")


def rank_table(records: list[dict], key: str) -> list[str]:
    """Spearman rho across contexts between the codecs of RANK_CODECS that were measured."""
    codecs = tuple(c for c in RANK_CODECS if any(c in (r.get(key) or {}) for r in records))
    rho = spearmanr(per_context(records, key, codecs)).statistic
    rows = ["| | " + " | ".join(codecs) + " |", "|---" * (len(codecs) + 1) + "|"]
    for i, c in enumerate(codecs):
        rows.append(f"| {c} | " + " | ".join(f"{rho[i, j]:.2f}" for j in range(len(codecs))) + " |")
    return rows


def sensitivity_rho(records: list[dict], key: str) -> list[str]:
    """Rank correlations of per-context *losses* between families, named pairs."""
    codecs = ("int4", "int2", "snapkv@0.5", "keydiff@0.5", "knorm@0.5", "snapkv@0.5+int2", "snapkv@0.5+int4")
    m = dict(zip(codecs, per_context(records, key, codecs).T, strict=True))
    drop = (m["snapkv@0.5"] + m["keydiff@0.5"] + m["knorm@0.5"]) / 3
    pairs = {
        "int4 vs drop@0.5 (mean of 3 scorers)": (m["int4"], drop),
        "int2 vs drop@0.5": (m["int2"], drop),
        "int4 vs int2": (m["int4"], m["int2"]),
        "snapkv@0.5 vs knorm@0.5": (m["snapkv@0.5"], m["knorm@0.5"]),
        "snapkv@0.5 vs keydiff@0.5": (m["snapkv@0.5"], m["keydiff@0.5"]),
        "snapkv@0.5+int2 vs int2": (m["snapkv@0.5+int2"], m["int2"]),
        "snapkv@0.5+int2 vs snapkv@0.5": (m["snapkv@0.5+int2"], m["snapkv@0.5"]),
        "extra loss of +int2 after snapkv@0.5 vs int2's loss": (m["snapkv@0.5"] - m["snapkv@0.5+int2"], 1 - m["int2"]),
        "extra loss of +int4 after snapkv@0.5 vs int4's loss": (m["snapkv@0.5"] - m["snapkv@0.5+int4"], 1 - m["int4"]),
    }
    # the model-side scorers and the per-layer / per-channel forms, where measured
    more = ("kvzip@0.5", "expected@0.5", "snapkv@0.5-pyramid", "think@0.5+int4")
    if all(any(c in (r.get(key) or {}) for r in records) for c in more):
        m |= dict(zip(codecs + more, per_context(records, key, codecs + more).T, strict=True))
        pairs |= {
            "kvzip@0.5 vs snapkv@0.5": (m["kvzip@0.5"], m["snapkv@0.5"]),
            "expected@0.5 vs snapkv@0.5": (m["expected@0.5"], m["snapkv@0.5"]),
            "kvzip@0.5 vs expected@0.5": (m["kvzip@0.5"], m["expected@0.5"]),
            "kvzip@0.5 vs int4": (m["kvzip@0.5"], m["int4"]),
            "snapkv@0.5-pyramid vs snapkv@0.5": (m["snapkv@0.5-pyramid"], m["snapkv@0.5"]),
            "think@0.5+int4 vs int4": (m["think@0.5+int4"], m["int4"]),
        }
    return [f"| {name} | {spearmanr(a, b).statistic:.2f} |" for name, (a, b) in pairs.items()]


def choice_table(records: list[dict], codecs: tuple[str, ...]) -> list[str]:
    """Fixed codec vs per-context choice at each quality floor (SQuAD contexts, 8 questions,
    measured with every codec)."""
    squad = [r for r in records if r["source"] == "squad" and all(c in r["teacher_forced"] for c in codecs)]
    prof = profiles_from_scores(codecs=codecs, scores=[r["teacher_forced"] for r in squad],
                                context_ids=tuple(r["context"] for r in squad), tokens=[r["tokens"] for r in squad])
    size = np.array([bytes_ratio(c) for c in codecs])
    rows = ["| floor | best fixed codec | its bytes | its mean truth | per-context bytes | per-context mean truth | "
            "per-context below floor | bytes saved | codecs picked (top 4) |", "|---" * 9 + "|"]
    for floor in FLOORS:
        means = prof.truth.mean(0)
        ok = np.flatnonzero(means >= floor)
        fixed = ok[np.argmin(size[ok])]
        pick = [_cheapest(prof.estimate[i], size, floor) for i in range(prof.n_contexts)]
        b = size[pick].mean()
        truth = prof.truth[np.arange(prof.n_contexts), pick]
        names, counts = np.unique([codecs[p] for p in pick], return_counts=True)
        top = ", ".join(f"{n} {c}" for c, n in sorted(zip(counts, names, strict=True), reverse=True)[:4])
        rows.append(f"| {floor:.2f} | {codecs[fixed]} | {size[fixed]:.3f} | {means[fixed]:.3f} | {b:.3f} | "
                    f"{truth.mean():.3f} | {np.mean(truth < floor):.0%} | {size[fixed] / b:.2f}x | {top} |")
    return rows


def _cheapest(estimate: np.ndarray, size: np.ndarray, floor: float) -> int:
    ok = np.flatnonzero(estimate >= floor)
    return int(ok[np.argmin(size[ok])]) if len(ok) else int(np.argmin(-estimate))


def write_profiles(records: list[dict], codecs: tuple[str, ...], out: Path) -> None:
    """The replay's data file: SQuAD contexts (8 questions each, so halves of 4 and 4), format
    1 (replay/profiles.py reads `scores`), plus the answer-similarity scores where measured."""
    squad = [r for r in records if r["source"] == "squad" and all(c in r["teacher_forced"] for c in codecs)]
    doc = {
        "format": 1,
        "model": f"SmolLM2-135M-Instruct (fp32, {' + '.join(sorted({r['device'] for r in records}))})",
        "metric": "teacher-forced",
        "max_new_tokens": 24,
        "questions_per_context": len(squad[0]["questions"]),
        "answer_similarity_questions": max(len(next(iter(r["answer_similarity"].values())))
                                           for r in squad if r.get("answer_similarity")),
        "codecs": list(codecs),
        "measured_at": time.strftime("%Y-%m-%d"),
        "measured_by": "benchmarks/quality_menu.py + benchmarks/quality_menu_report.py (docs/quality.md)",
        "contexts": [_context_row(r, codecs) for r in squad],
    }
    out.write_text(json.dumps(doc, indent=1) + "\n")


def _context_row(r: dict, codecs: tuple[str, ...]) -> dict:
    row = {"id": r["context"], "source": r["source"], "tokens": r["tokens"], "questions": r["questions"],
           "scores": {c: [round(s, 5) for s in r["teacher_forced"][c]] for c in codecs}}
    if r.get("answer_similarity"):
        row["answer_similarity"] = {c: v for c, v in r["answer_similarity"].items() if c in codecs}
    return row


def base_records(path: Path) -> list[dict]:
    """The records of a shipped profiles file (write_profiles' format), to merge a
    measurement of more codecs into."""
    doc = json.loads(path.read_text())
    return [{"context": c["id"], "source": c["source"], "tokens": c["tokens"], "questions": c["questions"],
             "teacher_forced": c["scores"], "answer_similarity": c.get("answer_similarity"),
             "device": doc["model"].split(", ")[-1].rstrip(")")} for c in doc["contexts"]]


def merge(base: list[dict], new: list[dict]) -> tuple[list[dict], dict[str, float]]:
    """`base` with `new`'s codecs added per context (same context and questions), then the
    contexts only `new` has; and per codec in both, the largest per-context difference of the
    teacher-forced mean (how well the new measurement reproduces the old)."""
    by_id = {r["context"]: r for r in new}
    drift: dict[str, float] = {}
    out = []
    for b in base:
        r = by_id.pop(b["context"], None)
        if r is None:
            out.append(b)
            continue
        if r["questions"] != b["questions"]:
            raise SystemExit(f"{b['context']}: the two measurements asked different questions")
        for c, scores in r["teacher_forced"].items():
            if c in b["teacher_forced"]:
                drift[c] = max(drift.get(c, 0.0), abs(np.mean(scores) - np.mean(b["teacher_forced"][c])))
        merged = dict(b, teacher_forced=r["teacher_forced"] | b["teacher_forced"])
        if r.get("answer_similarity") and b.get("answer_similarity"):
            merged["answer_similarity"] = r["answer_similarity"] | b["answer_similarity"]
        out.append(merged)
    return out + list(by_id.values()), drift


def priors_rows(records: list[dict], codecs: tuple[str, ...]) -> list[str]:
    """priors.py's _MEASURED rows: codec stats over every question of every context."""
    rows = []
    for c in codecs:
        s = codec_stats({r["context"]: Tally.of(r["teacher_forced"][c]) for r in records if c in r["teacher_forced"]})
        rows.append(f'    "{c}": ({s.mean:.4f}, {s.tau2:.5f}, {s.sigma2:.5f}),')
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("--write-profiles", type=Path, default=None)
    ap.add_argument("--print-priors", action="store_true")
    ap.add_argument("--scored", type=Path, default=None, help="cache of the results with MiniLM scores added")
    ap.add_argument("--base-profiles", type=Path, default=None,
                    help="a shipped profiles file whose contexts the results add codecs to (a run with --codecs)")
    args = ap.parse_args()
    if args.scored and args.scored.is_file():
        records = load(args.scored)
    else:
        records = load(args.results)
        add_answer_similarity(records)
        if args.scored:
            args.scored.write_text("".join(json.dumps(r) + "\n" for r in records))
    new_codecs = tuple(records[0]["teacher_forced"])
    codecs = new_codecs
    if args.base_profiles:
        base = base_records(args.base_profiles)
        records, drift = merge(base, records)
        codecs = tuple(base[0]["teacher_forced"]) + tuple(c for c in new_codecs if c not in base[0]["teacher_forced"])
        print("reproduced codecs, largest per-context difference of the TF mean: "
              + (", ".join(f"{c} {d:.4f}" for c, d in drift.items()) or "none measured twice"))
    n_sq = sum(r["source"] == "squad" for r in records)
    n_as = sum(bool(r.get("answer_similarity")) for r in records)
    print(f"{len(records)} contexts ({n_sq} SQuAD x 8 questions, {len(records) - n_sq} HotpotQA x 1), "
          f"{len(codecs)} codecs; answer similarity on {n_as} contexts\n")
    for title, rows in (("per codec (TF over all contexts, AS over the AS contexts; ICC on SQuAD)", codec_table(records, codecs)),
                        ("Spearman across contexts, teacher-forced (SQuAD)", rank_table([r for r in records if r["source"] == "squad"], "teacher_forced")),
                        ("Spearman across contexts, answer similarity", rank_table(records, "answer_similarity")),
                        ("named pairs, teacher-forced (SQuAD)", sensitivity_rho([r for r in records if r["source"] == "squad"], "teacher_forced")),
                        ("named pairs, answer similarity", sensitivity_rho(records, "answer_similarity")),
                        ("per-context choice vs fixed codec (SQuAD, TF; estimate = profiling half, truth = test half)", choice_table(records, codecs))):
        print(f"### {title}\n")
        print("\n".join(rows) + "\n")
    if args.print_priors:  # the new codecs' rows only when merging (the base's priors stand)
        print("\n".join(priors_rows(records, new_codecs if args.base_profiles else codecs)))
    if args.write_profiles:  # the menu's codecs (the replay's menu is the file's)
        from evicctl.config import DEFAULT_CODECS

        missing = [c for c in DEFAULT_CODECS if c not in codecs]
        if missing:
            print(f"note: the menu's {', '.join(missing)} not measured; the file lacks them")
        write_profiles(records, tuple(c for c in codecs if c in DEFAULT_CODECS), args.write_profiles)
        print(f"wrote {args.write_profiles}")


if __name__ == "__main__":
    main()
