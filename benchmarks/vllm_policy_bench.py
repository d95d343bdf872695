"""vLLM's CPU KV offloading under vLLM's `lru`, `arc` and evicctl's policy, on the same traces.

Each policy runs inside vLLM's own CPUOffloadingManager, built by vLLM's spec factory from a
kv_connector_extra_config that names it (evicctl.integrations.vllm_spec), at equal CPU
capacity. Requests: the bench's SQuAD/HotpotQA contexts (evicctl.engine.data, with the
engine's prompt template) with Zipf popularity and Poisson arrivals
(evicctl.replay.trace.zipf_trace), each followed by one of that context's questions, chunked
as vLLM chunks them (evicctl.integrations.vllm_replay). Reports chunk hit rate, prefill
tokens saved, the mean TTFT the h200 cost model implies, and the wall time per manager call.

Run from the vLLM environment (scripts/vllm-env.sh):
    .venv-vllm/bin/python -P benchmarks/vllm_policy_bench.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

POLICIES = ("lru", "arc", "evicctl")


def load_prompts(n_contexts: int, seed: int):
    """[context token ids], [[question token ids]] of `n_contexts` bench contexts."""
    from transformers import AutoTokenizer

    from evicctl.config import default_cache_dir
    from evicctl.engine import prompt
    from evicctl.engine.data import load_contexts
    from evicctl.engine.model import converted_folder, gguf_path

    folder = converted_folder(default_cache_dir())
    if (folder / "tokenizer.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(folder)
    else:  # a fresh machine: the tokenizer inside the packaged GGUF
        src = gguf_path()
        tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    contexts = load_contexts(tokenizer, n_contexts, seed=seed)
    docs = [prompt.context_ids(tokenizer, c.text)[0].tolist() for c in contexts]
    questions = [[prompt.question_ids(tokenizer, q.question)[0].tolist() for q in c.questions] for c in contexts]
    return contexts, docs, questions


def build_requests(questions, n_requests: int, zipf: float, seed: int):
    from evicctl.integrations.vllm_replay import Request
    from evicctl.replay.trace import zipf_trace

    trace = zipf_trace(len(questions), n_requests, qps=1.0, zipf=zipf, seed=seed)
    turn = [0] * len(questions)
    out = []
    for c in trace.context.tolist():
        qs = questions[c]
        out.append(Request(c, tuple(qs[turn[c] % len(qs)])))
        turn[c] += 1
    return out, trace


def ttft_s(stats, prompts: np.ndarray, layout, costs) -> tuple[float, float]:
    """Mean TTFT with the CPU hits, and with no offloading at all (every prompt prefilled)."""
    hit_tokens = np.asarray(stats.per_request_hits) * layout.chunk_tokens
    load_s = hit_tokens * layout.kv_bytes_per_token / costs["cpu_read_bps"]
    with_cache = costs["model"].prefill_s(prompts - hit_tokens, hit_tokens) + load_s
    return float(np.mean(with_cache)), float(np.mean(costs["model"].prefill_s(prompts, 0)))


def run_one(policy: str, capacity_chunks: int, layout, docs, requests, inflight: int):
    from evicctl.integrations.vllm_replay import ChunkHasher, Replayer
    from evicctl.integrations.vllm_spec import build_manager

    manager = build_manager(policy, capacity_chunks, layout)
    rep = Replayer(manager, ChunkHasher(docs, layout), inflight=inflight)
    for r in requests[: len(requests) // 10]:  # hash the contexts outside the timed part
        rep.hasher.keys(r)
    stats = rep.run(requests)
    close = getattr(manager._policy, "close", None)
    if close is not None:
        close()
    return stats


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", type=int, default=120)
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--zipf", type=float, default=1.0)
    ap.add_argument("--capacity", type=float, nargs="+", default=[0.1, 0.2, 0.4],
                    help="CPU capacity as a fraction of the distinct context chunks")  # fmt: skip
    ap.add_argument("--blocks-per-chunk", type=int, default=1, help="vLLM's default: one 16-token block")
    ap.add_argument("--inflight", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timing-requests", type=int, default=1500, help="requests per timing run")
    ap.add_argument("--repeats", type=int, default=5, help="timing runs per policy, interleaved; the minimum counts")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args(argv)

    from evicctl.integrations.vllm_spec import ChunkLayout
    from evicctl.replay.scenario import load_scenario

    layout = ChunkLayout(blocks_per_chunk=args.blocks_per_chunk)
    os.environ["EVICCTL_VLLM_CHUNK_TOKENS"] = str(layout.chunk_tokens)
    os.environ["EVICCTL_VLLM_KV_BYTES_PER_TOKEN"] = str(layout.kv_bytes_per_token)
    db = Path(tempfile.mkdtemp(prefix="evicctl-vllm-bench-")) / "bench.db"
    os.environ["EVICCTL_DB"] = str(db)  # evicctl's policy records as it would in production
    scenario = load_scenario("h200")
    costs = {"model": scenario.cost_model(), "cpu_read_bps": next(t.read_bps for t in scenario.tiers if t.name == "cpu")}

    t0 = time.perf_counter()
    contexts, docs, questions = load_prompts(args.contexts, args.seed)
    requests, trace = build_requests(questions, args.requests, args.zipf, args.seed)
    prompts = np.array([len(docs[r.context]) + len(r.query_tokens) for r in requests])
    distinct_chunks = sum(len(d) // layout.chunk_tokens for d in docs)
    print(f"{len(docs)} contexts ({sum(c.source == 'squad' for c in contexts)} SQuAD, "
          f"{sum(c.source == 'hotpotqa' for c in contexts)} HotpotQA), mean {np.mean([len(d) for d in docs]):.0f} tokens; "
          f"{len(requests)} requests, {trace.description}; {layout.chunk_tokens}-token chunks, "
          f"{distinct_chunks} distinct context chunks; loaded in {time.perf_counter() - t0:.1f} s", file=sys.stderr)  # fmt: skip

    rows = []
    for frac in args.capacity:
        chunks = max(1, int(frac * distinct_chunks))
        for policy in POLICIES:
            stats = run_one(policy, chunks, layout, docs, requests, args.inflight)
            mean_ttft, no_cache_ttft = ttft_s(stats, prompts, layout, costs)
            rows.append({
                "capacity": frac, "capacity_chunks": chunks, "policy": policy,
                "chunk_hit_rate": stats.hit_rate, "hit_requests": stats.hit_requests / stats.requests,
                "prefill_tokens": int(stats.prompt_tokens), "tokens_saved": stats.hit_chunks * layout.chunk_tokens,
                "mean_ttft_ms": 1e3 * mean_ttft, "no_cache_ttft_ms": 1e3 * no_cache_ttft,
                "evicted_chunks": stats.evicted_chunks, "stores_refused": stats.stores_refused,
                "us_per_call": 1e6 * stats.manager_s / stats.manager_calls, "calls": stats.manager_calls,
                "us_per_request": 1e6 * stats.manager_s / stats.requests,
            })  # fmt: skip
    print_tables(rows)
    print()
    print_timing(timing(args, layout, docs, requests))
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=1))
    return 0


def timing(args, layout, docs, requests) -> dict[str, tuple[float, float]]:
    """Per policy (us per manager call, us per request): the minimum over interleaved repeats
    (the machine is shared: the minimum is the run least disturbed by others), at the middle
    capacity, on the first `timing_requests` requests. evicctl's recorder thread stays on."""
    frac = sorted(args.capacity)[len(args.capacity) // 2]
    chunks = max(1, int(frac * sum(len(d) // layout.chunk_tokens for d in docs)))
    best = {p: (float("inf"), float("inf")) for p in POLICIES}
    for _ in range(args.repeats):
        for policy in POLICIES:
            stats = run_one(policy, chunks, layout, docs, requests[: args.timing_requests], args.inflight)
            per_call = 1e6 * stats.manager_s / stats.manager_calls
            best[policy] = min(best[policy], (per_call, 1e6 * stats.manager_s / stats.requests))
    return best


def print_timing(best) -> None:
    print("| policy | us per manager call | us per request | vs lru | vs arc |")
    print("|---|---|---|---|---|")
    for policy, (per_call, per_request) in best.items():
        print(f"| {policy} | {per_call:.2f} | {per_request:.0f} | {per_call / best['lru'][0]:.2f}x | "
              f"{per_call / best['arc'][0]:.2f}x |")


def print_tables(rows) -> None:
    by = {(r["capacity"], r["policy"]): r for r in rows}
    print("| capacity | policy | chunk hit rate | prefill tokens saved | saved vs arc | mean TTFT (h200) | us/call | us/request | vs lru | vs arc |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        lru, arc = by[(r["capacity"], "lru")], by[(r["capacity"], "arc")]
        print(f"| {r['capacity']:.0%} ({r['capacity_chunks']} chunks) | {r['policy']} | {r['chunk_hit_rate']:.3f} | "
              f"{r['tokens_saved']:,} ({r['tokens_saved'] / r['prefill_tokens']:.1%}) | "
              f"{r['tokens_saved'] / max(1, arc['tokens_saved']):.3f}x | {r['mean_ttft_ms']:.1f} ms "
              f"(none {r['no_cache_ttft_ms']:.1f}) | {r['us_per_call']:.2f} | {r['us_per_request']:.0f} | "
              f"{r['us_per_call'] / lru['us_per_call']:.2f}x | {r['us_per_call'] / arc['us_per_call']:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
