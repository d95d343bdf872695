"""`evicctl fleet ...` (also spelled `evicctl --fleet URL CMD` and `evicctl CMD --fleet URL`):
every manager that shares the cluster at once, with a HOST/ENGINE column and how stale each
manager's published state is. Mutations go to the manager(s) holding the context; each
answer is reported."""

from __future__ import annotations

import sys
import time
from typing import Annotated

import typer

from evicctl.console.output import Column, OutputFormat, print_records, print_table
from evicctl.errors import (
    EXIT_NO_CONTEXT,
    EXIT_NO_MANAGER,
    EXIT_REFUSED,
    EvicctlError,
    NoSuchContextError,
)
from evicctl.units import decimals, fmt_ago_now, fmt_bytes, fmt_int, fmt_pct, fmt_time

fleet_app = typer.Typer(name="fleet", help="Every manager sharing one cluster: ls, tiers, history, show, top, pin, evict, ...",
                        no_args_is_help=True)  # fmt: skip

UrlOpt = Annotated[str, typer.Option("--url", "--fleet", envvar="EVICCTL_FLEET", help="The fleet's Redis: redis://HOST:PORT.")]
NamespaceOpt = Annotated[str, typer.Option(help="The fleet's key namespace (TierConfig.namespace).")]
OutOpt = Annotated[OutputFormat, typer.Option("--output", "-o", case_sensitive=False, help="table, json, jsonl or csv.")]
FLEET_VERBS = ("pin", "unpin", "evict", "recompress", "promote")
FLEET_READS = ("ls", "tiers", "history", "show", "top")


def fleet_argv(argv: list[str]) -> list[str]:
    """`evicctl --fleet URL ls ...` / `evicctl ls --fleet URL ...` -> `evicctl fleet ls --url URL ...`."""
    args = list(argv)
    for i, a in enumerate(args):
        if a == "--fleet" and i + 1 < len(args) or a.startswith("--fleet="):
            url = a.split("=", 1)[1] if "=" in a else args[i + 1]
            rest = args[:i] + args[i + (1 if "=" in a else 2):]
            verb = next((x for x in rest if not x.startswith("-")), None)
            if verb in FLEET_READS + FLEET_VERBS and (not rest or rest[0] != "fleet"):
                k = rest.index(verb)
                return ["fleet", verb, "--url", url, *rest[:k], *rest[k + 1:]]
    return args


def _view(url: str, namespace: str):
    from evicctl.fleet.view import FleetView

    return FleetView(url, namespace)


WHERE = Column("where", "HOST/ENGINE", style="bold")
AGE = Column("age", "AGE")
LS_COLUMNS = (WHERE, AGE, Column("id", "ID"), Column("tenant", "TENANT", priority=3), Column("tier", "TIER"),
              Column("codec", "CODEC"), Column("stored_bytes", "SIZE", fmt_bytes, "right"),
              Column("freq", "FREQ", decimals(4), "right", priority=2), Column("hits", "HITS", fmt_int, "right"),
              Column("utility", "UTILITY", decimals(3), "right", priority=1))  # fmt: skip
LS_FIELDS = ("manager", "where", "age", "id", "tenant", "tier", "codec", "stored_bytes", "freq", "hits", "misses", "utility")


@fleet_app.command("ls")
def fleet_ls(url: UrlOpt, namespace: NamespaceOpt = "evk", tier: Annotated[str | None, typer.Option(help="Only contexts on this tier.")] = None,
             output: OutOpt = OutputFormat.table) -> None:  # fmt: skip
    """Every manager's contexts, one row per (manager, context)."""
    with _view(url, namespace) as view:
        managers = view.managers()
        rows = [r for r in view.contexts(managers) if tier is None or r.get("tier") == tier]
    rows.sort(key=lambda r: (r["id"], r["where"]))
    if output is OutputFormat.table:
        print_table(rows, LS_COLUMNS, caption=f"{len(rows)} rows from {len(managers)} managers")
    else:
        print_records(rows, LS_FIELDS, output)


def manager_records(view) -> list[dict]:
    from evicctl.fleet.view import staleness

    out = []
    for m in view.managers():
        shared = m.summary.get("shared", {})
        out.append({"manager": m.id, "where": m.where, "age": staleness(m), "state": m.state,
                    "leader": m.summary.get("leader", False), "shared_state": shared.get("state"),
                    "held_bytes": shared.get("held_bytes"), "contexts": m.summary.get("contexts"),
                    "tiers": m.summary.get("tiers", []), "refusals": len(shared.get("refusals", []))})  # fmt: skip
    return out


TIER_COLUMNS = (WHERE, AGE, Column("name", "TIER"), Column("backend", "BACKEND"), Column("state", "STATE"),
                Column("capacity_bytes", "CAPACITY", fmt_bytes, "right"), Column("used_bytes", "USED", fmt_bytes, "right"),
                Column("used_fraction", "USE", fmt_pct, "right"), Column("hits", "HITS", fmt_int, "right"),
                Column("contexts", "CONTEXTS", fmt_int, "right"))  # fmt: skip
TIER_FIELDS = ("manager", "where", "age", "name", "backend", "state", "capacity_bytes", "used_bytes", "used_fraction",
               "hits", "contexts")  # fmt: skip


def tier_rows(managers: list[dict]) -> list[dict]:
    rows = []
    for m in managers:
        for t in m["tiers"]:
            state = m["shared_state"] if t.get("backend") == "redis" else "ok"
            rows.append({**t, "manager": m["manager"], "where": m["where"], "age": m["age"],
                         "state": state if m["state"] == "live" else f"{state} ({m['state']})"})  # fmt: skip
    return rows


def shared_line(shared: dict) -> str:
    used, cap = shared["used_bytes"], shared["capacity_bytes"]
    tenants = ", ".join(f"{t} {fmt_bytes(v['used_bytes'])}" + (f"/{fmt_bytes(v['quota_bytes'])}" if v["quota_bytes"] else "")
                        for t, v in sorted(shared["tenants"].items()))  # fmt: skip
    leader = f"{shared['leader']} (epoch {shared['epoch']})" if shared["leader"] else f"none (epoch {shared['epoch']})"
    return (f"shared tier: {fmt_bytes(used)} of {fmt_bytes(cap)} used cluster-wide; leader {leader}; "
            f"{shared['refusals']} refused writes" + (f"; tenants: {tenants}" if tenants else ""))


@fleet_app.command("tiers")
def fleet_tiers(url: UrlOpt, namespace: NamespaceOpt = "evk", output: OutOpt = OutputFormat.table) -> None:
    """Every manager's tiers, the shared tier's state as each sees it, and the cluster's accounting."""
    with _view(url, namespace) as view:
        managers = manager_records(view)
        shared = _shared_or_none(view)
    rows = tier_rows(managers)
    if output is not OutputFormat.table:
        print_records(rows, TIER_FIELDS, output)
        return
    print_table(rows, TIER_COLUMNS)
    sys.stdout.write((shared_line(shared) if shared else "shared tier: its ledger's node does not answer") + "\n")


def _shared_or_none(view) -> dict | None:
    from evicctl.fleet.view import FleetUnreachableError

    try:
        return view.shared()
    except FleetUnreachableError:
        return None


EVENT_COLUMNS = (Column("ts", "TIME", fmt_time), Column("where", "HOST/ENGINE", style="bold"), Column("context_id", "CONTEXT"),
                 Column("kind", "KIND"), Column("from", "FROM"), Column("to", "TO"), Column("reason", "REASON"),
                 Column("actor", "ACTOR", priority=2))  # fmt: skip
EVENT_FIELDS = ("ts", "manager", "id", "context_id", "kind", "from_tier", "to_tier", "from_codec", "to_codec", "bytes",
                "reason", "actor", "command_id")  # fmt: skip


def _event_rows(view, events: list[dict]) -> list[dict]:
    hosts = {m.id: m.where for m in view.managers()}
    for e in events:
        e["where"] = hosts.get(e["manager"], f"?/{e['manager']}")
        e["from"] = "/".join(x for x in (e.get("from_tier"), e.get("from_codec")) if x) or "-"
        e["to"] = "/".join(x for x in (e.get("to_tier"), e.get("to_codec")) if x) or "-"
    return events


@fleet_app.command("history")
def fleet_history(url: UrlOpt, context: Annotated[str | None, typer.Argument(help="Context id (default: all).")] = None, namespace: NamespaceOpt = "evk",
                  kind: Annotated[str | None, typer.Option(help="Only events of this kind.")] = None, since: Annotated[str | None, typer.Option(help="Only events since: 1h, 10m or an ISO time.")] = None,
                  limit: Annotated[int, typer.Option(min=0, help="At most N events.")] = 100, output: OutOpt = OutputFormat.table) -> None:  # fmt: skip
    """Every manager's events (and the fleet leader's evictions), oldest first."""
    from evicctl.timeparse import parse_since

    with _view(url, namespace) as view:
        events = _event_rows(view, view.events(context_id=context, kind=kind, limit=limit,
                                                since=parse_since(since) if since else None))  # fmt: skip
    if output is OutputFormat.table:
        print_table(events, EVENT_COLUMNS, caption=f"{len(events)} events")
    else:
        print_records(events, EVENT_FIELDS, output)


@fleet_app.command("show")
def fleet_show(url: UrlOpt, context: Annotated[str, typer.Argument(help="Context id.")], namespace: NamespaceOpt = "evk",
               output: OutOpt = OutputFormat.table) -> None:  # fmt: skip
    """One context on every manager that knows it, and its recent events fleet-wide."""
    import json

    with _view(url, namespace) as view:
        rows = [r for r in view.contexts(view.managers()) if r["id"] == context]
        if not rows:
            raise NoSuchContextError(context)
        events = _event_rows(view, view.events(context_id=context, limit=20))
    if output is not OutputFormat.table:
        sys.stdout.write(json.dumps({"context_id": context, "managers": rows, "events": events}, indent=2, default=str) + "\n")
        return
    print_table(rows, LS_COLUMNS, title=f"{context} on {len(rows)} managers")
    print_table(events, EVENT_COLUMNS, title="Recent events (fleet-wide)")


@fleet_app.command("top")
def fleet_top(url: UrlOpt, namespace: NamespaceOpt = "evk", interval: Annotated[float, typer.Option(min=0.25, help="Seconds between refreshes.")] = 1.0,
              once: Annotated[bool, typer.Option("--once", help="Print one frame and exit.")] = False) -> None:  # fmt: skip
    """The fleet, refreshed: managers with staleness and leadership, tiers, the shared tier's accounting."""
    with _view(url, namespace) as view:
        while True:
            managers = manager_records(view)
            shared = _shared_or_none(view)
            rows = [{**m, "role": "leader" if m["leader"] else ""} for m in managers]
            if not once:
                sys.stdout.write("\x1b[2J\x1b[H")
            sys.stdout.write(f"evicctl fleet {url}  {time.strftime('%H:%M:%S')}\n")
            print_table(rows, (WHERE, AGE, Column("state", "STATE"), Column("role", "ROLE"),
                               Column("shared_state", "SHARED TIER"), Column("held_bytes", "HELD", fmt_bytes, "right"),
                               Column("contexts", "CONTEXTS", fmt_int, "right"),
                               Column("refusals", "REFUSED", fmt_int, "right")), title="Managers")  # fmt: skip
            print_table(tier_rows(managers), TIER_COLUMNS, title="Tiers")
            sys.stdout.write((shared_line(shared) if shared else "shared tier: its ledger's node does not answer") + "\n")
            sys.stdout.flush()
            if once:
                return
            time.sleep(interval)


# ---------------------------------------------------------------- mutations


def _mutate(url: str, namespace: str, verb: str, context: str, args: dict, timeout_s: float, output: OutputFormat) -> None:
    import json

    from evicctl.control import current_actor
    from evicctl.fleet.command import send

    with _view(url, namespace) as view:
        managers = view.managers()
        targets = [m for m in view.owners(context, managers) if m.state != "gone"]
        if not targets:
            if any(m.state == "gone" for m in view.owners(context, managers)):
                raise EvicctlError(f"no live manager holds {context!r} (those that did stopped heartbeating)")
            raise NoSuchContextError(context)
        answers = send(view, verb, context, args, targets, timeout_s=timeout_s, actor=current_actor())
    where = {m.id: m.where for m in managers}
    if output in (OutputFormat.json, OutputFormat.jsonl):
        for a in answers:
            a["where"] = where.get(a["manager"], a["manager"])
        sys.stdout.write(json.dumps(answers, indent=2 if output is OutputFormat.json else None, default=str) + "\n")
    else:
        for a in answers:
            head = f"{where.get(a['manager'], a['manager'])}: {a['status']}"
            if a.get("command_id"):
                head += f" (command {a['command_id']})"
            sys.stdout.write(head + (f": {a['message']}" if a.get("message") else "") + "\n")
            for e in a.get("events") or ():
                sys.stdout.write(f"  event  {fmt_ago_now(e['ts'])}  {e['kind']}  {e.get('reason') or ''}\n")
    raise typer.Exit(_exit_code(answers))


def _exit_code(answers: list[dict]) -> int:
    statuses = [a["status"] for a in answers]
    if all(s == "done" for s in statuses):
        return 0
    if any(s == "refused" for s in statuses):
        return EXIT_REFUSED
    if all(s == "timeout" for s in statuses):
        return EXIT_NO_MANAGER
    if all(a.get("exit_code") == EXIT_NO_CONTEXT for a in answers):
        return EXIT_NO_CONTEXT
    return 1


TimeoutOpt = Annotated[float, typer.Option("--timeout", min=0.0, help="Seconds each manager has to answer.")]


@fleet_app.command("pin")
def fleet_pin(url: UrlOpt, context: Annotated[str, typer.Argument(help="Context id.")], tier: Annotated[str | None, typer.Option(help="Keep it on this tier.")] = None,
              codec: Annotated[str | None, typer.Option(help="Keep it at this codec.")] = None, namespace: NamespaceOpt = "evk",
              timeout: TimeoutOpt = 10.0, output: OutOpt = OutputFormat.table) -> None:  # fmt: skip
    """Pin the context on every manager that holds it."""
    args = {k: v for k, v in (("tier", tier), ("codec", codec)) if v is not None}
    _mutate(url, namespace, "pin", context, args, timeout, output)


@fleet_app.command("unpin")
def fleet_unpin(url: UrlOpt, context: Annotated[str, typer.Argument(help="Context id.")], namespace: NamespaceOpt = "evk",
                timeout: TimeoutOpt = 10.0, output: OutOpt = OutputFormat.table) -> None:  # fmt: skip
    """Unpin the context on every manager that holds it."""
    _mutate(url, namespace, "unpin", context, {}, timeout, output)


@fleet_app.command("evict")
def fleet_evict(url: UrlOpt, context: Annotated[str, typer.Argument(help="Context id.")], to: Annotated[str, typer.Option("--to", help="A tier, or drop.")] = "drop",
                yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False, dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would happen; change nothing.")] = False,
                namespace: NamespaceOpt = "evk", timeout: TimeoutOpt = 10.0, output: OutOpt = OutputFormat.table) -> None:  # fmt: skip
    """Evict the context on every manager that holds it (asks first unless --yes or --dry-run)."""
    if not (yes or dry_run):
        from evicctl.errors import UsageError

        raise UsageError("a fleet evict reaches every manager holding the context: pass --yes (or --dry-run)")
    _mutate(url, namespace, "evict", context, {"to": to, "dry_run": dry_run}, timeout, output)


@fleet_app.command("recompress")
def fleet_recompress(url: UrlOpt, context: Annotated[str, typer.Argument(help="Context id.")], codec: Annotated[str, typer.Option(help="The codec to store it at.")],
                     dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would happen; change nothing.")] = False, namespace: NamespaceOpt = "evk",
                     timeout: TimeoutOpt = 10.0, output: OutOpt = OutputFormat.table) -> None:  # fmt: skip
    """Re-encode the context on every manager that holds it."""
    from evicctl.console.common import validate_codec

    _mutate(url, namespace, "recompress", context, {"codec": validate_codec(codec), "dry_run": dry_run, "force": False},
            timeout, output)  # fmt: skip
