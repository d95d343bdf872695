"""Operators' commands for a vLLM deployment (ControlServer.poll calls us on the recorder thread).

Only what this interface can honour is accepted. vLLM's CPU tier is the one tier the policy
sees and its chunks are raw KV, so:
- pin [--tier cpu]: the context's resident chunks are never chosen for eviction.
- unpin: clears that.
- evict [--to drop]: releases the context: its chunks become the first vLLM's manager frees
  on its next store (a policy may only answer vLLM's evict calls; it cannot free a chunk
  itself without breaking the manager's free-list accounting). Refused while pinned.
- recompress, promote: refused, with the reason.
"""

from __future__ import annotations

from evicctl.errors import NoSuchContextError, RefusedError, UsageError

TIER = "cpu"


class VllmCommandHandler:
    """`handler(command) -> result dict` for ControlServer.poll; `recorder` owns the mirror."""

    def __init__(self, recorder) -> None:
        self.recorder = recorder

    def __call__(self, command) -> dict:
        if not command.context_id:
            raise UsageError(f"{command.verb} needs a context id")
        verb = getattr(self, f"_{command.verb}", None)
        if verb is None:
            raise UsageError(f"unknown verb {command.verb!r}")
        if command.context_id not in self.recorder.contexts:
            raise NoSuchContextError(command.context_id)
        return verb(command)

    def _pin(self, command) -> dict:
        tier, codec = command.args.get("tier"), command.args.get("codec")
        if tier not in (None, TIER):
            raise RefusedError(f"vLLM's CPU offloading has one tier, {TIER}; cannot pin to {tier}")
        if codec not in (None, "none"):
            raise RefusedError("chunks in vLLM's CPU tier are raw KV (codec none); cannot pin a codec")
        ids = self.recorder.set_pin(command, True)
        n = self.recorder.policy.resident_chunks(command.context_id)
        return {"message": f"pinned {command.context_id} to {TIER}: its {n} resident chunk(s) are kept",
                "plan": [], "event_ids": ids}  # fmt: skip

    def _unpin(self, command) -> dict:
        was = self.recorder.contexts[command.context_id].pinned
        ids = self.recorder.set_pin(command, False)
        message = f"unpinned {command.context_id}" if was else f"{command.context_id} was not pinned"
        return {"message": message, "plan": [], "event_ids": ids}

    def _evict(self, command) -> dict:
        to = command.args.get("to")
        if to not in (None, "drop", "dropped"):
            raise RefusedError(f"vLLM's CPU offloading has one tier, {TIER}: evict --to drop (the default)")
        ctx = command.context_id
        if self.recorder.contexts[ctx].pinned:
            raise RefusedError(f"{ctx} is pinned (tier {TIER}); unpin it first")
        n = self.recorder.policy.resident_chunks(ctx)
        if n == 0:
            raise RefusedError(f"{ctx} is already dropped")
        if command.args.get("dry_run"):
            return {"message": f"dry run: would release {n} chunk(s) of {ctx}", "plan": [], "event_ids": []}
        self.recorder.policy.submit("release", ctx)
        return {"message": f"released {n} chunk(s) of {ctx}: vLLM frees them first on its next store",
                "plan": [], "event_ids": []}  # fmt: skip

    def _recompress(self, command) -> dict:
        raise RefusedError("vLLM's CPU tier stores raw chunks; compression inside vLLM is a design (docs/vllm.md)")

    def _promote(self, command) -> dict:
        raise RefusedError("GPU residency is vLLM's prefix cache's decision; the policy only orders CPU evictions")
