"""Replaying several policies at once, one worker process per core.

Policies are independent given the catalog and the trace, so workers forked after both are
built share them copy-on-write and send back only summaries (and progress counts). A
failure in a worker is raised in the parent, naming the policy.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable

from evicctl.replay.catalog import Catalog
from evicctl.replay.replay import Policy, RunResult, replay
from evicctl.replay.trace import Trace

PROGRESS_EVERY = 5000  # requests between progress messages from a worker


def replay_policies(
    policies: list[Policy],
    catalog: Catalog,
    trace: Trace,
    *,
    warmup: float,
    jobs: int,
    progress: Callable[[int, int], None],
    after: Callable[[RunResult], dict] | None = None,
) -> list[dict]:
    """Summaries of every policy's replay, in order. progress(k, n): n more requests of policy k;
    after(result): more summary fields computed from the full result (e.g. queueing)."""
    if jobs <= 1 or len(policies) <= 1:
        return [
            _summary(replay(p, catalog, trace, warmup=warmup, progress=lambda n, k=k: progress(k, n)), after)
            for k, p in enumerate(policies)
        ]
    ctx = mp.get_context("fork")
    tasks, results = ctx.Queue(), ctx.Queue()
    for k in range(len(policies)):
        tasks.put(k)
    workers = [
        ctx.Process(target=_work, args=(policies, catalog, trace, warmup, tasks, results, after), daemon=True)
        for _ in range(min(jobs, len(policies)))
    ]
    for _ in workers:
        tasks.put(None)
    for w in workers:
        w.start()
    summaries: list[dict | None] = [None] * len(policies)
    try:
        done = 0
        while done < len(policies):
            kind, k, payload = results.get()
            if kind == "progress":
                progress(k, payload)
            elif kind == "done":
                summaries[k], done = payload, done + 1
            else:
                raise RuntimeError(f"policy {policies[k].name} failed in a worker: {payload}")
    finally:
        for w in workers:
            w.join(timeout=0 if None in summaries else 5)
            if w.is_alive():
                w.terminate()
                w.join(timeout=5)
    return summaries  # type: ignore[return-value]


def _summary(result: RunResult, after: Callable[[RunResult], dict] | None) -> dict:
    return result.summary() if after is None else result.summary() | after(result)


def _work(policies, catalog, trace, warmup, tasks, results, after) -> None:
    while (k := tasks.get()) is not None:
        try:
            result = replay(
                policies[k], catalog, trace, warmup=warmup,
                progress=lambda n, k=k: results.put(("progress", k, n)), progress_every=PROGRESS_EVERY,
            )
            results.put(("done", k, _summary(result, after)))
        except Exception as exc:  # reported in the parent with the policy's name
            results.put(("error", k, f"{type(exc).__name__}: {exc}"))
