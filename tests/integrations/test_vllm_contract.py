"""vLLM's CachePolicy contract, checked the same way for vLLM's `lru`, `arc` and evicctl's policy.

Each policy class comes from vLLM's own CachePolicyFactory, by the names a deployment puts
in kv_connector_extra_config; the manager-level tests build vLLM's CPUOffloadingManager
through its spec factory.
"""

from __future__ import annotations

import random

import pytest
from vllm_helpers import requires_vllm

pytestmark = [requires_vllm, pytest.mark.usefixtures("no_record")]

FACTORY_NAMES = {
    "lru": ("lru", None),
    "arc": ("arc", None),
    "evicctl": ("EvicctlCachePolicy", "evicctl.integrations.vllm"),
}


def make_policy(name: str, capacity: int):
    from vllm.v1.kv_offload.cpu.policies.factory import CachePolicyFactory

    cls = CachePolicyFactory.get_cache_policy_cls(*FACTORY_NAMES[name])
    return cls(cache_capacity=capacity)


def key(i: int) -> bytes:
    from vllm.v1.kv_offload.base import make_offload_key

    return make_offload_key(i.to_bytes(32, "big"), 0)


def fill(policy, n: int, *, ready: bool = True, start: int = 0, req=None):
    """Insert keys start..start+n-1 as one request's chain; ready ones become evictable."""
    from vllm.v1.kv_offload.base import ReqContext
    from vllm.v1.kv_offload.cpu.policies.base import ChunkStatus

    req = req or ReqContext(f"fill-{start}")
    keys = [key(i) for i in range(start, start + n)]
    for pos, k in enumerate(keys, 1):
        req.set_offload_key_position(k, pos * 256)
    for i, k in enumerate(keys):
        policy.insert(k, ChunkStatus(start + i), req)
        if ready:
            policy.get(k).ref_cnt = 0
            policy.mark_evictable(k)
    return keys


@pytest.fixture(params=list(FACTORY_NAMES))
def policy_name(request) -> str:
    return request.param


def test_factory_resolves_each_name_to_a_cachepolicy(policy_name):
    from vllm.v1.kv_offload.cpu.policies.base import CachePolicy

    assert isinstance(make_policy(policy_name, 4), CachePolicy)


def test_evict_returns_exactly_n_resident_chunks_and_forgets_them(policy_name):
    p = make_policy(policy_name, 8)
    keys = fill(p, 8)
    assert p.evict(0, set()) == []
    out = p.evict(3, set())
    assert len(out) == 3 and len({k for k, _ in out}) == 3
    for k, chunk in out:
        assert k in keys and p.get(k) is None and chunk.ref_cnt == 0
    assert sum(p.get(k) is not None for k in keys) == 5


def test_evict_is_atomic_when_it_cannot_satisfy_n(policy_name):
    p = make_policy(policy_name, 8)
    keys = fill(p, 4)
    fill(p, 2, ready=False, start=100)  # stores in flight: never evictable
    assert p.evict(5, set()) is None
    assert all(p.get(k) is not None for k in keys)
    assert len(p.evict(4, set())) == 4  # nothing was lost by the failed call


def test_protected_not_ready_and_in_use_chunks_are_never_evicted(policy_name):
    p = make_policy(policy_name, 16)
    keys = fill(p, 10)
    pending = fill(p, 2, ready=False, start=100)
    in_use = keys[:2]
    for k in in_use:
        p.get(k).ref_cnt = 1
        p.mark_non_evictable(k)
    protected = set(keys[2:5])
    out = p.evict(5, protected)
    assert out is not None and len(out) == 5
    evicted = {k for k, _ in out}
    assert not evicted & (protected | set(in_use) | set(pending))
    assert p.evict(1, protected) is None  # only protected, in-use and pending chunks are left


def test_remove_and_clear(policy_name):
    p = make_policy(policy_name, 8)
    pending = fill(p, 2, ready=False)
    p.remove(pending[0])
    assert p.get(pending[0]) is None and p.get(pending[1]) is not None
    fill(p, 3, start=10)
    p.clear()
    assert all(p.get(key(i)) is None for i in (1, 10, 11, 12))
    assert p.evict(1, set()) is None


def test_manager_refuses_a_store_when_every_chunk_is_in_use(policy_name):
    from vllm.v1.kv_offload.base import ReqContext

    from evicctl.integrations.vllm_spec import build_manager

    m = build_manager(policy_name, 4)
    req = ReqContext("a")
    keys = [key(i) for i in range(4)]
    out = m.prepare_store(keys, req)
    assert out.keys_to_store == keys and out.evicted_keys == []
    assert m.prepare_store([key(9)], ReqContext("b")) is None  # all four are being written
    m.complete_store(keys, req)
    m.prepare_load(keys, ReqContext("c"))  # all four are being read
    assert m.prepare_store([key(9)], ReqContext("d")) is None
    m.complete_load(keys, ReqContext("c"))
    out = m.prepare_store([key(9)], ReqContext("e"))
    assert len(out.evicted_keys) == 1 and out.evicted_keys[0] in keys


def test_random_traffic_keeps_vllms_invariants(policy_name):
    """Seeded random requests with overlapping transfers: capacity is never exceeded, nothing
    in flight is evicted, and every chunk vLLM was told it stored is either resident or was
    reported evicted."""
    from vllm.v1.kv_offload.base import LookupResult, ReqContext

    from evicctl.integrations.vllm_spec import build_manager

    rng = random.Random(7)
    m = build_manager(policy_name, 24)
    resident: set[bytes] = set()
    inflight: list[tuple[ReqContext, list, list]] = []
    for r in range(400):
        req = ReqContext(f"r{r}")
        doc = rng.choice(range(12)) * 1000
        keys = [key(doc + i) for i in range(rng.randint(1, 6))]
        for pos, k in enumerate(keys, 1):
            req.set_offload_key_position(k, pos * 256)
        m.on_new_request(req)
        hit = 0
        while hit < len(keys) and m.lookup(keys[hit], req) is LookupResult.HIT:
            hit += 1
        busy = {k for _, ld, st in inflight for k in ld + st}
        if hit:
            m.prepare_load(keys[:hit], req)
        out = m.prepare_store(keys[hit:], req) if hit < len(keys) else None
        if out is not None:
            assert not set(out.evicted_keys) & busy, "evicted a chunk in flight"
            assert not set(out.evicted_keys) & set(keys), "evicted a chunk of the storing request"
            resident -= set(out.evicted_keys)
            resident |= set(out.keys_to_store)
        assert len(resident) <= 24
        inflight.append((req, keys[:hit], list(out.keys_to_store) if out else []))
        if len(inflight) > 3:
            done, loaded, stored = inflight.pop(0)
            if loaded:
                m.complete_load(loaded, done)
            if stored:
                m.complete_store(stored, done)
            m.on_request_finished(done)
    assert all(m._policy.get(k) is not None for k in resident)
