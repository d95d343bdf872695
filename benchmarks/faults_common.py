"""What the fault harness's parts share: the manager setup, deterministic KVs, the figures row,
and checks that read the database with plain sqlite3 (never through the code under test).

Imported by benchmarks/faults*.py and tests/faults/ with benchmarks/ on sys.path.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

# A small KV, so a crash cycle is dominated by the restart, not by tensor work:
# 2 layers x 2 heads x 16-40 tokens x 16 dims in fp32 = 8-20 KiB per context.
LAYERS, HEADS, HEAD_DIM = 2, 2, 16
MENU = ("none", "int8", "int4", "knorm@0.5", "knorm@0.5+int8")
SAME_CONTEXT_COSINE = 0.8  # int4 keeps ~0.99; another context's tensors give ~0
_N_OF_ID = re.compile(r"(\d+)$")


@dataclass
class Figure:
    """One row of the figures table: a fault class, how often it was injected, what was lost."""

    fault: str
    injected: str
    count: int = 0
    lost: int = 0  # contexts, commands or rows that should have survived and did not
    recovery_s: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def recovery_text(self) -> str:
        if not self.recovery_s:
            return "-"
        xs = sorted(self.recovery_s)
        p50, worst = xs[len(xs) // 2], xs[-1]
        return f"p50 {p50 * 1e3:.0f} ms, max {worst * 1e3:.0f} ms"

    def to_json(self) -> dict:
        return {**asdict(self), "recovery": self.recovery_text()}


def context_id(n: int) -> str:
    """Every 5th id is hostile-shaped (a slash, non-ASCII), so hashed file names are crashed too."""
    return f"doc/ü-{n}" if n % 5 == 4 else f"ctx-{n}"


def n_of(context_id_: str) -> int:
    match = _N_OF_ID.search(context_id_)
    return int(match.group(1)) if match else -1


def make_kv(n: int):
    """Context n's full fp32 KV: a fixed function of n, so the harness can recheck any copy."""
    import torch

    from evicctl.manager.kv import KV

    tokens = 16 + 8 * (n % 4)
    g = torch.Generator().manual_seed(1000 + n)
    keys = [torch.randn(1, HEADS, tokens, HEAD_DIM, generator=g) for _ in range(LAYERS)]
    values = [torch.randn(1, HEADS, tokens, HEAD_DIM, generator=g) for _ in range(LAYERS)]
    return KV.full(keys, values)


def raw_bytes_per_context() -> int:
    return 2 * LAYERS * HEADS * 28 * HEAD_DIM * 4  # at the mean token count


def make_config(root: Path, *, cpu_contexts: int = 4, disk_contexts: int = 24, disk_path: Path | None = None,
                **kw):  # fmt: skip
    """cpu + disk tiers sized in contexts, so stores press the placer into moves and recompressions."""
    from evicctl.config import ManagerConfig, TierConfig

    raw = raw_bytes_per_context()
    return ManagerConfig(
        db_path=root / "evicctl.db",
        cache_dir=root / "cache",
        tiers=(
            TierConfig("cpu", capacity_bytes=cpu_contexts * raw),
            TierConfig("disk", capacity_bytes=disk_contexts * raw, path=disk_path or root / "disk"),
        ),
        codecs=kw.pop("codecs", MENU),
        tick_s=kw.pop("tick_s", 0.02),
        replan_s=kw.pop("replan_s", 0.3),
        rebalance_min_residence_s=kw.pop("rebalance_min_residence_s", 0.5),
        **kw,
    )


def same_context(kv, n: int) -> bool:
    """Whether `kv` (decoded from any codec) holds context n's keys at its kept positions."""
    import torch

    full = make_kv(n)
    if kv.tokens != full.tokens:
        return False
    sims = []
    for layer, (k, k_full) in enumerate(zip(kv.keys, full.keys, strict=True)):
        idx = kv.positions[layer].unsqueeze(-1).expand(-1, -1, HEAD_DIM)  # [heads, kept, dim]
        want = torch.gather(k_full[0], 1, idx)
        sims.append(torch.nn.functional.cosine_similarity(k[0].float(), want, dim=-1).mean())
    return bool(torch.stack(sims).mean() > SAME_CONTEXT_COSINE)


# ---- reading the database without the code under test --------------------------------------
def open_ro(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    return conn


def integrity_ok(db: Path) -> bool:
    with sqlite3.connect(db, timeout=30) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def committed_state(db: Path) -> dict:
    """What the database holds right now: placements, pins, commands (by id)."""
    conn = open_ro(db)
    try:
        placements = {r["context_id"]: dict(r) for r in conn.execute("SELECT * FROM placements")}
        pins = {r["id"]: (r["pin_tier"], r["pin_codec"]) for r in conn.execute("SELECT id, pin_tier, pin_codec FROM contexts")}
        commands = {r["id"]: dict(r) for r in conn.execute("SELECT id, verb, context_id, args_json, status, result FROM commands")}
    finally:
        conn.close()
    return {"placements": placements, "pins": pins, "commands": commands}


def pin_mismatches(commands: dict[int, dict], pins: dict[str, tuple]) -> list[str]:
    """Contexts whose pin disagrees with their last answered pin/unpin command. A context whose
    last pin/unpin was not answered (pending or running at the kill), or was answered
    "interrupted" by a restart (it may have taken effect), is ambiguous: skipped."""
    last: dict[str, dict] = {}
    for cmd_id in sorted(commands):
        c = commands[cmd_id]
        interrupted = '"interrupted"' in (c.get("result") or "")
        if c["verb"] in ("pin", "unpin") and (interrupted or c["status"] not in ("failed", "refused")):
            last[c["context_id"]] = c
    bad = []
    for ctx, c in last.items():
        if c["status"] != "done" or ctx not in pins:
            continue
        tier, codec = pins[ctx]
        args = json.loads(c["args_json"] or "{}")
        if c["verb"] == "unpin":
            ok = tier is None and codec is None
        else:
            ok = (not args.get("tier") or tier == args["tier"]) and (not args.get("codec") or codec == args["codec"])
        if not ok:
            bad.append(f"{ctx}: pin {tier}/{codec} after command {c['id']} {c['verb']} {args}")
    return bad


def disk_leftovers(disk_dir: Path, locations: set[str]) -> tuple[list[str], list[str]]:
    """(orphan context files no placement points at, temp files) in the disk folder."""
    orphans = [p.name for p in disk_dir.glob("*.safetensors") if str(p) not in locations]
    temps = [p.name for p in disk_dir.glob(".*.tmp")]
    return orphans, temps


def now_s() -> float:
    return time.time()


def dump(path: Path | None, figures: list[Figure], meta: dict) -> None:
    if path is not None:
        path.write_text(json.dumps({"meta": meta, "figures": [f.to_json() for f in figures]}, indent=2))
