"""Quality of every codec of the default menu on the real model, batched for a GPU.

Per context: prefill once, generate the full-KV answer to each question, then score every
codec of the menu with the teacher-forced metric (exp(-KL) of the compressed KV's
distributions against the full KV's over the full-KV answer, evicctl/engine/quality.py) on
`--tf-questions` questions, and, on the first `--as-contexts` contexts, generate the
compressed KV's greedy answer to the first `--as-questions` questions (the paper's
answer-similarity metric; the MiniLM cosine is taken later by quality_menu_report.py on
the CPU, so the scorer's weights need not travel to the GPU machine).

Batching is what makes this minutes on the H200 instead of hours: the model is small, so a
forward is launch-bound (~10 ms whatever the batch). Codecs that keep the same number of
tokens (every codec of one drop ratio, every quantizer alone) share one batched forward per
context, questions x codecs on the batch axis:
- teacher-forced: question + answer right-padded; attention is causal, so padding after a
  sequence never reaches its positions and needs no mask;
- greedy: questions left-padded with an attention mask, positions per row continuing from
  the context's original length (hf.forward's convention), each row stopping at its own
  stop token.

Writes one JSON line per context to `--results` (resumable: contexts already there are
skipped), and stops starting contexts after `--budget-s` so a device call ends in time.

    python3 -P benchmarks/quality_menu.py --contexts-file ctx.json --results out.jsonl --device cuda
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import torch

from evicctl.config import DEFAULT_CODECS
from evicctl.engine import hf, kvzip, prompt, ragged
from evicctl.manager.codecs.codec import get_codec
from evicctl.manager.codecs.names import parse_codec_name
from evicctl.manager.kv import KV

MAX_NEW_TOKENS = 24  # as the profiler (ProfilerSettings.max_new_tokens)


def _stack(kvs: list[KV], repeat: int) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Per layer [len(kvs) * repeat, H, K, D]: row b holds kvs[b // repeat]."""
    keys = tuple(torch.cat([kv.keys[i] for kv in kvs]).repeat_interleave(repeat, 0) for i in range(kvs[0].layers))
    values = tuple(torch.cat([kv.values[i] for kv in kvs]).repeat_interleave(repeat, 0) for i in range(kvs[0].layers))
    return keys, values


def _cache(model, keys, values):
    from transformers import DynamicCache

    if len({k.shape[2] for k in keys}) > 1:  # PyramidKV: layers of different lengths
        ragged.allow_ragged_layers(model)
    return DynamicCache(ddp_cache_data=list(zip(keys, values, strict=True)), config=model.config)


@torch.no_grad()
def teacher_forced(model, kvs: list[KV], questions: list[list[int]], answers: list[list[int]]) -> list[list[torch.Tensor]]:
    """Per KV, per question: [A+1, vocab] log-probs of each answer token and what follows it
    (quality.teacher_forced_logprobs, batched over kvs x questions with right padding)."""
    seqs = [q + a for q, a in zip(questions, answers, strict=True)]
    width, n_q = max(map(len, seqs)), len(seqs)
    dev = kvs[0].device
    ids = torch.zeros((len(kvs) * n_q, width), dtype=torch.long, device=dev)  # [B, S], 0 = padding
    for b in range(ids.shape[0]):
        ids[b, : len(seqs[b % n_q])] = torch.tensor(seqs[b % n_q], device=dev)
    start = kvs[0].tokens
    positions = torch.arange(start, start + width, device=dev).expand(ids.shape[0], width)
    cache = _cache(model, *_stack(kvs, n_q))
    logits = model(input_ids=ids, position_ids=positions, use_cache=True, **{hf._cache_kwarg(model): cache}).logits
    out = []
    for k in range(len(kvs)):
        rows = []
        for j, (q, a) in enumerate(zip(questions, answers, strict=True)):
            rows.append(torch.log_softmax(logits[k * n_q + j, len(q) - 1 : len(q) + len(a)].float(), -1))
        out.append(rows)
    return out


def kl_quality(reference: torch.Tensor, candidate: torch.Tensor) -> float:
    """exp(-mean_t KL(ref || cand)), as quality.kl_quality (kept on the device until the end)."""
    kl = (reference.exp() * (reference - candidate)).sum(-1).clamp_min(0.0)
    return float(torch.exp(-kl.mean()))


@torch.no_grad()
def greedy(model, kvs: list[KV], questions: list[list[int]], stop_ids: frozenset[int]) -> list[list[list[int]]]:
    """Per KV, per question: greedy answer ids (stop token excluded), batched with left padding."""
    n_q, width, dev = len(questions), max(map(len, questions)), kvs[0].device
    rows, kept, start = len(kvs) * n_q, kvs[0].layer_kept[0], kvs[0].tokens  # the mask is sized by layer 0
    ids = torch.zeros((rows, width), dtype=torch.long, device=dev)
    mask = torch.ones((rows, kept + width), dtype=torch.long, device=dev)  # [B, cache + prompt]
    lengths = torch.tensor([len(questions[b % n_q]) for b in range(rows)], device=dev)
    for b in range(rows):
        q = questions[b % n_q]
        ids[b, width - len(q) :] = torch.tensor(q, device=dev)
        mask[b, kept : kept + width - len(q)] = 0
    # a real token's position continues from the context; padding positions are masked anyway
    positions = (start + torch.arange(width, device=dev) - (width - lengths)[:, None]).clamp_min(start)
    cache = _cache(model, *_stack(kvs, n_q))
    kw = {hf._cache_kwarg(model): cache}
    logits = model(input_ids=ids, position_ids=positions, attention_mask=mask, use_cache=True, logits_to_keep=1, **kw).logits
    next_pos = start + lengths  # [B]
    tokens: list[list[int]] = [[] for _ in range(rows)]
    done = [False] * rows
    for step in range(MAX_NEW_TOKENS):
        chosen = logits[:, -1].argmax(-1)  # [B]
        for b, t in enumerate(chosen.tolist()):
            if not done[b]:
                done[b] = t in stop_ids
                if not done[b]:
                    tokens[b].append(t)
        if all(done) or step + 1 == MAX_NEW_TOKENS:
            break
        mask = torch.cat([mask, torch.ones((rows, 1), dtype=mask.dtype, device=dev)], 1)
        logits = model(input_ids=chosen[:, None], position_ids=next_pos[:, None], attention_mask=mask,
                       use_cache=True, **kw).logits
        next_pos = next_pos + 1
    return [[tokens[k * n_q + j] for j in range(n_q)] for k in range(len(kvs))]


def compress(kv: KV, codecs: tuple[str, ...]) -> tuple[dict[tuple[int, ...], dict[str, KV]], dict[str, float]]:
    """Each codec's decoded KV, grouped by tokens kept per layer (one batch each), and seconds per codec."""
    groups: dict[tuple[int, ...], dict[str, KV]] = defaultdict(dict)
    seconds = {}
    for name in codecs:
        t = time.perf_counter()
        codec = get_codec(name)
        out = codec.decode(codec.encode(kv), kv.device)
        if kv.device.type == "cuda":
            torch.cuda.synchronize()
        seconds[name] = time.perf_counter() - t
        groups[out.layer_kept][name] = out
    return groups, seconds


def measure_context(model, tokenizer, ctx: dict, codecs: tuple[str, ...], n_tf: int, n_as: int, device) -> dict:
    """One context's record: per codec, teacher-forced scores (and greedy answers if n_as)."""
    t0 = time.perf_counter()
    ids = prompt.context_ids(tokenizer, ctx["text"]).to(device)
    kv, _ = hf.prefill_context(model, ids)  # with the ``expected`` scores
    if any(parse_codec_name(c).scorer == "kvzip" for c in codecs):  # the engine's --kvzip pass
        kv = kvzip.with_kvzip_scores(model, kv, ids, tokenizer)
    qas = (ctx["profiling"] + [q for q in ctx["test"] if q not in ctx["profiling"]])[:n_tf]
    q_ids = [prompt.question_ids(tokenizer, q["question"])[0].tolist() for q in qas]
    stop = prompt.stop_token_ids(tokenizer)
    t1 = time.perf_counter()
    ref_ans = greedy(model, [kv], q_ids, stop)[0]
    ref_lp = teacher_forced(model, [kv], q_ids, ref_ans)[0]
    t2 = time.perf_counter()
    groups, codec_s = compress(kv, codecs)
    tf, answers = {}, {}
    for group in groups.values():
        names, kvs = list(group), list(group.values())
        for name, lps in zip(names, teacher_forced(model, kvs, q_ids, ref_ans), strict=True):
            tf[name] = [round(kl_quality(r, c), 6) for r, c in zip(ref_lp, lps, strict=True)]
        if n_as:
            for name, ans in zip(names, greedy(model, kvs, q_ids[:n_as], stop), strict=True):
                answers[name] = [_text(tokenizer, a) for a in ans]
    t3 = time.perf_counter()
    return {
        "context": ctx["id"], "source": ctx["source"], "tokens": kv.tokens, "questions": [q["id"] for q in qas],
        "teacher_forced": {c: tf[c] for c in codecs},
        "reference_answers": [_text(tokenizer, a) for a in ref_ans],
        "answers": {c: answers[c] for c in codecs} if n_as else None,
        "gold": [q["answers"] for q in qas],
        "seconds": {"prefill_and_tokenize": round(t1 - t0, 4), "reference": round(t2 - t1, 4),
                    "codecs_and_scoring": round(t3 - t2, 4), "per_codec_compress": {c: round(s, 5) for c, s in codec_s.items()}},
    }


def _text(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


def done_ids(path: Path) -> set[str]:
    if not path.is_file():
        return set()
    return {json.loads(line)["context"] for line in path.read_text().splitlines() if line.strip()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts-file", type=Path, required=True, help="benchmarks/quality_bench.py --export-contexts output")
    ap.add_argument("--results", type=Path, required=True)
    ap.add_argument("--model-dir", type=Path, default=None, help="fp32 folder (default: convert the packaged GGUF once)")
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tf-questions", type=int, default=8)
    ap.add_argument("--as-contexts", type=int, default=48, help="first N contexts with >= --as-questions questions")
    ap.add_argument("--as-questions", type=int, default=4)
    ap.add_argument("--codecs", default=",".join(DEFAULT_CODECS))
    ap.add_argument("--limit", type=int, default=None, help="contexts to measure at most (this run)")
    ap.add_argument("--budget-s", type=float, default=1e9, help="start no context after this many seconds")
    args = ap.parse_args()
    start = time.perf_counter()
    model, tokenizer = _load(args)
    codecs = tuple(args.codecs.split(","))
    contexts = json.loads(args.contexts_file.read_text())
    eligible = [c["id"] for c in contexts if len(c["profiling"]) + len(c["test"]) >= args.as_questions]
    as_ids = set(eligible[: args.as_contexts])
    done = done_ids(args.results)
    measured = 0
    print(f"model loaded in {time.perf_counter() - start:.1f} s; {len(done)} contexts already measured", flush=True)
    for ctx in contexts:
        if ctx["id"] in done:
            continue
        if time.perf_counter() - start > args.budget_s or (args.limit is not None and measured >= args.limit):
            break
        t = time.perf_counter()
        rec = measure_context(model, tokenizer, ctx, codecs, args.tf_questions,
                              args.as_questions if ctx["id"] in as_ids else 0, args.device)
        rec["device"] = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
        with args.results.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        measured += 1
        print(f"{ctx['id']}: {rec['tokens']} tok, {len(rec['questions'])} q, "
              f"{'as ' if rec['answers'] else ''}{time.perf_counter() - t:.1f} s", flush=True)
    print(f"measured {measured} contexts in {time.perf_counter() - start:.0f} s", flush=True)


def _load(args):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.model_dir is None:
        from evicctl.config import default_cache_dir
        from evicctl.engine.model import load_model

        return load_model(args.cache_dir or default_cache_dir(), args.device)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype="float32").to(args.device).eval()
    return model, AutoTokenizer.from_pretrained(args.model_dir)


if __name__ == "__main__":
    main()
