"""Rendering a bench run: a rich table per run, the paper comparison, JSON for scripts."""

from __future__ import annotations

import json
import math

from rich.console import Console
from rich.table import Table

from evicctl.units import fmt_bytes


def _s(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x * 1000:.0f} ms" if x < 10 else f"{x:.1f} s"


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def runs_table(doc: dict) -> Table:
    tiers = list(doc["catalog"]["tiers"])
    trace = doc["trace"]
    title = f"{doc['scenario']['name']}: {doc['catalog']['contexts']:,} contexts, {trace['requests']:,} requests ({trace['description']})"
    table = Table(title=title)
    columns = ("policy", "TTFT mean", "p50", "p99", "quality", *(f"hit {t}" for t in tiers), "miss", "vs lru", "gap closed", "moved", "loaded")
    gaps = (doc.get("comparisons") or {}).get("gap_closed") or {}
    for col in columns:
        table.add_column(col, justify="left" if col == "policy" else "right", no_wrap=col == "policy")
    lru = next((s for s in doc["runs"] if s["policy"] == "lru"), None)
    for s in doc["runs"]:
        vs_lru = lru["ttft_mean_s"] / s["ttft_mean_s"] if lru is not None and s["ttft_mean_s"] > 0 else None
        table.add_row(
            s["policy"],
            _s(s["ttft_mean_s"]),
            _s(s["ttft_p50_s"]),
            _s(s["ttft_p99_s"]),
            f"{s['quality_mean']:.3f}",
            *(f"{s['hit_rate'][t]:.1%}" for t in tiers),
            f"{s['miss_rate'] + s['recompute_rate']:.1%}",
            _ratio(vs_lru),
            "-" if s["policy"] not in gaps else f"{gaps[s['policy']]:.0%}",
            fmt_bytes(s["bytes_moved"]),
            fmt_bytes(s["bytes_loaded"]),
        )
    return table


def comparison_table(cmp: dict) -> Table:
    table = Table(title="evicpress against the baselines (TTFT ratio, higher is better for us)")
    for col in ("against", "at", "ours", "theirs", "ratio", "paper"):
        table.add_column(col)
    paper = cmp["paper"]
    for f in cmp.get("vs_fixed", []):
        table.add_row(
            f["policy"], f"quality {f['quality']:.3f}", _s(f["ours_ttft_s"]), _s(f["ttft_s"]),
            _ratio(f["ratio"]) if f["ratio"] is not None else "no match",
            "{:.2f}-{:.2f}x".format(*paper["vs_fixed"]),
        )
    for base in ("lru", "prefill", "lru-plain"):
        c = cmp.get(f"vs_{base}")
        if c:
            table.add_row(
                base, f"<3% loss ({c['ours']}, q {c['ours_quality']:.3f})", _s(c["ours_ttft_s"]), _s(c["base_ttft_s"]),
                _ratio(c["ratio"]), "{:.2f}-{:.2f}x".format(*paper[f"vs_{base}"]) if f"vs_{base}" in paper else "",
            )
    for key, what in (("best_baseline", "best baseline"), ("best_fixed", "best-fixed")):
        b = cmp.get(key)
        if b:
            table.add_row(
                f"{what}: {b['policy']}", f"quality {b['quality']:.3f} (best of {b['candidates']} at >= {cmp['quality_target']:g})",
                _s(b["ours_ttft_s"]), _s(b["ttft_s"]), _ratio(b["ratio"]), "",
            )
    if cmp.get("vs_fixed_dropping_median") is not None:
        table.add_row("fixed token dropping", "median over codecs, equal quality", "", "",
                      _ratio(cmp["vs_fixed_dropping_median"]), "{:.2f}-{:.2f}x".format(*paper["vs_fixed"]))
    if cmp.get("placement_vs_lru") is not None:
        table.add_row("lru", "placement-only (no compression)", "", "", _ratio(cmp["placement_vs_lru"]), "")
    g = cmp.get("greedy_vs_exact")
    if g and g.get("utility_gap_mean") is not None:
        table.add_row(
            "exact (MILP)", f"{g['problems']} re-plans", _s(g["greedy_ttft_s"]), _s(g["exact_ttft_s"]),
            f"gap {g['utility_gap_mean']:.2%} mean, {g['utility_gap_max']:.2%} max", "not reported",
        )
    return table


def qps_table(doc: dict) -> Table | None:
    """TTFT with waiting and max QPS within the p99 target, per policy (the fixed sweep's
    best-fixed only)."""
    runs = [s for s in doc["runs"] if s.get("max_qps") is not None]
    if not runs:
        return None
    cmp = doc.get("comparisons") or {}
    best_fixed = (cmp.get("best_fixed") or {}).get("policy")
    lru = next((s for s in runs if s["policy"] == "lru"), None)
    table = Table(title=f"throughput: max QPS with p99 TTFT <= {runs[0]['slo_p99_s']:.2f} s (queueing model)")
    for col in ("policy", "quality", "TTFT mean (queued)", "p99 (queued)", "max QPS", "vs lru"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for s in runs:
        if s["family"] == "fixed" and s["policy"] != best_fixed:
            continue
        vs = s["max_qps"] / lru["max_qps"] if lru and lru["max_qps"] else None
        table.add_row(s["policy"], f"{s['quality_mean']:.3f}", _s(s["queued_ttft_mean_s"]), _s(s["queued_ttft_p99_s"]),
                      f"{s['max_qps']:.2f}", _ratio(vs))
    t = cmp.get("throughput")
    if t:
        table.caption = (f"ours ({t['ours']}, quality >= target) {t['ours_qps']:.2f} QPS: {_ratio(t['vs_lru'])} lru, "
                         f"{_ratio(t['vs_best_baseline'])} the best baseline ({t['best_baseline']}); paper 2.0-3.6x")
    return table


def agreement_table(agreement: dict) -> Table:
    table = Table(title="replay vs live on the same requests")
    for col in ("policy", "live TTFT", "replay TTFT", "replay / live", "same outcome"):
        table.add_column(col, justify="right")
    queued = any("queued_ratio" in a for a in agreement.values())  # --live-open-loop: waiting too
    if queued:
        for col in ("live with waiting", "model with waiting", "model / live", "model without stores", "model, stores synchronous"):
            table.add_column(col, justify="right")
    for policy, a in agreement.items():
        row = [policy, _s(a["ttft_mean_live_s"]), _s(a["ttft_mean_replay_s"]), f"{a['ratio']:.2f}", f"{a['same_outcome']:.0%}"]
        if queued:
            row += [_s(a.get("queued_ttft_mean_live_s")), _s(a.get("queued_ttft_mean_replay_s")),
                    "-" if a.get("queued_ratio") is None else f"{a['queued_ratio']:.2f}",
                    _s(a.get("queued_ttft_mean_replay_no_store_s")), _s(a.get("queued_ttft_mean_replay_sync_store_s"))]
        table.add_row(*row)
    return table


def print_report(doc: dict, console: Console) -> None:
    console.print(runs_table(doc))
    if doc.get("agreement"):
        console.print(agreement_table(doc["agreement"]))
    if doc.get("comparisons"):
        console.print(comparison_table(doc["comparisons"]))
    qps = qps_table(doc) if doc.get("runs") else None
    if qps is not None:
        console.print(qps)
    for note in doc.get("notes", []):
        console.print(f"[dim]note: {note}[/]")


def to_json(doc: dict) -> str:
    return json.dumps(doc, indent=2, default=_default)


def flat_rows(doc: dict) -> list[dict]:
    """One flat row per run (hit_rate.cpu -> hit_rate_cpu), for line formats; a sweep's
    runs carry their sweep value."""
    out = []
    points = doc.get("points") or [{"value": None, "runs": doc.get("runs", [])}]
    for point in points:
        for run in point["runs"]:
            row = {} if point["value"] is None else {doc["sweep"]: point["value"]}
            for k, v in run.items():
                if isinstance(v, dict):
                    row |= {f"{k}_{kk}": vv for kk, vv in v.items()}
                else:
                    row[k] = v
            out.append(row)
    return out


def to_jsonl(doc: dict) -> str:
    return "\n".join(json.dumps(row, default=_default) for row in flat_rows(doc))


def to_csv(doc: dict) -> str:
    import csv
    import io

    rows = flat_rows(doc)
    fields = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().rstrip("\n")


def _default(x):
    import numpy as np

    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serializable: {type(x).__name__}")
