"""Mutations: pin, unpin, evict, recompress, promote, through the control channel.

The CLI validates what it can (tier and codec names, the context id) before it queues
anything; the manager validates what only it can (a pin that cannot fit: exit 5).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Annotated, Any

import typer

from evicctl.console.common import (
    DbOpt,
    NoWaitOpt,
    OutputOpt,
    TimeoutOpt,
    db_path,
    open_reader,
    validate_codec,
    validate_tier,
)
from evicctl.console.output import OutputFormat, print_json
from evicctl.errors import EvicctlError, NoSuchContextError, UsageError

DEFAULT_TIMEOUT_S = 10.0
DROP = "drop"


def register(app: typer.Typer) -> None:
    for fn in (pin, unpin, evict, recompress, promote):
        app.command(fn.__name__)(fn)


ContextArg = Annotated[str, typer.Argument(help="Context id.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Show the plan; change nothing.")]


def stdin_is_terminal() -> bool:
    return sys.stdin.isatty()


def _placement(store, context: str) -> str:
    rows = store.query(
        "SELECT p.tier, p.codec FROM contexts c LEFT JOIN placements p ON p.context_id = c.id WHERE c.id = ?", (context,)
    )
    if not rows:
        raise NoSuchContextError(context)
    tier, codec = rows[0]["tier"], rows[0]["codec"]
    return f"{tier}/{codec}" if tier else "not placed"


def pin(
    context: ContextArg,
    tier: Annotated[str | None, typer.Option(help="Keep the context on this tier.")] = None,
    codec: Annotated[str | None, typer.Option(help="Keep the context at this codec (e.g. int8, knorm@0.5+int8).")] = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT_S,
    no_wait: NoWaitOpt = False,
    output: OutputOpt = OutputFormat.table,
    db: DbOpt = None,
) -> None:
    """Pin a context to a tier and/or a codec; pins survive restarts. Without either, pin where it is."""
    args: dict[str, Any] = {}
    with open_reader(db) as store:
        if tier is not None:
            args["tier"] = validate_tier(store, tier)
        if codec is not None:
            args["codec"] = validate_codec(codec)
        _placement(store, context)
    submit_and_report("pin", context, args, timeout_s=timeout, no_wait=no_wait, output=output, db=db)


def unpin(
    context: ContextArg,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT_S,
    no_wait: NoWaitOpt = False,
    output: OutputOpt = OutputFormat.table,
    db: DbOpt = None,
) -> None:
    """Remove a context's pin: the policy places it again."""
    with open_reader(db) as store:
        _placement(store, context)
    submit_and_report("unpin", context, {}, timeout_s=timeout, no_wait=no_wait, output=output, db=db)


def evict(
    context: ContextArg,
    to: Annotated[str, typer.Option("--to", help="A lower tier, or 'drop' (recompute on next use).")] = DROP,
    dry_run: DryRunOpt = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT_S,
    no_wait: NoWaitOpt = False,
    output: OutputOpt = OutputFormat.table,
    db: DbOpt = None,
) -> None:
    """Move a context down to a tier, or drop its KV. Asks first on a terminal."""
    with open_reader(db) as store:
        validate_tier(store, to, extra=(DROP,))
        where = _placement(store, context)
    if not dry_run and not yes:
        if not stdin_is_terminal():
            raise UsageError("evict asks for confirmation and stdin is not a terminal: pass --yes (or --dry-run)")
        if not typer.confirm(f"Evict {context} ({where}) to {to}?", default=False):
            raise EvicctlError("not confirmed; nothing evicted")
    args = {"to": to, "dry_run": dry_run}
    submit_and_report("evict", context, args, timeout_s=timeout, no_wait=no_wait, output=output, db=db)


def recompress(
    context: ContextArg,
    codec: Annotated[str, typer.Option(help="Target codec, e.g. int8, snapkv@0.5, knorm@0.5+int8.")],
    dry_run: DryRunOpt = False,
    force: Annotated[bool, typer.Option("--force", help="Even below the context's quality floor.")] = False,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT_S,
    no_wait: NoWaitOpt = False,
    output: OutputOpt = OutputFormat.table,
    db: DbOpt = None,
) -> None:
    """Re-encode a context's KV with another codec, in place."""
    codec = validate_codec(codec)
    with open_reader(db) as store:
        _placement(store, context)
    args = {"codec": codec, "dry_run": dry_run, "force": force}
    submit_and_report("recompress", context, args, timeout_s=timeout, no_wait=no_wait, output=output, db=db)


def promote(
    context: ContextArg,
    tier: Annotated[str | None, typer.Option(help="Target tier (default: the fastest that fits).")] = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT_S,
    no_wait: NoWaitOpt = False,
    output: OutputOpt = OutputFormat.table,
    db: DbOpt = None,
) -> None:
    """Move a context up to a faster tier."""
    args: dict[str, Any] = {}
    with open_reader(db) as store:
        if tier is not None:
            args["tier"] = validate_tier(store, tier)
        _placement(store, context)
    submit_and_report("promote", context, args, timeout_s=timeout, no_wait=no_wait, output=output, db=db)


def submit_and_report(
    verb: str, context: str, args: dict, *, timeout_s: float, no_wait: bool, output: OutputFormat, db=None
) -> int:
    """Queue the command (exit 4 at once without a manager), wait, print its outcome and events."""
    from evicctl.control import ControlClient

    with ControlClient(db_path(db)) as client:
        client.require_manager()
        command_id = client.submit(verb, context, args)
        if no_wait:
            _report_queued(command_id, verb, context, args, output)
            return command_id
        outcome = client.wait(command_id, timeout_s)
        events = client.events_of(outcome)
    _report(command_id, verb, context, args, outcome, events, output)
    if outcome.status == "refused":
        from evicctl.errors import RefusedError

        raise RefusedError(f"command {command_id} refused: {outcome.message or 'no reason given'}")
    outcome.raise_for_status()
    return command_id


def _report_queued(command_id: int, verb: str, context: str, args: dict, output: OutputFormat) -> None:
    if output in (OutputFormat.json, OutputFormat.jsonl):
        record = {"command_id": command_id, "verb": verb, "context_id": context, "args": args, "status": "pending"}
        sys.stdout.write(json.dumps(record, indent=2 if output is OutputFormat.json else None) + "\n")
        return
    sys.stdout.write(f"command {command_id} queued: {verb} {context} {_args_text(args)}".rstrip() + "\n")


def _args_text(args: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in args.items() if v not in (None, False))


def _report(command_id, verb, context, args, outcome, events, output: OutputFormat) -> None:
    if output in (OutputFormat.json, OutputFormat.jsonl):
        record = {
            "command_id": command_id, "verb": verb, "context_id": context, "args": args,
            "status": outcome.status, "message": outcome.message, "result": outcome.result,
            "events": [dataclasses.asdict(e) for e in events],
        }
        if output is OutputFormat.json:
            print_json(record)
        else:
            sys.stdout.write(json.dumps(record, default=str) + "\n")
        return
    if outcome.status != "done":
        return  # the error line on stderr says it
    from evicctl.console.read import event_line

    head = f"command {command_id} done: {verb} {context} {_args_text(args)}".rstrip()
    lines = [head + (f": {outcome.message}" if outcome.message else "")]
    lines += [f"  plan   {_move_text(m)}" for m in outcome.result.get("plan") or ()]
    lines += [f"  event  {event_line(e)}" for e in events]
    sys.stdout.write("\n".join(lines) + "\n")


def _move_text(move: Any) -> str:
    if isinstance(move, dict):
        src = "/".join(str(move[k]) for k in ("from_tier", "from_codec") if move.get(k))
        dst = "/".join(str(move[k]) for k in ("to_tier", "to_codec") if move.get(k))
        text = f"{move.get('context_id', '')} {src or '-'} -> {dst or '-'}".strip()
        return text + (f" ({move['reason']})" if move.get("reason") else "")
    return str(move)
