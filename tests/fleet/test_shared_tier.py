"""The shared remote tier on a real 3-node Redis Cluster (and one standalone server):
content addresses, cluster-wide accounting, leases, quotas."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from evicctl.config import TierConfig
from evicctl.manager.codecs.codec import Stored
from evicctl.manager.state import tier_key
from evicctl.manager.tiers.build import make_tier
from evicctl.manager.tiers.remote_client import RemoteRefusedError, connect
from evicctl.manager.tiers.remote_shared import SharedRedisTier

MIB = 1 << 20


def blob(nbytes: int, seed: int = 0) -> Stored:
    g = torch.Generator().manual_seed(seed)
    return Stored("none", {"k": torch.randint(0, 255, (nbytes,), dtype=torch.uint8, generator=g)}, {})


@pytest.fixture(params=["cluster", "standalone"])
def url(request) -> str:
    return request.getfixturevalue("cluster").url if request.param == "cluster" else request.getfixturevalue("standalone_url")


def tier(url: str, namespace: str, holder: str, *, capacity: int = 64 * MIB, model: str = "m1", **kw) -> SharedRedisTier:
    return SharedRedisTier(url, capacity_bytes=capacity, client=connect(url), namespace=namespace, model=model,
                           holder=holder, **kw)  # fmt: skip


def test_two_engines_share_one_object_and_other_models_never_see_it(url: str, namespace: str) -> None:
    a, b = tier(url, namespace, "a"), tier(url, namespace, "b")
    other = tier(url, namespace, "c", model="m2")
    stored = blob(MIB)
    a.put(tier_key("doc", "none"), stored)
    assert b.codecs_of("doc") == ["none"] and other.codecs_of("doc") == []
    got, _ = b.fetch("doc", "none")
    assert torch.equal(got.tensors["k"], stored.tensors["k"])  # bit-exact across engines
    b.put(tier_key("doc", "none"), stored)  # the same content: one object, two holders
    assert a.cluster_usage(max_age_s=0) == (64 * MIB, MIB)
    a.delete(tier_key("doc", "none"))
    assert b.contains(tier_key("doc", "none")), "one holder's eviction deleted another's object"
    b.delete(tier_key("doc", "none"))
    assert b.codecs_of("doc") == [] and a.cluster_usage(max_age_s=0)[1] == 0


def test_concurrent_writers_are_accounted_exactly_and_refused_past_capacity(url: str, namespace: str) -> None:
    capacity, size = 10 * MIB, MIB
    tiers = [tier(url, namespace, f"m{i}", capacity=capacity) for i in range(4)]
    refused, stored = [], []

    def writer(t: SharedRedisTier, i: int) -> None:
        for j in range(5):  # 20 distinct objects race for room for 10
            try:
                t.put(tier_key(f"c{i}-{j}", "none"), blob(size, seed=i * 10 + j))
                stored.append((i, j))
            except RemoteRefusedError as exc:
                refused.append(exc.reason)

    threads = [threading.Thread(target=writer, args=(t, i)) for i, t in enumerate(tiers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    capacity_seen, used = tiers[0].cluster_usage(max_age_s=0)
    # serialized bytes are a little over Stored.nbytes, which is what is accounted: exactly 10 fit
    assert len(stored) == 10 and refused == ["capacity"] * 10
    assert used == 10 * size == sum(t.used_bytes for t in tiers)
    assert sum(r["n"] for r in tiers[0].ledger().values()) == used
    # each manager plans with its own bytes plus the cluster's free bytes (none left)
    assert [t.capacity_bytes for t in tiers] == [t.used_bytes for t in tiers]


def test_concurrent_stores_of_one_context_make_one_object(url: str, namespace: str) -> None:
    tiers = [tier(url, namespace, f"m{i}") for i in range(4)]
    stored = blob(MIB, seed=7)
    barrier = threading.Barrier(len(tiers))

    def store(t: SharedRedisTier) -> None:
        barrier.wait()
        t.put(tier_key("same", "none"), stored)

    threads = [threading.Thread(target=store, args=(t,)) for t in tiers]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert tiers[0].cluster_usage(max_age_s=0)[1] == MIB and len(tiers[0].ledger()) == 1
    for t in tiers:
        t.delete(tier_key("same", "none"))
    assert tiers[0].cluster_usage(max_age_s=0)[1] == 0 and tiers[0].ledger() == {}


def test_eviction_waits_for_a_lease_and_existence_checks_do_not_renew_it(url: str, namespace: str) -> None:
    owner, reader = tier(url, namespace, "owner"), tier(url, namespace, "reader")
    owner.put(tier_key("doc", "none"), blob(MIB))
    lease = reader.lease("doc", "none", ttl_s=0.4)
    assert lease is not None
    owner.delete(tier_key("doc", "none"))  # the only holder lets go while a read is under way
    assert reader.codecs_of("doc") == ["none"], "eviction deleted an object under a live lease"
    assert reader.lease("doc", "none") is None, "a doomed object must take no new leases"
    deadline = time.monotonic() + 0.6
    while time.monotonic() < deadline:  # existence checks all along: none may extend the lease
        assert reader.codecs_of("doc") == ["none"]
        owner.contains(tier_key("doc", "none"))
        time.sleep(0.02)
    # the lease ran out (a crashed reader never releases): the sweep finishes the eviction
    assert owner.reap(owner.ledger().popitem()[0], live_managers=["owner", "reader"]) == "deleted"
    assert owner.cluster_usage(max_age_s=0)[1] == 0 and reader.codecs_of("doc") == []


def test_the_last_reader_of_a_doomed_object_deletes_it(url: str, namespace: str) -> None:
    owner, reader = tier(url, namespace, "owner"), tier(url, namespace, "reader")
    owner.put(tier_key("doc", "int8"), Stored("int8", blob(MIB).tensors, {}))
    lease_id, _ = reader.lease("doc", "int8")
    owner.delete(tier_key("doc", "int8"))
    assert reader.unlease("doc", "int8", lease_id) == "deleted"
    assert owner.cluster_usage(max_age_s=0)[1] == 0


def test_tenant_over_quota_is_refused_and_recorded(url: str, namespace: str) -> None:
    t = tier(url, namespace, "m", tenant_quotas=(("small", 3 * MIB // 2),))
    t.tenant_of = lambda ctx: "small" if ctx.startswith("s") else "default"
    t.put(tier_key("s1", "none"), blob(MIB))
    with pytest.raises(RemoteRefusedError) as refused:
        t.put(tier_key("s2", "none"), blob(MIB, seed=1))
    assert refused.value.reason == "quota" and "tenant 'small' quota" in str(refused.value)
    t.put(tier_key("d1", "none"), blob(MIB, seed=2))  # another tenant still has room
    rows = t.client.xrange(t.ctl.refusals)
    assert [r[1][b"context_id"] for r in rows] == [b"s2"] and rows[0][1][b"reason"] == b"quota"
    assert [r["context_id"] for r in t.refusals] == ["s2"]
    assert t.tenant_usage() == {"default": (MIB, None), "small": (MIB, 3 * MIB // 2)}


def test_make_tier_builds_the_shared_tier_by_default(cluster, namespace: str) -> None:
    t = make_tier(TierConfig("redis", capacity_bytes=8 * MIB, url=cluster.url, namespace=namespace,
                             model="smollm2", engine="e1"), rank=2)  # fmt: skip
    assert isinstance(t, SharedRedisTier) and t.holder == "e1" and t.rank == 2
    private = make_tier(TierConfig("redis", capacity_bytes=8 * MIB, url=cluster.url, shared=False), rank=2)
    assert not isinstance(private, SharedRedisTier)
