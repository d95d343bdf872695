"""Read commands: ls, show, tiers, history. Read-only connections; never block the manager."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from typing import Annotated

import typer

from evicctl.console.common import DbOpt, OutputOpt, open_reader, validate_sort, validate_tier
from evicctl.console.output import (
    Column,
    OutputFormat,
    print_csv_rows,
    print_json,
    print_json_chunks,
    print_json_lines,
    print_records,
    print_table,
    stdout_is_terminal,
)
from evicctl.errors import NoSuchContextError, UsageError
from evicctl.timeparse import parse_since
from evicctl.units import (
    decimals,
    fmt_ago_now,
    fmt_bps,
    fmt_bytes,
    fmt_duration,
    fmt_float,
    fmt_int,
    fmt_pct,
    fmt_ratio,
    fmt_time,
    sparkline,
)

TABLE_DEFAULT_LIMIT = 100
FOLLOW_POLL_S = 0.2

TIER_FIELDS = ("name", "backend", "rank", "capacity_bytes", "used_bytes", "used_fraction", "read_bps", "write_bps",
               "hits", "hit_rate_1m", "contexts", "evictions", "median_lifetime_s", "median_idle_s",
               "occupancy_history")


def _pin(row: dict) -> str:
    parts = [p for p in (row.get("pin_tier"), row.get("pin_codec")) if p]
    return "/".join(parts) if parts else ""


CONTEXT_COLUMNS = (
    Column("id", "ID", style="bold"),
    Column("label", "LABEL", priority=1),
    Column("tenant", "TENANT", priority=3),
    Column("tier", "TIER"),
    Column("codec", "CODEC"),
    Column("stored_bytes", "SIZE", fmt_bytes, "right"),
    Column("compression_ratio", "RATIO", fmt_ratio, "right", priority=4),
    Column("quality", "QUALITY", decimals(3), "right"),
    Column("utility", "UTILITY", decimals(3), "right"),
    Column("freq", "FREQ", decimals(4), "right", priority=2),
    Column("hits", "HITS", fmt_int, "right", priority=5),
    Column("last_access_at", "LAST ACCESS", fmt_ago_now, "right", priority=6),
    Column("pin", "PIN", priority=7),
)


def register(app: typer.Typer) -> None:
    app.command("ls")(ls)
    app.command("show")(show)
    app.command("tiers")(tiers)
    app.command("history")(history)


def ls(
    tier: Annotated[str | None, typer.Option(help="Only contexts on this tier (or 'dropped').")] = None,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's contexts.")] = None,
    search: Annotated[str | None, typer.Option("--search", "-s", help="Substring of id/label/tenant; also tier:X codec:X pinned.")] = None,
    sort: Annotated[str, typer.Option(help="utility|size|hits|age|quality (also freq, ratio, tier, codec, id, tenant, ...).")] = "utility",
    ascending: Annotated[bool, typer.Option("--asc", help="Ascending order (default: descending).")] = False,
    limit: Annotated[int | None, typer.Option(min=0, help=f"At most N rows (default: all; {TABLE_DEFAULT_LIMIT} for a table).")] = None,
    output: OutputOpt = OutputFormat.table,
    db: DbOpt = None,
) -> None:
    """List contexts with their placement, quality and utility."""
    from evicctl.snapshot.read import (
        CONTEXT_FIELDS,
        iter_contexts,
        iter_contexts_json_chunks,
        read_contexts,
    )

    with open_reader(db) as store:
        if tier is not None:
            validate_tier(store, tier, extra=("dropped",))
        validate_sort(sort)
        query = dict(sort=sort, descending=not ascending, tier=tier, tenant=tenant, search=search)
        if output is OutputFormat.table:
            rows, total = read_contexts(store, **query, limit=TABLE_DEFAULT_LIMIT if limit is None else limit)
            records = [{**dataclasses.asdict(r), "pin": _pin(dataclasses.asdict(r))} for r in rows]
            caption = f"{len(rows)} of {total} contexts" + (" (use --limit N for more)" if len(rows) < total else "")
            print_table(records, CONTEXT_COLUMNS, caption=caption)
        elif output is OutputFormat.csv:
            # closing(): a reader that leaves early (`| head`) ends the read before the store closes
            with contextlib.closing(iter_contexts(store, **query, limit=limit)) as rows:
                print_csv_rows(rows, CONTEXT_FIELDS)
        else:
            with contextlib.closing(iter_contexts_json_chunks(store, **query, limit=limit)) as chunks:
                print_json_chunks(chunks, array=output is OutputFormat.json)


def _context_dict(row) -> dict:
    from evicctl.snapshot.read import CONTEXT_FIELDS

    d = dataclasses.asdict(row)
    return {k: d[k] for k in (*CONTEXT_FIELDS, "created_at")}


def detail_dict(detail) -> dict:
    """`evicctl show -o json`: the stable shape (see README)."""
    return {
        "context": _context_dict(detail.row),
        "placement": dataclasses.asdict(detail.placement) if detail.placement else None,
        "reason": detail.reason,
        "room_note": detail.room_note,
        "alpha": detail.alpha,
        "cost_model": detail.cost_model,
        "profiles": [profile_record(p) for p in detail.profiles],
        "options": [dataclasses.asdict(o) for o in detail.options],
        "events": [dataclasses.asdict(e) for e in detail.events],
        "lifetimes": [],  # filled by show(): evictions of this context, with age, idle time, hits, bytes
    }


OPTION_COLUMNS = (
    Column("mark", ""),
    Column("codec", "CODEC"),
    Column("tier", "TIER"),
    Column("stored_bytes", "SIZE", fmt_bytes, "right"),
    Column("quality", "QUALITY", decimals(3), "right"),
    Column("predicted_ttft_s", "TTFT (s)", decimals(4), "right"),
    Column("utility", "UTILITY", decimals(4), "right"),
    Column("fit", "FITS"),
)
PROFILE_COLUMNS = (
    Column("codec", "CODEC"),
    Column("metric", "METRIC"),
    Column("quality", "QUALITY", decimals(3), "right"),
    Column("quality_sd", "SD", decimals(3), "right"),
    Column("raw_mean", "RAW MEAN", decimals(3), "right"),
    Column("f1", "F1", decimals(3), "right"),
    Column("n_queries", "QUERIES", fmt_int, "right"),
    Column("source", "SOURCE"),
    Column("measured_at", "MEASURED", fmt_ago_now, "right"),
)


def profile_record(profile) -> dict:
    """A profile row for people: with no queries of its own it is the codec's prior (pooled
    over other contexts), so it says so and shows no measurement time."""
    record = dataclasses.asdict(profile)
    measured = bool(record["n_queries"])
    record["source"] = "measured" if measured else "prior"
    if not measured:
        record["measured_at"] = None
    return record


def show(
    context: Annotated[str, typer.Argument(help="Context id.")],
    output: OutputOpt = OutputFormat.table,
    db: DbOpt = None,
) -> None:
    """One context: placement, profile per codec, utility of every option, recent events."""
    from evicctl.snapshot.detail import read_context
    from evicctl.snapshot.lifetimes import read_lifetimes

    with open_reader(db) as store:
        detail = read_context(store, context)
        lifetimes = read_lifetimes(store, context)
    data = detail_dict(detail)
    data["lifetimes"] = [dataclasses.asdict(x) for x in lifetimes]
    if output is OutputFormat.json:
        print_json(data)
    elif output is OutputFormat.jsonl:
        print_json_lines([__import__("json").dumps(data, default=str)], array=False)
    elif output is OutputFormat.csv:
        fields = ("context_id", "codec", "tier", "stored_bytes", "quality", "predicted_ttft_s", "utility", "chosen", "fits")
        print_records(({**o, "context_id": context} for o in data["options"]), fields, output)
    else:
        _print_detail(detail, data)


def _print_detail(detail, data: dict) -> None:
    r, p = detail.row, detail.placement
    where = f"{p.tier} / {p.codec}, {fmt_bytes(p.stored_bytes)} since {fmt_time(p.since)}" if p else "not placed"
    pin = _pin(data["context"]) or "none"
    lines = [
        f"context   {r.id}  ({r.label or 'no label'}, tenant {r.tenant})",
        f"size      {r.tokens:,} tokens, {fmt_bytes(r.raw_bytes)} raw"
        + (f", {r.compression_ratio:.1f}x compressed" if r.compression_ratio else ""),
        f"placement {where}" + (f"  (reason: {detail.reason})" if detail.reason else ""),
        *([f"why here  {detail.room_note}"] if detail.room_note else []),
        f"usage     freq {r.freq:.4f}/s, {r.hits:,} hits, {r.misses:,} misses, last access {fmt_ago_now(r.last_access_at)}",
        f"utility   {fmt_float(r.utility, 4)} (alpha {detail.alpha:g})   pin {pin}   quality floor {fmt_float(r.quality_floor, 2)}",
    ]
    sys.stdout.write("\n".join(lines) + "\n\n")
    print_table([profile_record(x) for x in detail.profiles], PROFILE_COLUMNS, title="Profiles")
    options = [{**o, "mark": "*" if o["chosen"] else "", "fit": "yes" if o["fits"] else "no"} for o in data["options"]]
    source = {"manager": "the manager's cost model", "default": "default costs (no manager model stored)"}
    title = f"Options (* = current placement; TTFT from {source.get(detail.cost_model, 'no cost model')})"
    print_table(options, OPTION_COLUMNS, title=title)
    print_table([_event_record(e) for e in detail.events], EVENT_COLUMNS, title="Recent events")
    if data["lifetimes"]:
        print_table(data["lifetimes"], LIFETIME_COLUMNS, title="Evictions (how long each copy lived, how idle it was)")


def tiers(output: OutputOpt = OutputFormat.table, db: DbOpt = None) -> None:
    """Capacity, use, bandwidth and hit rate per tier (and GPUs through NVML where present)."""
    from evicctl.snapshot.lifetimes import TierLifetimes, tier_lifetimes
    from evicctl.snapshot.read import read_manager, read_tiers

    with open_reader(db) as store:
        rows = read_tiers(store)
        lifetimes = tier_lifetimes(store, [t.name for t in rows])
        manager = read_manager(store)
    none = TierLifetimes(0, None, None)
    records = [{**dataclasses.asdict(t), "used_fraction": t.used_fraction,
                **dataclasses.asdict(lifetimes.get(t.name, none))} for t in rows]  # fmt: skip
    if output is OutputFormat.table:
        cols = (
            Column("name", "TIER", style="bold"), Column("backend", "BACKEND"),
            Column("capacity_bytes", "CAPACITY", fmt_bytes, "right"), Column("used_bytes", "USED", fmt_bytes, "right"),
            Column("used_fraction", "USE", fmt_pct, "right"), Column("read_bps", "READ", fmt_bps, "right"),
            Column("write_bps", "WRITE", fmt_bps, "right"), Column("contexts", "CONTEXTS", fmt_int, "right"),
            Column("hits", "HITS", fmt_int, "right"), Column("hit_rate_1m", "HIT RATE 1m", fmt_pct, "right"),
            Column("median_lifetime_s", "LIFETIME p50", fmt_duration, "right"),
            Column("median_idle_s", "IDLE@EVICT p50", fmt_duration, "right"),
            Column("occupancy_history", "OCCUPANCY", sparkline),
        )
        print_table(records, cols)
        if manager is not None:
            sys.stdout.write(f"codecs run on: {manager.description.codec_backend}\n")
        gpus = gpu_records()
        if gpus:
            print_table(gpus, GPU_COLUMNS, title="GPUs (NVML)")
        return
    fields = TIER_FIELDS if output is not OutputFormat.csv else TIER_FIELDS[:-1]
    print_records(records, fields, output)


GPU_COLUMNS = (
    Column("index", "GPU", str, "right"), Column("name", "NAME"),
    Column("memory_used_bytes", "MEM USED", fmt_bytes, "right"),
    Column("memory_total_bytes", "MEM TOTAL", fmt_bytes, "right"),
    Column("utilization", "UTIL", fmt_pct, "right"),
)


def gpu_records() -> list[dict]:
    """GPU memory and utilisation through NVML (the dashboard's reader); [] without a driver.
    Never raises: an unreadable field is None (N/A)."""
    from evicctl.telemetry import TelemetryReader

    reader = TelemetryReader(disk_path=None)
    try:
        gpus = reader.read().gpus
    finally:
        reader.close()
    return [{"index": g.index, "name": g.name, "memory_used_bytes": g.memory_used_bytes,
             "memory_total_bytes": g.memory_total_bytes,
             "utilization": None if g.utilization_pct is None else g.utilization_pct / 100} for g in gpus]  # fmt: skip


LIFETIME_COLUMNS = (
    Column("ts", "TIME", fmt_time), Column("kind", "KIND", style="bold"), Column("from_tier", "FROM"),
    Column("to_tier", "TO", lambda v: v or "-"), Column("lifetime_s", "LIFETIME", fmt_duration, "right"),
    Column("age_s", "AGE", fmt_duration, "right"), Column("idle_s", "IDLE", fmt_duration, "right"),
    Column("hits", "HITS", fmt_int, "right"), Column("from_bytes", "BYTES", fmt_bytes, "right"),
)


EVENT_FIELDS = ("id", "ts", "context_id", "kind", "from_tier", "to_tier", "from_codec", "to_codec", "bytes",
                "utility_before", "utility_after", "reason", "actor", "command_id")


def _place(tier, codec) -> str:
    return "/".join(p for p in (tier, codec) if p) or "-"


def _event_record(e) -> dict:
    d = dataclasses.asdict(e)
    d["from"] = _place(e.from_tier, e.from_codec)
    d["to"] = _place(e.to_tier, e.to_codec)
    if e.utility_before is not None or e.utility_after is not None:
        d["utility"] = f"{fmt_float(e.utility_before, 3)} -> {fmt_float(e.utility_after, 3)}"
    return d


EVENT_COLUMNS = (
    Column("id", "ID", str, "right", priority=3), Column("ts", "TIME", fmt_time), Column("context_id", "CONTEXT"),
    Column("kind", "KIND", style="bold"), Column("from", "FROM"), Column("to", "TO"),
    Column("bytes", "BYTES", fmt_bytes, "right", priority=2), Column("utility", "UTILITY", priority=1),
    Column("reason", "REASON"), Column("actor", "ACTOR", priority=4),
    Column("command_id", "CMD", lambda v: "" if v is None else str(v), priority=0),
)


def event_line(e) -> str:
    """One event as one line (history --follow on a terminal, mutation reports)."""
    rec = _event_record(e)
    parts = [fmt_time(e.ts), f"#{e.id}", e.context_id or "-", e.kind]
    if rec["from"] != "-" or rec["to"] != "-":
        parts.append(f"{rec['from']} -> {rec['to']}")
    if e.reason:
        parts.append(f"({e.reason})")
    parts.append(f"by {e.actor}" + (f" [command {e.command_id}]" if e.command_id else ""))
    return "  ".join(parts)


def history(
    context: Annotated[str | None, typer.Argument(help="Only this context's events.")] = None,
    since: Annotated[str | None, typer.Option(help="A duration back (30m, 1h, 2d) or a time (2026-11-29T10:00).")] = None,
    kind: Annotated[str | None, typer.Option(help="Event kind: admit, move, compress, evict, drop, pin, command, ...")] = None,
    actor: Annotated[str | None, typer.Option(help="'policy' or an OS user.")] = None,
    limit: Annotated[int, typer.Option(min=0, help="The latest N events (0 = all).")] = 100,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events until Ctrl-C.")] = False,
    output: OutputOpt = OutputFormat.table,
    db: DbOpt = None,
) -> None:
    """The audit trail: what moved, from where to where, why, and who asked."""
    from evicctl.snapshot.read import last_event_id, read_events

    if follow and output is OutputFormat.json:
        raise UsageError("--follow streams: use -o jsonl, csv or table, not json")
    since_ts = parse_since(since) if since is not None else None
    filters = dict(context_id=context, kind=kind, actor=actor)
    with open_reader(db) as store:
        with store.read():  # the listing and the follow start point from one snapshot
            events = read_events(store, **filters, since=since_ts, limit=limit or None)
            start_id = last_event_id(store)
        if context is not None and not events and not store.query("SELECT 1 FROM contexts WHERE id = ?", (context,)):
            raise NoSuchContextError(context)
        if not follow:
            _print_events(events, output)
            return
        emit = _event_emitter(output)
        for e in events:
            emit(e)
        sys.stdout.flush()
        _follow(store, filters, start_id, emit)


def _print_events(events, output: OutputFormat) -> None:
    if output is OutputFormat.table:
        print_table([_event_record(e) for e in events], EVENT_COLUMNS, caption=f"{len(events)} events")
    else:
        print_records((dataclasses.asdict(e) for e in events), EVENT_FIELDS, output)


def _event_emitter(output: OutputFormat):
    import csv
    import json

    if output is OutputFormat.jsonl:
        return lambda e: sys.stdout.write(json.dumps(dataclasses.asdict(e)) + "\n")
    if output is OutputFormat.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(EVENT_FIELDS)
        return lambda e: writer.writerow(["" if v is None else v for v in dataclasses.astuple(e)])
    if stdout_is_terminal():
        from evicctl.console.output import console

        con = console()
        return lambda e: con.print(event_line(e), markup=False)
    return lambda e: sys.stdout.write(event_line(e) + "\n")


def _follow(store, filters: dict, after_id: int, emit) -> None:
    """Poll for new events (PRAGMA data_version: a no-op when nothing committed) until Ctrl-C."""
    from evicctl.snapshot.read import read_events

    seen = None
    try:
        while True:
            version = store.data_version()
            if version != seen:
                seen = version
                while batch := read_events(store, **filters, after_id=after_id, limit=1000):
                    for e in batch:
                        emit(e)
                    after_id = batch[-1].id
                sys.stdout.flush()
            time.sleep(FOLLOW_POLL_S)
    except KeyboardInterrupt:
        return
