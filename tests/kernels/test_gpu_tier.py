"""GpuTier: CUDA tensors loaded from pageable/pinned host memory, the cpu tier and the disk tier."""

from __future__ import annotations

import time

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("the gpu tier needs CUDA", allow_module_level=True)

from evicctl.errors import CorruptDataError  # noqa: E402
from evicctl.manager.codecs.codec import Stored, get_codec  # noqa: E402
from evicctl.manager.kv import KV  # noqa: E402
from evicctl.manager.tiers.disk import DiskTier  # noqa: E402
from evicctl.manager.tiers.gpu import GpuTier  # noqa: E402
from evicctl.manager.tiers.tier import CpuTier  # noqa: E402

pytestmark = pytest.mark.gpu


def random_kv(gen, layers=4, heads=8, tokens=301, dim=128) -> KV:
    keys = [torch.randn(1, heads, tokens, dim, generator=gen).to(torch.bfloat16) for _ in range(layers)]
    values = [torch.randn(1, heads, tokens, dim, generator=gen).to(torch.bfloat16) for _ in range(layers)]
    return KV.full(keys, values)


def assert_same_stored(got: Stored, want: Stored) -> None:
    assert got.codec == want.codec and got.meta == want.meta
    assert set(got.tensors) == set(want.tensors)
    for name, t in want.tensors.items():
        g = got.tensors[name]
        assert g.is_cuda and g.dtype == t.dtype and g.shape == t.shape, name
        assert torch.equal(g.cpu(), t.cpu()), name


@pytest.mark.parametrize("codec", ("none", "int8", "knorm@0.5+int4"))
def test_put_get_pageable_through_staging(gen, codec):
    stored = get_codec(codec).encode(random_kv(gen))
    tier = GpuTier(capacity_bytes=1 << 30, chunk_bytes=1 << 20, staging_buffers=2)  # many chunks
    result = tier.put("a", stored)
    assert result.seconds > 0 and result.location is None
    got, seconds = tier.get("a")
    assert seconds < 0.1
    assert_same_stored(got, stored)
    assert tier.contains("a") and tier.used_bytes == stored.nbytes
    kv = get_codec(codec).decode(got)  # on the GPU, through the kernels where quantized
    want = get_codec(codec).decode(stored)
    assert kv.keys[0].is_cuda
    for a, b in zip((*kv.keys, *kv.values), (*want.keys, *want.values), strict=True):
        assert torch.equal(a.cpu(), b)
    tier.delete("a")
    assert not tier.contains("a") and tier.used_bytes == 0
    with pytest.raises(KeyError):
        tier.get("a")


def test_put_of_cuda_tensors_is_a_copy(gen):
    stored = get_codec("int8").encode(random_kv(gen))
    on_gpu = Stored(stored.codec, {k: t.cuda() for k, t in stored.tensors.items()}, stored.meta)
    tier = GpuTier(capacity_bytes=1 << 30)
    tier.put("a", on_gpu)
    for t in on_gpu.tensors.values():
        t.zero_()
    assert_same_stored(tier.get("a")[0], stored)


def test_load_from_cpu_tier_observes_the_transfer(gen):
    stored = get_codec("none").encode(random_kv(gen, layers=8))
    cpu = CpuTier(capacity_bytes=1 << 30)
    cpu.put("a", stored)
    assert all(t.is_pinned() for t in cpu.get("a")[0].tensors.values())
    tier = GpuTier(capacity_bytes=1 << 30)
    cpu_before, gpu_before = cpu.read_bps, tier.write_bps
    seconds = tier.load_from(cpu, "a")
    assert seconds > 0
    assert_same_stored(tier.get("a")[0], stored)
    assert cpu.read_bps != cpu_before and tier.write_bps != gpu_before


def test_load_from_disk_verifies_and_matches(gen, tmp_path):
    stored = get_codec("keydiff@0.5+int8").encode(random_kv(gen))
    disk = DiskTier(tmp_path / "disk", capacity_bytes=1 << 30)
    disk.put("ctx-1", stored)
    tier = GpuTier(capacity_bytes=1 << 30, chunk_bytes=1 << 20)
    before = disk.read_bps
    tier.load_from(disk, "ctx-1")
    assert_same_stored(tier.get("ctx-1")[0], stored)
    assert disk.read_bps != before
    # the same through the tier's own read + decode on the host
    assert_same_stored(Stored(stored.codec, {k: t.cuda() for k, t in disk.get("ctx-1")[0].tensors.items()}, stored.meta), stored)


def test_corrupt_file_is_never_served(gen, tmp_path):
    stored = get_codec("int8").encode(random_kv(gen))
    disk = DiskTier(tmp_path / "disk", capacity_bytes=1 << 30)
    put = disk.put("ctx", stored)
    with open(put.location, "r+b") as f:  # flip one payload byte near the end
        f.seek(-100, 2)
        byte = f.read(1)
        f.seek(-100, 2)
        f.write(bytes([byte[0] ^ 0x40]))
    tier = GpuTier(capacity_bytes=1 << 30)
    with pytest.raises(CorruptDataError):
        tier.load_from(disk, "ctx")
    assert not tier.contains("ctx")
    tier.prefetch("ctx", disk)
    with pytest.raises(CorruptDataError):
        tier.get("ctx")
    assert not tier.contains("ctx")


@pytest.mark.parametrize("source_kind", ("cpu", "disk"))
def test_prefetch_then_get(gen, tmp_path, source_kind):
    stored = get_codec("int4").encode(random_kv(gen, layers=8, tokens=2000))
    source = CpuTier(capacity_bytes=1 << 30) if source_kind == "cpu" else DiskTier(tmp_path / "d", capacity_bytes=1 << 30)
    source.put("next", stored)
    tier = GpuTier(capacity_bytes=1 << 30)
    start = time.perf_counter()
    tier.prefetch("next", source)
    launched_s = time.perf_counter() - start
    assert tier.contains("next")
    got, wait_s = tier.get("next")
    assert_same_stored(got, stored)
    assert launched_s < 1.0 and wait_s < 1.0
    tier.prefetch("next", source)  # already held: nothing to do
    tier.prefetch("absent", source)
    assert not tier.contains("absent")


def test_probe_measures_both_directions():
    tier = GpuTier(capacity_bytes=1 << 30)
    start = time.perf_counter()
    tier.probe()
    assert time.perf_counter() - start < 2.0
    assert 1e9 < tier.write_bps < 1e12  # a PCIe/NVLink-C2C host link
    assert tier.read_bps > tier.write_bps  # device memory beats the host link


def test_tree_checksum_load_verifies_on_many_threads(gen, tmp_path):
    from evicctl.manager.tiers.gpu import TREE_CHUNK_BYTES, TREE_PREFIX, tree_checksum

    stored = get_codec("none").encode(random_kv(gen, layers=8, tokens=4500))  # > 2 tree chunks
    disk = DiskTier(tmp_path / "disk", capacity_bytes=1 << 30)
    put = disk.put("c", stored)
    with open(put.location, "rb") as f:
        data = f.read()
    assert len(data) > 2 * TREE_CHUNK_BYTES
    checksum = tree_checksum(put.location)
    assert checksum.startswith(TREE_PREFIX) and checksum == tree_checksum(data, workers=1)
    tier = GpuTier(capacity_bytes=1 << 31)
    tier.load_file("c", put.location, checksum)
    assert_same_stored(tier.get("c")[0], stored)
    with open(put.location, "r+b") as f:  # one flipped bit in the second chunk
        f.seek(TREE_CHUNK_BYTES + 5)
        byte = f.read(1)
        f.seek(TREE_CHUNK_BYTES + 5)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(CorruptDataError):
        tier.load_file("c2", put.location, checksum)
    assert not tier.contains("c2")
