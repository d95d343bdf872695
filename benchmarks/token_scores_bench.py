"""What the model-side token scores cost when a context is stored, on the real model.

Per context (SQuAD v2 chunks of ~1k tokens, the demo's): the plain prefill (window queries
only, as before the ``expected`` scorer), the prefill with Expected Attention's query
statistics captured and its scores computed (query_stats.py), and KVzip's reconstruction
pass (kvzip.py). Prints one row per context, then the means, seconds per 1k context tokens
and relative to the plain prefill. Also: how many kept tokens change when the scores are
stored in fp16 (the stored form) instead of float32, per scorer and ratio.

    .venv/bin/python -P benchmarks/token_scores_bench.py --contexts 4
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from evicctl.config import default_cache_dir
from evicctl.engine import hf, kvzip, prompt
from evicctl.engine.data import squad_contexts
from evicctl.engine.model import load_model
from evicctl.manager.codecs.scorers import keep_indices


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _plain_prefill(model, ids):
    tokens = ids.shape[1]
    with hf.capture_window_queries(model, max(0, tokens - hf.WINDOW)) as captured:
        result = hf.forward(model, ids)
    return hf.kv_from_cache(result.cache, tokens, hf.stack_window(captured))


def _changed(kv, name: str, ratio: float) -> float:
    """Fraction of kept (layer, head, token) entries that differ between fp32 and fp16 scores."""
    exact = keep_indices(kv, name, ratio)
    rounded = dataclasses.replace(kv, token_scores={name: kv.token_scores[name].half().float()})
    approx = keep_indices(rounded, name, ratio)
    same = sum(
        len(set(a.tolist()) & set(b.tolist()))
        for a, b in zip(exact.reshape(-1, exact.shape[-1]), approx.reshape(-1, approx.shape[-1]), strict=True)
    )
    return 1.0 - same / exact.numel()


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    opts = parser.parse_args()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    model, tokenizer = load_model(default_cache_dir())
    contexts = squad_contexts(tokenizer)[: opts.contexts]
    rp = kvzip.repeat_prompt(tokenizer)
    _plain_prefill(model, prompt.context_ids(tokenizer, contexts[0].text))  # warm-up
    rows = []
    print(f"{'context':<28} {'tokens':>6} {'prefill s':>9} {'+expected s':>11} {'kvzip s':>8} {'kvzip/prefill':>13}")
    for ctx in contexts:
        ids = prompt.context_ids(tokenizer, ctx.text)
        _, plain_s = _timed(lambda ids=ids: _plain_prefill(model, ids))
        (kv, _), expected_s = _timed(lambda ids=ids: hf.prefill_context(model, ids))
        scores, kvzip_s = _timed(lambda kv=kv, ids=ids: kvzip.kvzip_scores(model, kv, ids, rp))
        kv = dataclasses.replace(kv, token_scores={**kv.token_scores, "kvzip": scores})
        changed = {(n, r): _changed(kv, n, r) for n in ("expected", "kvzip") for r in (0.25, 0.5, 0.75)}
        rows.append((ids.shape[1], plain_s, expected_s, kvzip_s, changed))
        print(f"{ctx.id[:28]:<28} {ids.shape[1]:>6} {plain_s:>9.3f} {expected_s:>11.3f} {kvzip_s:>8.3f} {kvzip_s / plain_s:>13.2f}")
    per_k = lambda i: statistics.mean(r[i] / r[0] * 1000 for r in rows)  # noqa: E731
    print(
        f"\nmean per 1k tokens: prefill {per_k(1):.3f} s, prefill + expected {per_k(2):.3f} s "
        f"({per_k(2) / per_k(1) - 1:+.1%}), kvzip pass {per_k(3):.3f} s ({per_k(3) / per_k(1):.2f}x the prefill); "
        f"torch threads {torch.get_num_threads()}"
    )
    for key in rows[0][4]:
        print(f"fp16 storage: {key[0]}@{key[1]} changes {statistics.mean(r[4][key] for r in rows):.2%} of kept tokens")


if __name__ == "__main__":
    main()
