"""Leadership with fencing tokens on the real cluster, and the shared tier's eviction order."""

from __future__ import annotations

import time

from evicctl.fleet.policy import SharedObject, choose_evictions, fleet_rates
from evicctl.manager.codecs.codec import Stored
from evicctl.manager.state import tier_key
from evicctl.manager.tiers.remote_client import connect
from evicctl.manager.tiers.remote_shared import SharedRedisTier


def test_a_stale_leader_is_fenced(cluster, namespace) -> None:
    import torch

    a, b = (SharedRedisTier(cluster.url, capacity_bytes=1 << 30, client=connect(cluster.url), namespace=namespace,
                            holder=h) for h in "ab")  # fmt: skip
    for codec in ("none", "int8"):
        a.put(tier_key("doc", codec), Stored(codec, {"k": torch.zeros(1024, dtype=torch.uint8)}, {}))
    e1 = a.elect("a", 0.3)
    assert e1 > 0 and b.elect("b", 0.3) == 0  # one leader at a time
    time.sleep(0.4)  # a is frozen past its lease
    e2 = b.elect("b", 3.0)
    assert e2 > e1 and not a.still_leads("a", e1) and a.elect("a", 3.0) == 0
    assert b.evict(a.held(tier_key("doc", "none")).location, e2, "test") == "deleted"
    # a wakes and acts on its old epoch: the object's slot has seen a newer one
    assert a.evict(a.held(tier_key("doc", "int8")).location, e1, "stale") == "fenced"
    assert a.codecs_of("doc") == ["int8"]


def test_eviction_order_is_fleet_rate_per_byte_down_to_the_low_watermark() -> None:
    objects = [SharedObject("o1", "hot", 100, 1), SharedObject("o2", "cold", 100, 2),
               SharedObject("o3", "shared", 100, 3), SharedObject("o4", "unknown", 100, 0)]  # fmt: skip
    # "shared" is read a little by two engines: together more than "cold"
    rates = fleet_rates({"e1": [{"id": "hot", "freq": 5.0}, {"id": "shared", "freq": 0.3}, {"id": "cold", "freq": 0.4}],
                         "e2": [{"id": "shared", "freq": 0.3}]})  # fmt: skip
    assert rates["shared"] == 0.6
    assert choose_evictions(objects, rates, capacity_bytes=400, used_bytes=360) == []  # at the high watermark
    chosen = choose_evictions(objects, rates, capacity_bytes=400, used_bytes=400)
    assert [o.context_id for o in chosen] == ["unknown"]  # 400 -> 300, under 0.8 * 400
    chosen = choose_evictions(objects, rates, capacity_bytes=200, used_bytes=400)
    assert [o.context_id for o in chosen] == ["unknown", "cold", "shared"]
