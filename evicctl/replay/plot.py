"""TTFT against quality for every policy: the figure the paper's argument rests on.

Each `fixed` codec family is a curve over its ratios, our policy a curve over alpha,
the other policies single points. matplotlib with the Agg backend (no display needed).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from evicctl.errors import UsageError

_POINT_STYLE = {
    "prefill": ("s", "black"),
    "lru": ("D", "tab:gray"),
    "lru-plain": ("d", "silver"),
    "placement-only": ("^", "tab:green"),
    "exact": ("*", "tab:purple"),
    "arc": ("v", "tab:blue"),  # the issue-16 baselines: one marker per eviction, a point per codec
    "gdsf": ("<", "tab:orange"),
    "tinylfu": (">", "tab:brown"),
    "ideal": ("P", "gold"),
}


def _family_of_fixed(codec: str) -> str:
    """keydiff@0.5 -> keydiff; int8 / int4 are one family 'int' (a curve over bits)."""
    head = codec.split("@")[0].split("+")[0]
    return "int8/int4" if head.startswith("int") else head


def plot_runs(summaries: list[dict], path: Path | str, *, title: str = "") -> Path:
    """Write the figure to `path` (PNG); returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise UsageError(f"--plot writes a PNG; got {path.name!r} (use a .png name)")
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    curves: dict[str, list[dict]] = defaultdict(list)
    for s in summaries:
        if s["family"] == "fixed":
            curves[f"fixed {_family_of_fixed(s['codec'])}"].append(s)
        elif s["family"] == "evicpress":
            curves["evicpress (alpha sweep)"].append(s)
    for label, points in sorted(curves.items()):
        points.sort(key=lambda s: s["quality_mean"])
        ours = label.startswith("evicpress")
        ax.plot(
            [s["quality_mean"] for s in points],
            [s["ttft_mean_s"] for s in points],
            marker="o" if ours else ".",
            linewidth=2.5 if ours else 1.2,
            color="tab:red" if ours else None,
            label=label,
            zorder=3 if ours else 2,
        )
        # ours: label the curve's ends only (its points crowd together at high quality)
        for s in (points[0], points[-1]) if ours else points:
            tag = f"alpha={s['alpha']:g}" if ours else s["codec"].split("@")[-1]
            ax.annotate(tag, (s["quality_mean"], s["ttft_mean_s"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    for s in summaries:
        style = _POINT_STYLE.get(s["family"]) or _POINT_STYLE.get(s["policy"])
        if s["family"] in ("fixed", "evicpress") or style is None:
            continue
        if s["policy"] == "lru-plain":
            style = _POINT_STYLE["lru-plain"]
        ax.scatter([s["quality_mean"]], [s["ttft_mean_s"]], marker=style[0], color=style[1], s=60, label=s["policy"], zorder=4)
    ax.set_xlabel("mean quality (fidelity to the full-KV answer)")
    ax.set_ylabel("mean TTFT (s)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title or "TTFT vs quality per policy (lower right is better)")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


# policies drawn in a sweep's TTFT panel (when run), with ours (the fastest alpha meeting the
# quality target) and the best baseline of each point
_SWEEP_CURVES = ("lru", "arc", "tinylfu", "placement-only", "fixed:int4", "tinylfu:int4", "ideal")


def plot_sweep(doc: dict, path: Path | str) -> Path:
    """A robustness sweep (robustness.run_sweep's document) as two panels against the swept
    value: mean TTFT per policy, and the ratios the issue's goals are stated in."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise UsageError(f"--plot writes a PNG; got {path.name!r} (use a .png name)")
    kind, points = doc["sweep"], doc["points"]
    xs = [p["value"] for p in points]
    fig, (ttft_ax, ratio_ax) = plt.subplots(1, 2, figsize=(12, 4.8), dpi=110)
    for name in _SWEEP_CURVES:
        ys = [_ttft_of(p, name) for p in points]
        if any(y is not None for y in ys):
            style = _POINT_STYLE.get(name.split(":")[0], (".", None))
            ttft_ax.plot(xs, ys, marker=style[0], color=None if ":" in name else style[1], label=name)
    target = [(p["comparisons"].get("best_baseline") or {}) for p in points]
    ttft_ax.plot(xs, [t.get("ours_ttft_s") for t in target], marker="o", color="tab:red", linewidth=2.5,
                 label="evicpress (at the best baseline's quality)")
    ttft_ax.set_ylabel("mean TTFT (s)")
    ttft_ax.set_yscale("log")
    rows = doc["summary"]
    for key, label in (("vs_best_baseline", "evicpress vs best baseline"), ("vs_lru", "evicpress vs lru (<3% loss)"),
                       ("placement_vs_lru", "placement-only vs lru"), ("placement_vs_arc", "placement-only vs arc"),
                       ("qps_vs_lru", "max QPS vs lru")):
        ratio_ax.plot(xs, [r.get(key) for r in rows], marker="o", label=label)
    ratio_ax.axhline(1.0, color="black", linewidth=0.8)
    ratio_ax.set_ylabel("ratio (>1: evicpress / placement-only ahead)")
    for ax in (ttft_ax, ratio_ax):
        ax.set_xlabel(kind)
        if kind in ("capacity", "disk", "half-life"):
            ax.set_xscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"{doc['scenario']['name']}: robustness to {kind}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def _ttft_of(point: dict, policy: str) -> float | None:
    return next((r["ttft_mean_s"] for r in point["runs"] if r["policy"] == policy), None)
