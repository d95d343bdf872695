"""What evicctl's policy decides that vLLM's lru does not: frequency over recency, tail first,
contexts from prefix chains or caller names, pins and releases."""

from __future__ import annotations

import pytest
from vllm_helpers import requires_vllm

pytestmark = [requires_vllm, pytest.mark.usefixtures("no_record")]


def chain(doc: int, n: int) -> list[bytes]:
    from vllm.v1.kv_offload.base import make_offload_key

    return [make_offload_key((doc * 1000 + i).to_bytes(32, "big"), 0) for i in range(n)]


def request(m, keys, name, params=None):
    """One request through vLLM's manager: hit prefix, store the rest, complete, finish."""
    from vllm.v1.kv_offload.base import LookupResult, ReqContext

    req = ReqContext(name, kv_transfer_params=params)
    for pos, k in enumerate(keys, 1):
        req.set_offload_key_position(k, pos * 256)
    m.on_new_request(req)
    hit = 0
    while hit < len(keys) and m.lookup(keys[hit], req) is LookupResult.HIT:
        hit += 1
    if hit:
        m.prepare_load(keys[:hit], req)
        m.complete_load(keys[:hit], req)
    out = m.prepare_store(keys[hit:], req) if hit < len(keys) else None
    if out is not None and out.keys_to_store:
        m.complete_store(out.keys_to_store, req)
    m.on_request_finished(req)
    return hit, (out.evicted_keys if out else [])


@pytest.mark.parametrize("policy, survives", [("lru", False), ("evicctl", True)])
def test_a_hot_document_survives_a_scan_of_one_off_prompts(policy, survives):
    from evicctl.integrations.vllm_spec import build_manager

    m = build_manager(policy, 8)
    hot = chain(1, 4)
    for i in range(5):
        request(m, hot, f"hot{i}")
    for i in range(2):  # one-off prompts, 4 chunks each: a scan as large as the free room
        request(m, chain(100 + i, 4), f"scan{i}")
    hit, _ = request(m, hot, "again")
    assert (hit == 4) is survives


def test_evictions_take_the_tail_of_a_chain_first():
    from evicctl.integrations.vllm_spec import build_manager

    m = build_manager("evicctl", 6)
    doc = chain(1, 6)
    request(m, doc, "a")
    _, evicted = request(m, chain(2, 2), "b")
    assert evicted == [doc[5], doc[4]]  # the head stays usable as a prefix


def test_chunks_of_one_document_form_one_context_or_the_callers_name():
    from evicctl.integrations.vllm_spec import build_manager

    m = build_manager("evicctl", 32)
    p = m._policy
    doc = chain(1, 4)
    request(m, doc + chain(50, 1), "q1")  # the same document, two different questions
    request(m, doc + chain(51, 1), "q2")
    contexts = {c for c, keys in p._members.items() if keys}
    assert len(contexts) == 1 and p.resident_chunks(contexts.pop()) == 6
    request(m, chain(2, 3), "named", {"evicctl_context": "faq-v2"})
    assert p.resident_chunks("faq-v2") == 3


def test_pins_protect_and_releases_go_first():
    from evicctl.integrations.vllm_spec import build_manager

    m = build_manager("evicctl", 8)
    p = m._policy
    request(m, chain(1, 4), "cold", {"evicctl_context": "cold"})
    for i in range(3):
        request(m, chain(2, 4), f"hot{i}", {"evicctl_context": "hot"})
    p.submit("pin", "cold")
    _, evicted = request(m, chain(3, 4), "x")
    assert p.resident_chunks("cold") == 4 and len(evicted) == 4  # the hot one paid, cold is pinned
    p.submit("unpin", "cold")
    request(m, chain(2, 4), "hot-again", {"evicctl_context": "hot"})
    p.submit("release", "hot")
    _, evicted = request(m, chain(4, 2), "y")
    assert len(evicted) == 2 and all(m._policy.get(k) is None for k in chain(2, 4)[2:])
