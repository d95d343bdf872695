"""Managers in one process sharing a real cluster: cross-engine hits, refusals recorded as
events, registration and leadership."""

from __future__ import annotations

import torch
from fleet_helpers import MIB, make_kv, open_manager, wait_for

from evicctl.fleet.hook import shared_tier_of
from evicctl.fleet.keys import FleetKeys
from evicctl.fleet.sharing import SharedCache
from evicctl.manager.tiers.remote_client import connect
from evicctl.snapshot.read import read_events


def test_engine_b_serves_what_engine_a_stored_bit_exact(tmp_path, cluster, namespace) -> None:
    a = open_manager(tmp_path, cluster.url, namespace, "a")
    b = open_manager(tmp_path, cluster.url, namespace, "b")
    try:
        kv = make_kv(seed=3)
        SharedCache(a).store("doc", kv, prefill_s=1.0)
        served = SharedCache(b).lookup("doc", "cpu")
        assert served is not None and served.source == "remote" and served.codec == "none"
        for x, y in zip(served.kv.keys + served.kv.values, kv.keys + kv.values, strict=True):
            assert torch.equal(x, y)
        again = SharedCache(b).lookup("doc", "cpu")  # b keeps it: the next hit is its own
        assert again is not None and again.source == "local"
    finally:
        a.close()
        b.close()


def test_a_tenant_over_quota_gets_a_refused_event_not_a_lost_write(tmp_path, cluster, namespace) -> None:
    # the shared tier is the only room for the context (cpu holds 1 MiB): the quota decides
    m = open_manager(tmp_path, cluster.url, namespace, "q", cpu_bytes=1 * MIB, quotas=(("small", MIB),))
    try:
        placement = m.store("big", make_kv(tokens=1024), prefill_s=5.0, tenant="small")
        assert placement.tier == "dropped"
        m.flush()
        events = read_events(m.rt.store, context_id="big")
        refused = [e for e in events if e.kind == "refused"]
        assert refused and "tenant 'small' quota" in refused[0].reason, events
        tier = shared_tier_of(m)
        assert tier.refusals[-1]["reason"] == "quota"
    finally:
        m.close()


def test_managers_register_and_one_leads(tmp_path, cluster, namespace) -> None:
    managers = [open_manager(tmp_path, cluster.url, namespace, f"e{i}") for i in range(3)]
    try:
        tier = shared_tier_of(managers[0])
        keys = FleetKeys(namespace)
        wait_for(lambda: tier.client.zcard(keys.managers) == 3)
        leaders = wait_for(lambda: [m.fleet.id for m in managers if m.fleet.epoch] or None)
        assert len(leaders) == 1 and tier.leader()[0] == leaders[0]
    finally:
        for m in managers:
            m.close()
    client = connect(cluster.url)  # the managers closed theirs
    assert client.zcard(keys.managers) == 0 and client.get(tier.ctl.leader) is None  # deregistered, resigned
