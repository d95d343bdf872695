"""The control channel: operators queue commands in `commands`; the manager applies them.

CLI side: `ControlClient.submit` writes a row, `.wait` polls for its outcome. Manager
side: `ControlServer.poll` notices new rows through `PRAGMA data_version` (a counter that
moves when another connection commits: a cheap check every tick, ~50 ms), claims each
pending command, calls the handler, and writes the outcome and its audit event in one
transaction. A heartbeat row tells the CLI at once whether anyone is listening.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evicctl.errors import (
    EvicctlError,
    NoManagerError,
    NoSuchContextError,
    RefusedError,
    StoreError,
    UnknownNameError,
    UsageError,
)
from evicctl.manager.description import ManagerDescription
from evicctl.store.database import Store
from evicctl.units import fmt_ago_now, fmt_time

log = logging.getLogger(__name__)

VERBS = ("pin", "unpin", "evict", "recompress", "promote")
WAIT_POLL_S = 0.005  # the CLI's poll period while waiting: cheap (one PRAGMA), keeps latency low
# Commands older than this when a manager first sees them are expired, not applied: an
# operator whose `evicctl pin` timed out an hour ago does not expect it to happen now.
DEFAULT_MAX_AGE_S = 60.0

# outcome status -> error kind written in result["error"] for failures
ERROR_KINDS: tuple[tuple[type[EvicctlError], str], ...] = (
    (NoSuchContextError, "no-such-context"),
    (UsageError, "usage"),
    (NoManagerError, "no-manager"),
)


@dataclass(frozen=True)
class Command:
    id: int
    verb: str
    context_id: str | None
    args: dict = field(hash=False)
    actor: str
    created_at: float


@dataclass(frozen=True)
class ManagerStatus:
    alive: bool
    pid: int | None
    heartbeat_at: float | None
    host: str | None = None
    version: str | None = None
    stopped_at: float | None = None

    def describe(self, db_path: Path | str | None = None) -> str:
        """The one line the CLI prints when no manager is running."""
        if self.pid is None:
            where = f" on {db_path}" if db_path else ""
            return f"no manager running (none has ever started{where}; start one with evicctl demo)"
        when = _ago(self.heartbeat_at)
        if self.stopped_at is not None:
            return f"no manager running (stopped {_ago(self.stopped_at)}; last heartbeat {when} by pid {self.pid} on {self.host})"
        return f"no manager running (last heartbeat {when} by pid {self.pid} on {self.host})"


@dataclass(frozen=True)
class CommandOutcome:
    status: str  # done | refused | failed
    result: dict

    @property
    def message(self) -> str:
        return str(self.result.get("message", ""))

    def raise_for_status(self) -> None:
        """Turn a refusal or failure into the typed error the CLI maps to an exit code."""
        if self.status == "done":
            return
        if self.status == "refused":
            raise RefusedError(self.message or "refused by the manager")
        kind = self.result.get("error")
        if kind == "no-such-context":
            raise NoSuchContextError(str(self.result.get("context_id", "")))
        if kind == "usage":
            raise UsageError(self.message)
        raise EvicctlError(self.message or f"command {self.status}")


def current_actor() -> str:
    """The OS user: the `actor` of every command and of its audit event."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (some containers)
        return f"uid:{os.getuid()}"


def _ago(ts: float | None) -> str:
    return "never" if ts is None else f"{fmt_time(ts)} ({fmt_ago_now(ts)})"


def read_manager_status(store: Store, *, now: float | None = None) -> ManagerStatus:
    rows = store.query(
        "SELECT pid, host, version, heartbeat_at, stopped_at, config_json FROM manager WHERE id = 1"
    )
    if not rows:
        return ManagerStatus(False, None, None)
    r = rows[0]
    try:
        timeout_s = ManagerDescription.from_json(r["config_json"]).heartbeat_timeout_s
    except StoreError:  # an unreadable description: judge the heartbeat by the default timeout
        timeout_s = ManagerDescription().heartbeat_timeout_s
    now = time.time() if now is None else now
    alive = r["stopped_at"] is None and now - r["heartbeat_at"] <= timeout_s
    return ManagerStatus(alive, r["pid"], r["heartbeat_at"], r["host"], r["version"], r["stopped_at"])


class ControlServer:
    """The manager's side. Call `heartbeat()` and `poll(handler)` from the control thread."""

    def __init__(
        self,
        store: Store,
        version: str,
        config_json: dict | str,
        *,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        on_finish: Callable[[str, str], None] | None = None,
    ) -> None:
        self.store, self.version, self.max_age_s = store, version, max_age_s
        self.on_finish = on_finish  # (verb, status) of every answered command: the manager's metrics
        self.config_json = config_json if isinstance(config_json, str) else json.dumps(config_json, default=str)
        self.pid, self.host = os.getpid(), socket.gethostname()
        self.started_at = time.time()
        self._seen_version: int | None = None  # None: look at the table on the first poll

    def heartbeat(self, config_json: dict | str | None = None) -> None:
        """Upsert the manager row (pid, host, heartbeat, config); ~every tick."""
        if config_json is not None:
            self.config_json = config_json if isinstance(config_json, str) else json.dumps(config_json, default=str)
        with self.store.transaction() as conn:
            conn.execute(
                "INSERT INTO manager (id, pid, host, started_at, heartbeat_at, stopped_at, version, config_json)"
                " VALUES (1, ?, ?, ?, ?, NULL, ?, ?) ON CONFLICT (id) DO UPDATE SET pid = excluded.pid,"
                " host = excluded.host, started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at,"
                " stopped_at = NULL, version = excluded.version, config_json = excluded.config_json",
                (self.pid, self.host, self.started_at, time.time(), self.version, self.config_json),
            )

    def stop(self) -> None:
        with self.store.transaction() as conn:
            conn.execute("UPDATE manager SET stopped_at = ? WHERE id = 1 AND pid = ?", (time.time(), self.pid))

    def pending(self) -> list[Command]:
        rows = self.store.query(
            "SELECT id, verb, context_id, args_json, actor, created_at FROM commands"
            " WHERE status = 'pending' ORDER BY id"
        )
        return [Command(r["id"], r["verb"], r["context_id"], _loads(r["args_json"]), r["actor"], r["created_at"]) for r in rows]

    def poll(self, handler: Callable[[Command], dict | None], *, force: bool = False) -> int:
        """Apply every pending command; returns how many were handled.

        Without `force` it returns at once when no other connection committed since the
        last poll (commands come from other processes, so that is when new ones appear).
        """
        version = self.store.data_version()
        if not force and self._seen_version is not None and version == self._seen_version:
            return 0
        self._seen_version = version
        handled = 0
        for command in self.pending():
            if self._claim(command.id):
                try:
                    self._apply(command, handler)
                except Exception as exc:  # a row no CLI would write must not stay `running` nor stop the loop
                    log.exception("command %s could not be answered", command.id)
                    self._fail_plain(command.id, f"internal error: {type(exc).__name__}: {exc}")
                handled += 1
        return handled

    def _fail_plain(self, command_id: int, message: str) -> None:
        with self.store.transaction() as conn:
            conn.execute(
                "UPDATE commands SET status = 'failed', result = ?, finished_at = ? WHERE id = ?",
                (json.dumps({"message": message[:2000], "error": "internal"}), time.time(), command_id),
            )

    def _claim(self, command_id: int) -> bool:
        """pending -> running; a CLI that gave up meanwhile has set it to failed."""
        with self.store.transaction() as conn:
            cur = conn.execute(
                "UPDATE commands SET status = 'running' WHERE id = ? AND status = 'pending'", (command_id,)
            )
            return cur.rowcount == 1

    def _apply(self, command: Command, handler: Callable[[Command], dict | None]) -> None:
        created_at = command.created_at
        if not isinstance(created_at, int | float):  # written by hand: SQLite columns take any type
            status, result = "failed", {"message": f"malformed: created_at {str(created_at)[:40]!r} is not a time",
                                        "error": "usage"}  # fmt: skip
        elif time.time() - created_at > self.max_age_s:
            status, result = "failed", {
                "message": f"expired: not picked up within {self.max_age_s:.0f} s", "error": "expired",
            }
        elif command.verb not in VERBS:
            status, result = "failed", {"message": str(UnknownNameError("verb", command.verb, VERBS)), "error": "usage"}
        else:
            status, result = _run_handler(command, handler)
        self._finish(command, status, result)

    def _finish(self, command: Command, status: str, result: dict) -> None:
        """Status, result and the audit event in ONE transaction."""
        args = command.args
        to_tier = _text_or_none(args.get("tier") or args.get("to"))
        to_codec = _text_or_none(args.get("codec"))
        message = result.get("message") or ""
        reason = f"{command.verb} {status}" + (f": {message}" if message else "")
        now = time.time()
        with self.store.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO events (ts, context_id, kind, to_tier, to_codec, reason, actor, command_id)"
                " VALUES (?, ?, 'command', ?, ?, ?, ?, ?)",
                (now, command.context_id, to_tier, to_codec, reason, command.actor, command.id),
            )
            result = {**result, "command_event_id": cur.lastrowid}
            conn.execute(
                "UPDATE commands SET status = ?, result = ?, finished_at = ? WHERE id = ?",
                (status, json.dumps(result, default=str), now, command.id),
            )
        if self.on_finish is not None:
            self.on_finish(command.verb, status)


def _run_handler(command: Command, handler: Callable[[Command], dict | None]) -> tuple[str, dict]:
    try:
        result = dict(handler(command) or {})
    except RefusedError as exc:
        return "refused", {"message": str(exc), "error": "refused"}
    except EvicctlError as exc:
        kind = next((k for cls, k in ERROR_KINDS if isinstance(exc, cls)), "error")
        result = {"message": str(exc), "error": kind}
        if isinstance(exc, NoSuchContextError):
            result["context_id"] = exc.context_id
        return "failed", result
    except Exception as exc:  # a bug in a handler must not stop the manager's loop
        log.exception("control handler failed on command %s", command.id)
        return "failed", {"message": f"internal error: {type(exc).__name__}: {exc}", "error": "internal"}
    result.setdefault("message", "")
    return "done", result


def fail_interrupted(store: Store) -> int:
    """Answer the commands a previous manager claimed but never answered (it died between
    applying one and writing its outcome): `failed`, with an audit event each, in one
    transaction. Without this they stay `running` forever and `evicctl` waits on them in vain.
    Called at a manager's start, before its first poll; returns how many it answered."""
    message = "interrupted: the manager stopped while applying it; it may have taken effect (see the context's events)"
    now = time.time()
    with store.transaction() as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM commands WHERE status = 'running'")]
        for command_id in ids:
            conn.execute(
                "INSERT INTO events (ts, context_id, kind, reason, actor, command_id)"
                " SELECT ?, context_id, 'command', verb || ' failed: ' || ?, actor, id FROM commands WHERE id = ?",
                (now, message, command_id),
            )
            conn.execute(
                "UPDATE commands SET status = 'failed', finished_at = ?, result = ? WHERE id = ?",
                (now, json.dumps({"message": message, "error": "interrupted"}), command_id),
            )
    return len(ids)


def _text_or_none(value: Any) -> str | None:
    """An args value fit for an events column (hand-written rows may hold lists, numbers)."""
    return value if isinstance(value, str) else None


def _loads(text: str | None) -> dict:
    try:
        value = json.loads(text or "{}")
    except (ValueError, TypeError, RecursionError):  # RecursionError: '[' nested 100,000 deep
        return {}
    return value if isinstance(value, dict) else {}


SUBMIT_RETRY_S = 60.0  # how long submit waits out a database locked by another writer


class ControlClient:
    """The operator's side (CLI, dashboard): submit a command and wait for its outcome."""

    def __init__(self, store_path: Path | str | Store, *, heartbeat_timeout_s: float | None = None) -> None:
        if isinstance(store_path, Store):
            self._store: Store | None = store_path
            self.path = store_path.path
        else:
            self._store, self.path = None, Path(store_path)
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self._owned = not isinstance(store_path, Store)

    @property
    def store(self) -> Store:
        if self._store is None:
            # Writable (a command is a row) but never creates the file: no manager, no database.
            self._store = Store.open(self.path, create=False)
        return self._store

    def close(self) -> None:
        if self._store is not None and self._owned:
            self._store.close()
            self._store = None

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def manager_alive(self) -> ManagerStatus:
        status = read_manager_status(self.store)
        if self.heartbeat_timeout_s is not None and status.heartbeat_at is not None:
            alive = status.stopped_at is None and time.time() - status.heartbeat_at <= self.heartbeat_timeout_s
            status = ManagerStatus(alive, status.pid, status.heartbeat_at, status.host, status.version, status.stopped_at)
        return status

    def require_manager(self) -> ManagerStatus:
        status = self.manager_alive()
        if not status.alive:
            raise NoManagerError(status.describe(self.path))
        return status

    def submit(self, verb: str, context_id: str | None, args: dict | None = None, actor: str | None = None,
               *, retry_s: float = SUBMIT_RETRY_S) -> int:  # fmt: skip
        """Queue a command; returns its id. Another writer holding the database past SQLite's
        busy timeout (a backup, a long migration) is waited out for up to `retry_s`."""
        if verb not in VERBS:
            raise UnknownNameError("verb", verb, VERBS)
        row = (time.time(), actor or current_actor(), verb, context_id, json.dumps(args or {}))
        deadline = time.monotonic() + retry_s
        while True:
            try:
                with self.store.transaction() as conn:
                    cur = conn.execute(
                        "INSERT INTO commands (created_at, actor, verb, context_id, args_json) VALUES (?, ?, ?, ?, ?)", row
                    )
                    return int(cur.lastrowid)
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)  # each attempt already waited the busy timeout (seconds)

    def outcome(self, command_id: int) -> tuple[str, dict]:
        rows = self.store.query("SELECT status, result FROM commands WHERE id = ?", (command_id,))
        if not rows:
            raise EvicctlError(f"no command {command_id} in {self.path}")
        return rows[0]["status"], _loads(rows[0]["result"])

    def wait(self, command_id: int, timeout_s: float = 10.0) -> CommandOutcome:
        """Block until the manager finished the command; NoManagerError on timeout."""
        deadline = time.monotonic() + timeout_s
        seen = None
        while True:
            version = self.store.data_version()
            if version != seen:
                seen = version
                status, result = self.outcome(command_id)
                if status not in ("pending", "running"):
                    return CommandOutcome(status, result)
            if time.monotonic() >= deadline:
                raise NoManagerError(self._timeout_message(command_id, timeout_s))
            time.sleep(WAIT_POLL_S)

    def _timeout_message(self, command_id: int, timeout_s: float) -> str:
        message = f"cancelled: no answer within {timeout_s:g} s"
        with self.store.transaction() as conn:
            cur = conn.execute(
                "UPDATE commands SET status = 'failed', finished_at = ?, result = ? WHERE id = ? AND status = 'pending'",
                (time.time(), json.dumps({"message": message, "error": "timeout"}), command_id),
            )
            cancelled = cur.rowcount == 1
            if cancelled:  # the outcome is part of the audit trail too, in the same transaction
                conn.execute(
                    "INSERT INTO events (ts, context_id, kind, reason, actor, command_id)"
                    " SELECT ?, context_id, 'command', verb || ' failed: ' || ?, actor, id FROM commands WHERE id = ?",
                    (time.time(), message, command_id),
                )
        if cancelled:
            return f"timed out after {timeout_s:g} s waiting for the manager; command {command_id} cancelled"
        return (
            f"timed out after {timeout_s:g} s; command {command_id} is still running in the manager"
            " (see evicctl history --kind command)"
        )

    def events_of(self, outcome: CommandOutcome) -> tuple[Any, ...]:
        """The events a command caused: those the handler reported plus its audit event."""
        from evicctl.snapshot.read import read_events

        ids = [int(i) for i in outcome.result.get("event_ids") or () if isinstance(i, int | str) and str(i).isdigit()]
        if outcome.result.get("command_event_id"):
            ids.append(int(outcome.result["command_event_id"]))
        return read_events(self.store, ids=tuple(sorted(set(ids)))) if ids else ()
