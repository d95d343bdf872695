"""Operator actions from the dashboard: the same control channel as the CLI (commands table).

`perform(...)` runs in a thread worker: it checks the manager's heartbeat, queues one command
per context, waits for each outcome and sums them up as one `Outcome` for a notification.
Nothing is queued when no manager runs: a command left pending would fire, surprisingly,
whenever a manager next starts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evicctl.errors import EvicctlError, NoManagerError

WAIT_TIMEOUT_S = 10.0  # a tick is ~50 ms; a move of a large context to disk can take seconds


@dataclass(frozen=True)
class Request:
    verb: str  # pin | unpin | evict | recompress
    context_ids: tuple[str, ...]
    args: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        what = self.context_ids[0] if len(self.context_ids) == 1 else f"{len(self.context_ids)} contexts"
        detail = ", ".join(f"{k} {v}" for k, v in self.args.items() if v not in (None, False))
        return f"{self.verb} {what}" + (f" ({detail})" if detail else "")


@dataclass(frozen=True)
class Outcome:
    """What the operator is told. severity is Textual's: information | warning | error."""

    severity: str
    title: str
    message: str
    command_ids: tuple[int, ...] = ()
    statuses: tuple[str, ...] = ()  # per command: done | refused | failed | timeout


def _result_message(result: Any) -> str:
    if isinstance(result, dict):
        for key in ("message", "error", "reason"):
            if result.get(key):
                return str(result[key])
        return ""
    return "" if result is None else str(result)


def perform(db_path: Path | str, request: Request, *, actor: str | None = None,
            timeout_s: float = WAIT_TIMEOUT_S,
            client_factory: Callable[[Path], Any] | None = None) -> Outcome:
    """Submit `request` and wait for the manager's answers. Never raises."""
    try:
        if client_factory is None:
            from evicctl.control import ControlClient

            client_factory = ControlClient
        client = client_factory(Path(db_path))
    except EvicctlError as exc:
        return Outcome("error", "failed", f"{request.describe()}: {exc}")
    try:
        status = client.manager_alive()
        if not status.alive:
            return Outcome("error", "no manager",
                           f"{request.describe()}: {_no_manager_text(status, db_path)}; nothing was sent")
        # actor None: the client records the OS user, as the CLI does.
        ids = [client.submit(request.verb, ctx, dict(request.args), actor)
               for ctx in request.context_ids]
        answers = [_wait(client, cid, timeout_s) for cid in ids]
    except EvicctlError as exc:
        return Outcome("error", "failed", f"{request.describe()}: {exc}")
    finally:
        close = getattr(client, "close", None)
        if close is not None:
            close()
    return summarise(request, ids, answers)


def _no_manager_text(status: Any, db_path: Path | str) -> str:
    describe = getattr(status, "describe", None)
    return describe(db_path) if describe is not None else "no manager running"


def _wait(client: Any, command_id: int, timeout_s: float) -> tuple[str, str]:
    try:
        outcome = client.wait(command_id, timeout_s)
    except NoManagerError as exc:
        return "timeout", str(exc) or f"no answer within {timeout_s:.0f} s"
    return outcome.status, _result_message(outcome.result)


def summarise(request: Request, ids: Sequence[int],
              answers: Sequence[tuple[str, str]]) -> Outcome:
    """One notification for one or many commands: the worst status sets the severity."""
    statuses = tuple(status for status, _ in answers)
    refs = ", ".join(f"#{i}" for i in ids)
    if len(answers) == 1:
        status, message = answers[0]
        text = f"{request.describe()}: {message or status} (command {refs})"
    else:
        counts = {s: statuses.count(s) for s in dict.fromkeys(statuses)}
        text = f"{request.describe()}: " + ", ".join(f"{n} {s}" for s, n in counts.items())
        problems = [f"{ctx}: {msg or status}" for ctx, (status, msg)
                    in zip(request.context_ids, answers, strict=True) if status != "done"]
        if problems:
            text += "; " + "; ".join(problems[:3]) + (" …" if len(problems) > 3 else "")
        text += f" (commands {refs})"
    if all(s == "done" for s in statuses):
        return Outcome("information", "done", text, tuple(ids), statuses)
    if "timeout" in statuses:
        return Outcome("error", "no answer", text, tuple(ids), statuses)
    if "failed" in statuses:
        return Outcome("error", "failed", text, tuple(ids), statuses)
    return Outcome("warning", "refused", text, tuple(ids), statuses)
