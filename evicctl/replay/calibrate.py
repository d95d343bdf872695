"""Measure this machine's costs for the `cpu-local` scenario (evicctl/data/cpu_local_costs.json).

- prefill: the real model (SmolLM2-135M, fp32) on a SQuAD context cut to several lengths,
  alone (a miss) and as a question on top of a cached prefix (a hit), median of `repeats`;
- tiers: CpuTier and DiskTier `probe()` (the manager's own bandwidth probes);
- decode: CostModel.probe_decode (the codecs' decode throughput on this CPU);
- query lengths: the prompt tokens of the SQuAD/HotpotQA questions after a context.

The timings depend on what else runs on the machine (on 2 shared cores a busy neighbour
slows a 2-thread prefill several times over): each sample is the fastest of `repeats`, the
closest to the machine's own cost.

    .venv/bin/python -m evicctl.replay.calibrate [--out evicctl/data/cpu_local_costs.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from evicctl.config import default_cache_dir

CONTEXT_LENGTHS = (128, 512, 1024, 1536, 2048)
CACHED_LENGTHS = (512, 1024, 2048)  # hits: a question prefilled on a cached prefix of this length
SHARES = {"cpu": 80, "disk": 800}  # the paper's 80 GB DRAM / 800 GB SSD proportions


def prefill_samples(
    model, tokenizer, *, repeats: int = 3, lengths=CONTEXT_LENGTHS, cached=CACHED_LENGTHS, stat=min
) -> list[list]:
    """[[new_tokens, cached_tokens, seconds], ...]: `stat` (min, or statistics.mean for the
    machine as it is now) of `repeats` timings, after a warm-up."""
    from evicctl.engine import hf, prompt
    from evicctl.engine.data import load_contexts

    contexts = load_contexts(tokenizer, 4, target_tokens=2048, hotpot_fraction=0.0)
    ids = max((prompt.context_ids(tokenizer, c.text) for c in contexts), key=lambda t: t.shape[1])  # [1, T]
    question = prompt.question_ids(tokenizer, contexts[0].questions[0].question)  # [1, Q]
    hf.forward(model, ids[:, :64])  # warm-up
    out = []
    for n in lengths:
        out.append([n, 0, _timed(lambda n=n: hf.forward(model, ids[:, :n]), repeats, stat)])
    for n in cached:
        kv, _ = hf.prefill_context(model, ids[:, :n])

        def hit(kv=kv):
            hf.forward(model, question, hf.cache_from_kv(kv, model.config), kv.tokens)

        out.append([int(question.shape[1]), n, _timed(hit, repeats, stat)])
    return out


def _timed(fn, repeats: int, stat) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(float(stat(times)), 5)


def tier_bandwidths(repeats: int = 3) -> dict[str, float]:
    """Best probed read bandwidth of a CpuTier and a DiskTier (in a temp directory)."""
    from evicctl.manager.tiers.disk import DiskTier
    from evicctl.manager.tiers.tier import CpuTier

    out = {}
    with tempfile.TemporaryDirectory(prefix="evicctl-calibrate-") as tmp:
        for tier in (CpuTier(capacity_bytes=1 << 30), DiskTier(Path(tmp), capacity_bytes=1 << 30)):
            reads = []
            for _ in range(repeats):
                tier.probe()
                reads.append(tier.read_bps)
            out[tier.name] = float(max(reads))
    return out


def query_lengths(tokenizer, n_contexts: int = 24) -> list[int]:
    """50 quantiles of the question prompt lengths (tokens after the context)."""
    import numpy as np

    from evicctl.engine import prompt
    from evicctl.engine.data import load_contexts

    contexts = load_contexts(tokenizer, n_contexts)
    lengths = [prompt.question_ids(tokenizer, qa.question).shape[1] for c in contexts for qa in c.questions]
    return [int(round(x)) for x in np.quantile(lengths, np.linspace(0, 1, 50))]


def calibrate(cache_dir: Path, repeats: int = 5) -> dict:
    from evicctl.engine.model import load_model
    from evicctl.manager.costs import CostModel

    model, tokenizer = load_model(cache_dir, "cpu")
    cfg = model.config
    bps = tier_bandwidths(repeats)
    decode = CostModel().probe_decode()
    return {
        "name": "cpu-local",
        "description": "SmolLM2-135M-Instruct (fp32) on this machine's CPU; CpuTier and DiskTier",
        "source": f"measured by python -m evicctl.replay.calibrate on {time.strftime('%Y-%m-%d %H:%M')}",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "model": {
            "name": "SmolLM2-135M-Instruct",
            "layers": cfg.num_hidden_layers,
            "kv_heads": cfg.num_key_value_heads,
            "head_dim": getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads,
            "dtype_bytes": 4,
            "q_heads": cfg.num_attention_heads,
            "window": 16,
        },
        "prefill_samples": prefill_samples(model, tokenizer, repeats=repeats),
        "tiers": [{"name": name, "read_bps": bps[name], "share": SHARES[name]} for name in ("cpu", "disk")],
        "decode_bps": {k: float(v) for k, v in decode.items()},
        "context_tokens": {"distribution": "measured"},
        "query_tokens": query_lengths(tokenizer),
        "alpha": 2.0,
        "notes": "Tier shares follow the paper's 80 GB DRAM / 800 GB SSD. The disk bandwidth is the DiskTier's probe: "
        "a safetensors file read after dropping it from the page cache, with its sha256 check.",
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "data" / "cpu_local_costs.json")
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    doc = calibrate(args.cache_dir, args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps({k: doc[k] for k in ("prefill_samples", "tiers", "decode_bps")}, indent=1))


if __name__ == "__main__":
    from evicctl.entry import keep_checkout_root_off_path

    keep_checkout_root_off_path()
    main()
