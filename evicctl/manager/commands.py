"""Operator commands, applied by the manager's control thread (ControlServer.poll calls us).

Each verb checks the request against the context's state, asks the placer what the request
would do (the same plan a dry run returns), refuses with the reason when that plan cannot
hold (a pin that cannot fit, a codec the stored copy cannot become, a quality floor), and
otherwise executes it. Results: {"message", "plan": [moves], "event_ids": [...]}.

- pin {tier?, codec?, force?}: keep the context on that tier and/or at that codec, across
  restarts. Sets what it names and keeps the other half of an existing pin.
- unpin {}: clear both.
- evict {to?, dry_run}: to a slower tier (default: the next one down) or "drop"; the context
  stays at or below that tier until it is used again.
- recompress {codec, dry_run, force}: in place; refused below the quality floor unless force.
- promote {tier?, dry_run}: to a faster tier (default: the next one up).

dry_run and force are JSON booleans: any other value fails the command, with the reason.
"""

from __future__ import annotations

from evicctl.errors import EvicctlError, RefusedError, UnknownNameError, UsageError
from evicctl.manager.placer.place import DROPPED_TIER, Plan


class CommandHandler:
    """`handler(command) -> result dict`, for ControlServer.poll."""

    def __init__(self, manager) -> None:
        self.manager = manager

    def __call__(self, command) -> dict:
        verb = getattr(self, f"_{command.verb}", None)
        if verb is None:
            raise UsageError(f"unknown verb {command.verb!r}")
        if not command.context_id:
            raise UsageError(f"{command.verb} needs a context id")
        check_flags(command.args)
        return verb(command)

    # ------------------------------------------------------------------ verbs

    def _pin(self, command) -> dict:
        m, args = self.manager, command.args
        ctx = m.context(command.context_id)
        tier, codec = args.get("tier"), args.get("codec")
        if not tier and not codec:
            raise UsageError("pin needs a tier and/or a codec")
        if tier:
            m.tier_named(tier)
        codec = self._codec(codec) if codec else None
        with m.state_lock:
            pin_tier, pin_codec = tier or ctx.pin_tier, codec or ctx.pin_codec
            stored = ctx.stored
        if codec and stored:
            self._check_scores(ctx, codec, "pin")
        if codec and not args.get("force"):
            self._check_floor(ctx, codec, "pin")
        what = " and ".join(x for x in (pin_tier and f"tier {pin_tier}", pin_codec and f"codec {pin_codec}") if x)
        if not stored:
            message = f"pinned {ctx.id} to {what}; it is dropped now: the pin applies when it is stored again"
            if args.get("dry_run"):
                return {"message": "dry run: " + message, "plan": []}
            return self._set_pin(command, ctx, pin_tier, pin_codec, None, message)
        plan = m.plan(overrides={ctx.id: {"pin_tier": pin_tier, "pin_codec": pin_codec, "min_tier": 0}})
        self._refuse_unless_feasible(plan, ctx, f"pin {ctx.id} to {what}")
        self._refuse_unless_planned(plan, ctx, pin_tier, pin_codec, f"pin {ctx.id} to {what}")
        if args.get("dry_run"):
            return self._dry(plan)
        result = self._set_pin(command, ctx, pin_tier, pin_codec, plan, f"pinned {ctx.id} to {what}")
        with m.state_lock:
            now_at = (ctx.tier, ctx.codec) if ctx.stored else (DROPPED_TIER, None)
        if (pin_tier and now_at[0] != pin_tier) or (pin_codec and now_at[1] != pin_codec):
            # The pin is recorded (the policy keeps moving it there), but "done" must mean the
            # copy is where the pin says; a move can fail when its source vanished meanwhile.
            raise EvicctlError(
                f"pinned {ctx.id} to {what}, but its copy is still {now_at[0]}/{now_at[1]}: the move did "
                "not complete (see the events); the manager retries on its next plan"
            )
        return result

    def _unpin(self, command) -> dict:
        m = self.manager
        ctx = m.context(command.context_id)
        with m.state_lock:
            had = (ctx.pin_tier, ctx.pin_codec)
            ctx.pin_tier = ctx.pin_codec = None
        m.queue(lambda batch: (
            batch.upsert("contexts", {"id": ctx.id, "pin_tier": None, "pin_codec": None}),
            batch.event(context_id=ctx.id, kind="unpin", from_tier=had[0], from_codec=had[1],
                        reason="operator", actor=command.actor, command_id=command.id),
        ))  # fmt: skip
        m.rt.replan_needed = True
        ids = m.flush()
        message = f"unpinned {ctx.id}" if any(had) else f"{ctx.id} was not pinned"
        return {"message": message, "plan": [], "event_ids": ids}

    def _evict(self, command) -> dict:
        m, args = self.manager, command.args
        ctx = m.context(command.context_id)
        with m.state_lock:
            stored, tier_name, pins = ctx.stored, ctx.tier, (ctx.pin_tier, ctx.pin_codec)
        if not stored:
            raise RefusedError(f"{ctx.id} is already dropped")
        if any(pins):
            raise RefusedError(f"{ctx.id} is pinned ({_pins(*pins)}); unpin it first")
        rank = m.tier_named(tier_name).rank
        to = args.get("to") or (m.tiers[rank + 1].name if rank + 1 < len(m.tiers) else DROPPED_TIER)
        if to in ("drop", DROPPED_TIER):
            overrides = {"force_tier": DROPPED_TIER}
            target = "drop"
        else:
            dest = m.tier_named(to)
            if dest.rank == rank:
                raise RefusedError(f"{ctx.id} is already on {to}")
            if dest.rank < rank:
                raise UsageError(f"{to} is faster than {tier_name}, where {ctx.id} is; use promote")
            overrides = {"force_tier": to, "min_tier": to}
            target = to
        plan = m.plan(overrides={ctx.id: overrides})
        self._refuse_unless_feasible(plan, ctx, f"evict {ctx.id} to {target}")
        if args.get("dry_run"):
            return self._dry(plan)
        if target != "drop":
            with m.state_lock:
                ctx.min_tier = m.tier_named(target).rank  # held down there until it is used again
        return self._run(plan, command, f"evicted {ctx.id} to {target}")

    def _recompress(self, command) -> dict:
        m, args = self.manager, command.args
        ctx = m.context(command.context_id)
        if not args.get("codec"):
            raise UsageError("recompress needs a codec")
        codec = self._codec(args["codec"])
        with m.state_lock:
            stored, tier_name, current, pin_codec = ctx.stored, ctx.tier, ctx.codec, ctx.pin_codec
        if not stored:
            raise RefusedError(f"{ctx.id} is dropped: there is no copy to recompress")
        if codec == current:
            raise RefusedError(f"{ctx.id} is already stored as {codec}")
        if pin_codec and pin_codec != codec:
            raise RefusedError(f"{ctx.id} is pinned to codec {pin_codec}; unpin it first")
        self._check_scores(ctx, codec, "recompress")  # force cannot make scores that are not there
        if not args.get("force"):
            self._check_floor(ctx, codec, "recompress")
        plan = m.plan(overrides={ctx.id: {"force_codec": codec, "force_tier": tier_name}})
        self._refuse_unless_feasible(plan, ctx, f"recompress {ctx.id} to {codec}")
        if args.get("dry_run"):
            return self._dry(plan)
        return self._run(plan, command, f"recompressed {ctx.id} to {codec} on {tier_name}")

    def _promote(self, command) -> dict:
        m, args = self.manager, command.args
        ctx = m.context(command.context_id)
        with m.state_lock:
            stored, tier_name, pin_tier = ctx.stored, ctx.tier, ctx.pin_tier
        if not stored:
            raise RefusedError(f"{ctx.id} is dropped: it is recomputed and stored on its next use")
        rank = m.tier_named(tier_name).rank
        if args.get("tier"):
            dest = m.tier_named(args["tier"])
        elif rank == 0:
            raise RefusedError(f"{ctx.id} is already on the fastest tier, {tier_name}")
        else:
            dest = m.tiers[rank - 1]
        if dest.rank >= rank:
            raise UsageError(f"{dest.name} is not faster than {tier_name}, where {ctx.id} is; use evict")
        if pin_tier and pin_tier != dest.name:
            raise RefusedError(f"{ctx.id} is pinned to tier {pin_tier}; unpin it first")
        plan = m.plan(overrides={ctx.id: {"force_tier": dest.name, "min_tier": 0}})
        self._refuse_unless_feasible(plan, ctx, f"promote {ctx.id} to {dest.name}")
        if args.get("dry_run"):
            return self._dry(plan)
        with m.state_lock:
            ctx.min_tier = 0
        return self._run(plan, command, f"promoted {ctx.id} to {dest.name}")

    # ------------------------------------------------------------------ helpers

    def _codec(self, name: str) -> str:
        from evicctl.manager.codecs.codec import validate_codec_name

        codec = validate_codec_name(name)
        if codec not in self.manager.codec_names:
            raise UnknownNameError("codec", codec, self.manager.codec_names)
        return codec

    def _check_scores(self, ctx, codec: str, verb: str) -> None:
        """Refuse a codec whose scorer reads per-token scores (expected, kvzip) that the
        context's KV does not carry: the engine computes them when it stores a context, and
        nothing can compute them from a stored copy."""
        from evicctl.manager.codecs.codec import carried_scores
        from evicctl.manager.codecs.names import TOKEN_SCORERS, parse_codec_name

        scorer = parse_codec_name(codec).scorer
        if scorer not in TOKEN_SCORERS:
            return
        m = self.manager
        with m.state_lock:
            carried, tier_name, key = ctx.token_scores, ctx.tier, ctx.key
        if carried is None:  # not known since a restart: the stored copy says
            try:
                carried = carried_scores(m.tier_named(tier_name).get(key)[0])
            except (KeyError, EvicctlError) as exc:
                raise RefusedError(f"cannot {verb} {ctx.id} to {codec}: its stored copy cannot be read ({exc})") from exc
            with m.state_lock:
                ctx.learn_token_scores(carried)
        if scorer not in carried:
            how = "when it is configured for kvzip (demo --kvzip)" if scorer == "kvzip" else "when it prefills it"
            raise RefusedError(
                f"cannot {verb} {ctx.id} to {codec}: its KV carries no {scorer} scores (an engine computes "
                f"them when it stores a context, {how}; a stored copy cannot be re-scored without them)"
            )

    def _check_floor(self, ctx, codec: str, verb: str) -> None:
        """Refuse a codec whose quality (lower bound) is below the context's floor."""
        from evicctl.manager.placer.pricing import QUALITY_Z

        m = self.manager
        floor = m.quality_floor_of(ctx)
        if codec == "none" or floor <= 0:
            return
        with m.state_lock:
            profile = ctx.profiles.get(codec)
        if profile is None:
            raise RefusedError(
                f"cannot {verb} {ctx.id} to {codec}: no profile, so its quality is unknown and the "
                f"quality floor is {floor:.2f}; profile it first or pass force"
            )
        quality, sd, _ = profile
        lower = max(0.0, quality - QUALITY_Z * (sd or 0.0))
        if lower < floor:
            raise RefusedError(
                f"cannot {verb} {ctx.id} to {codec}: its quality {quality:.2f} (lower bound {lower:.2f}) "
                f"is below the quality floor {floor:.2f}; pass force to do it anyway"
            )

    def _refuse_unless_feasible(self, plan: Plan, ctx, what: str) -> None:
        m = self.manager
        p = plan.problem
        index = {cid: i for i, cid in enumerate(p.context_ids.tolist())}
        i = index.get(ctx.id)
        if i is not None and i in set(plan.conflicts.tolist()):
            with m.state_lock:
                current = ctx.codec
            raise RefusedError(
                f"cannot {what}: the stored copy is {current}, and dropped tokens or lost precision "
                "cannot come back (evict it to drop and it is recomputed whole on its next use)"
            )
        over = plan.overflow_bytes
        if over.any():
            t = int(over.argmax())
            raise RefusedError(
                f"cannot {what}: tier {p.tiers[t]} would need {int(plan.used_bytes[t]):,} B of its "
                f"{int(p.capacity_bytes[t]):,} B capacity (pinned contexts there cannot move)"
            )

    def _refuse_unless_planned(self, plan: Plan, ctx, pin_tier, pin_codec, what: str) -> None:
        """Refuse a pin the plan does not carry out: reporting it done would be a lie."""
        p = plan.problem
        i = {cid: k for k, cid in enumerate(p.context_ids.tolist())}.get(ctx.id)
        if i is None:
            return
        tier, codec = plan.option_of(i)
        if tier == DROPPED_TIER:
            raise RefusedError(f"cannot {what}: the plan would drop it (no allowed option fits)")
        if (pin_tier and tier != pin_tier) or (pin_codec and codec != pin_codec):
            raise RefusedError(
                f"cannot {what}: the best the placer can do is {tier}/{codec} (the stored copy cannot "
                "become the pinned codec, or the pinned tier has no room)"
            )

    def _dry(self, plan: Plan) -> dict:
        moves = [m.to_json() for m in plan]
        return {"message": f"dry run: {len(moves)} move(s), nothing changed", "plan": moves, "event_ids": []}

    def _run(self, plan: Plan, command, message: str) -> dict:
        ids = self.manager.execute(plan, actor=command.actor, command_id=command.id)
        return {"message": message, "plan": [m.to_json() for m in plan], "event_ids": ids}

    def _set_pin(self, command, ctx, pin_tier, pin_codec, plan: Plan | None, message: str) -> dict:
        m = self.manager
        with m.state_lock:
            ctx.pin_tier, ctx.pin_codec, ctx.min_tier = pin_tier, pin_codec, 0
        m.queue(lambda batch: (
            batch.upsert("contexts", {"id": ctx.id, "pin_tier": pin_tier, "pin_codec": pin_codec}),
            batch.event(context_id=ctx.id, kind="pin", to_tier=pin_tier, to_codec=pin_codec,
                        reason="operator", actor=command.actor, command_id=command.id),
        ))  # fmt: skip
        if plan is None:
            return {"message": message, "plan": [], "event_ids": m.flush()}
        return self._run(plan, command, message)


FLAGS = ("dry_run", "force")  # the verbs' boolean arguments


def check_flags(args: dict) -> None:
    """Boolean arguments must be JSON true or false. A row is written by any client, or by hand:
    read loosely, `"force": "no"` or `"dry_run": "false"` would be truthy and do the opposite of
    what was asked, so anything else fails the command (before it does anything) with the reason."""
    for name in FLAGS:
        if name in args and not isinstance(args[name], bool):
            shown = repr(args[name])
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            raise UsageError(f"{name} must be true or false (a JSON boolean), not {shown}")


def _pins(tier: str | None, codec: str | None) -> str:
    return ", ".join(x for x in (tier and f"tier {tier}", codec and f"codec {codec}") if x)
