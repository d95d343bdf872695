"""Fleet commands: an operator's pin / unpin / evict / recompress / promote sent to every
manager that holds the context, each queued through that manager's own control channel by its
agent; every answer (or the lack of one) comes back to be reported."""

from __future__ import annotations

import json
import time
import uuid

from evicctl.fleet.view import FleetManager, FleetView


def send(view: FleetView, verb: str, context_id: str, args: dict, targets: list[FleetManager], *,
         timeout_s: float, actor: str) -> list[dict]:  # fmt: skip
    """One answer per target, in target order: its status, message, command id and events; a
    target that did not answer in time is {"status": "timeout"} (frozen, partitioned, dead)."""
    request_id = uuid.uuid4().hex[:12]
    for m in targets:
        request = {"request_id": f"{request_id}-{m.id}", "verb": verb, "context_id": context_id, "args": args,
                   "actor": actor, "timeout_s": timeout_s, "sent_at": time.time()}  # fmt: skip
        key = view.keys.commands(m.id)
        view.call(view.client.rpush, key, json.dumps(request))
        view.call(view.client.expire, key, max(60, int(timeout_s * 2)))
    deadline = time.monotonic() + timeout_s + 1.0  # the manager waits timeout_s; the reply needs a moment more
    answers = []
    for m in targets:
        left = max(0.05, deadline - time.monotonic())
        got = view.call(view.client.blpop, [view.keys.reply(f"{request_id}-{m.id}")], timeout=left)
        if got is None:
            answers.append({"manager": m.id, "host": m.host, "status": "timeout",
                            "message": f"no answer within {timeout_s:g} s (manager {m.state})"})  # fmt: skip
        else:
            answers.append(json.loads(got[1]))
    return answers
