"""vLLM's own CPU offloading manager with `eviction_policy` naming the evicctl policy, replaying a
trace, recorded into evicctl's store; `evicctl ls` and the control channel work on it."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from vllm_helpers import requires_vllm

pytestmark = requires_vllm

N_CONTEXTS, DOC_TOKENS, CAPACITY = 12, 1024, 40  # 4 chunks a document, room for ~10 documents


def make_replayer(policy: str = "evicctl", capacity: int = CAPACITY):
    from evicctl.integrations.vllm_replay import ChunkHasher, Replayer
    from evicctl.integrations.vllm_spec import ChunkLayout, build_manager

    rng = random.Random(3)
    docs = [[rng.randrange(50_000) for _ in range(DOC_TOKENS)] for _ in range(N_CONTEXTS)]
    layout = ChunkLayout()
    return Replayer(build_manager(policy, capacity, layout), ChunkHasher(docs, layout))


def zipf_requests(n: int, seed: int = 5):
    from evicctl.integrations.vllm_replay import Request

    rng = random.Random(seed)
    weights = [1 / (r + 1) for r in range(N_CONTEXTS)]
    return [Request(rng.choices(range(N_CONTEXTS), weights)[0], tuple(rng.randrange(50_000) for _ in range(40)))
            for _ in range(n)]  # fmt: skip


def evicctl_ls(db: Path) -> list[dict]:
    out = subprocess.run([sys.executable, "-P", "-m", "evicctl.cli", "ls", "--db", str(db), "-o", "json"],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "NO_COLOR": "1"})  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def wait_for(predicate, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_replay_is_recorded_and_evicctl_ls_lists_what_vllm_holds(vllm_db):
    from evicctl.store.database import Store

    rep = make_replayer()
    policy = rep.manager._policy
    stats = rep.run(zipf_requests(300))
    assert stats.hit_chunks > 0 and stats.evicted_chunks > 0
    policy.recorder.flush_now()
    held = {ctx for ctx, keys in policy._members.items() if keys}
    listed = {row["id"]: row for row in evicctl_ls(vllm_db)}
    assert held and held <= set(listed)  # `evicctl ls`, during the run, shows every context vLLM holds
    for ctx in held:
        assert listed[ctx]["tier"] == "cpu"
        assert listed[ctx]["stored_bytes"] == policy.resident_chunks(ctx) * policy.config.chunk_bytes
    with Store.open(vllm_db, readonly=True) as store:
        sums = {r["kind"]: r["b"] for r in store.query("SELECT kind, SUM(bytes) AS b FROM events GROUP BY kind")}
        manager = store.query("SELECT config_json FROM manager")[0]
        hits = store.query("SELECT SUM(hits) AS h FROM contexts")[0]["h"]
    chunk = policy.config.chunk_bytes
    # every insert and eviction vLLM's manager made is in the store, none twice
    assert sums["admit"] == stats.stored_chunks * chunk
    assert sums["evict"] == stats.evicted_chunks * chunk
    assert json.loads(manager["config_json"])["integration"] == "vllm"
    assert hits == stats.hit_requests
    policy.close()


def test_pin_protects_and_evict_releases_through_the_cli(vllm_db):
    rep = make_replayer(capacity=24)
    policy = rep.manager._policy
    rep.run(zipf_requests(60))
    policy.recorder.flush_now()
    held = sorted((policy.resident_chunks(c), c) for c in policy._members if policy.resident_chunks(c))
    cold_n, cold = held[0]  # the context the policy would drop first
    hot = held[-1][1]
    env = {**os.environ, "NO_COLOR": "1"}
    cli = [sys.executable, "-P", "-m", "evicctl.cli"]
    pin = subprocess.Popen([*cli, "pin", cold, "--tier", "cpu", "--db", str(vllm_db), "--timeout", "20"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    wait_for(lambda: cold in policy.pinned)
    assert pin.wait(60) == 0, pin.stderr.read()
    rep.run(zipf_requests(200, seed=11))  # heavy pressure on 24 chunks
    assert policy.resident_chunks(cold) == cold_n  # pinned: every chunk stayed
    refused = subprocess.run([*cli, "evict", cold, "--db", str(vllm_db), "--yes"], capture_output=True, text=True, env=env)
    assert refused.returncode == 5 and "pinned" in refused.stderr
    subprocess.run([*cli, "unpin", cold, "--db", str(vllm_db)], check=True, capture_output=True, env=env)
    released = subprocess.run([*cli, "evict", hot, "--db", str(vllm_db), "--yes"], capture_output=True, text=True, env=env)
    assert released.returncode == 0, released.stderr
    hot_n = policy.resident_chunks(hot)
    from evicctl.integrations.vllm_replay import Request

    rep.step(Request(N_CONTEXTS - 1, (7,) * 300))  # one store: the released chunks go first
    rep.drain()
    assert policy.resident_chunks(hot) < hot_n
    policy.close()
