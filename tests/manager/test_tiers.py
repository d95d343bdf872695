"""Tiers: the shared interface on every backend, disk durability and checksums, redis, make_tier."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch
from redis_server import redis_server

from evicctl.config import TierConfig
from evicctl.errors import CorruptDataError, UnknownNameError, UsageError
from evicctl.manager.codecs.codec import Stored, decode, get_codec
from evicctl.manager.kv import KV
from evicctl.manager.tiers import checksum
from evicctl.manager.tiers import disk as disk_tier
from evicctl.manager.tiers.build import make_tier
from evicctl.manager.tiers.checksum import TREE_PREFIX, tree_checksum
from evicctl.manager.tiers.disk import DiskTier
from evicctl.manager.tiers.remote import RedisTier
from evicctl.manager.tiers.tier import CpuTier, HeldEntry


def make_stored(codec: str = "int8", tokens: int = 100, seed: int = 0) -> Stored:
    gen = torch.Generator().manual_seed(seed)
    keys = [torch.randn(1, 3, tokens, 64, generator=gen) for _ in range(2)]
    values = [torch.randn(1, 3, tokens, 64, generator=gen) for _ in range(2)]
    return get_codec(codec).encode(KV.full(keys, values, torch.randn(2, 6, 16, 64, generator=gen)))


def same(a: Stored, b: Stored) -> bool:
    return (
        a.codec == b.codec
        and a.meta == b.meta
        and a.tensors.keys() == b.tensors.keys()
        and all(torch.equal(a.tensors[k], b.tensors[k]) and a.tensors[k].dtype == b.tensors[k].dtype for k in a.tensors)
    )


# ---------------------------------------------------------------- a real redis-server


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(params=["cpu", "disk", "redis"])
def tier(request, tmp_path):
    if request.param == "cpu":
        yield CpuTier(capacity_bytes=10 << 20)
    elif request.param == "disk":
        yield DiskTier(tmp_path / "kv", capacity_bytes=10 << 20)
    else:
        t = RedisTier(request.getfixturevalue("redis_url"), capacity_bytes=10 << 20, prefix=f"t{time.monotonic_ns()}:")
        yield t
        t.client.close()


# ---------------------------------------------------------------- every backend


def test_put_get_delete_contains(tier) -> None:
    stored = make_stored("snapkv@0.5+int4")
    assert not tier.contains("a") and tier.used_bytes == 0
    result = tier.put("a", stored)
    assert result.seconds >= 0 and tier.contains("a") and tier.context_ids() == ["a"]
    got, seconds = tier.get("a")
    assert same(got, stored) and seconds >= 0
    kv = decode(got)
    assert kv.kept_tokens == 50 and torch.equal(kv.positions, decode(stored).positions)
    tier.delete("a")
    assert not tier.contains("a") and tier.used_bytes == 0
    with pytest.raises(KeyError):
        tier.get("a")
    tier.delete("a")  # absent: no-op


def test_capacity_accounting(tier) -> None:
    a, b = make_stored("none"), make_stored("int4", seed=1)
    tier.put("a", a)
    tier.put("b", b)
    assert tier.used_bytes == a.nbytes + b.nbytes == tier.stored_nbytes("a") + tier.stored_nbytes("b")
    assert tier.free_bytes == tier.capacity_bytes - tier.used_bytes
    tier.put("a", b)  # replace: accounted once, at the new size
    assert tier.used_bytes == 2 * b.nbytes
    got, _ = tier.get("a")
    assert same(got, b)
    tier.delete("b")
    assert tier.used_bytes == b.nbytes


def test_put_keeps_its_own_copy(tier) -> None:
    stored = make_stored("none")
    want = stored.tensors["k.0"].clone()
    tier.put("a", stored)
    stored.tensors["k.0"].add_(1.0)  # the caller reuses its buffer
    got, _ = tier.get("a")
    assert torch.equal(got.tensors["k.0"], want)


def test_probe_is_fast_and_leaves_nothing(tier) -> None:
    start = time.perf_counter()
    tier.probe()
    assert time.perf_counter() - start < 1.0
    assert tier.read_bps > 1e6 and tier.write_bps > 1e6
    assert tier.used_bytes == 0 and tier.context_ids() == []


def test_observe_is_a_moving_average() -> None:
    tier = CpuTier(capacity_bytes=1)
    tier.read_bps = 1e9
    tier.observe("read", 10 << 20, (10 << 20) / 2e9)
    assert tier.read_bps == pytest.approx(0.8 * 1e9 + 0.2 * 2e9)
    tier.observe("read", 1000, 1.0)  # too small to say anything
    tier.observe("write", 10 << 20, 0.0)
    assert tier.read_bps == pytest.approx(1.2e9)
    with pytest.raises(ValueError):
        tier.observe("seek", 1 << 30, 1.0)


def test_concurrent_use_is_safe(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, capacity_bytes=1 << 30)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            stored = make_stored("int8", seed=i)
            for _ in range(3):
                tier.put(f"c{i}", stored)
                assert same(tier.get(f"c{i}")[0], stored)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and sorted(tier.context_ids()) == ["c0", "c1", "c2", "c3"]


def test_get_during_replacing_puts_serves_old_or_new_never_corrupt(tier) -> None:
    old, new = make_stored("int8", seed=1), make_stored("int4", seed=2)
    tier.put("x", old)
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for i in range(12):
                tier.put("x", new if i % 2 == 0 else old)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            stop.set()

    thread = threading.Thread(target=writer)
    thread.start()
    reads = 0
    while not stop.is_set() or reads == 0:
        got, _ = tier.get("x")
        assert same(got, old) or same(got, new)
        reads += 1
    thread.join()
    assert not errors and reads > 0


# ---------------------------------------------------------------- disk


def test_disk_file_checksum_and_permissions(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path / "kv", capacity_bytes=1 << 30)
    result = tier.put("ctx-1", make_stored())
    path = Path(result.location)
    assert path.parent == tier.path and path.name == "ctx-1.safetensors"
    assert result.checksum == tree_checksum(path.read_bytes(), workers=1) and result.checksum.startswith(TREE_PREFIX)
    assert tier.held("ctx-1") == HeldEntry(make_stored().nbytes, str(path), result.checksum)
    assert (path.stat().st_mode & 0o777) == 0o600 and (tier.path.stat().st_mode & 0o777) == 0o700
    assert tier.files() == [path]


@pytest.mark.parametrize("where", ["header", "data", "last"])
def test_disk_corruption_is_detected_never_served(tmp_path: Path, where: str) -> None:
    tier = DiskTier(tmp_path, capacity_bytes=1 << 30)
    path = Path(tier.put("a", make_stored()).location)
    raw = bytearray(path.read_bytes())
    offset = {"header": 20, "data": len(raw) // 2, "last": len(raw) - 1}[where]
    raw[offset] ^= 0x01
    path.write_bytes(raw)
    with pytest.raises(CorruptDataError, match="checksum"):
        tier.get("a")


def test_tree_checksum_is_the_digest_of_chunk_digests(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(checksum, "TREE_CHUNK_BYTES", 1000)
    data = os.urandom(3456)
    digests = b"".join(hashlib.sha256(data[i : i + 1000]).digest() for i in range(0, len(data), 1000))
    want = TREE_PREFIX + hashlib.sha256(digests).hexdigest()
    assert tree_checksum(data, workers=1) == tree_checksum(data, workers=3) == want
    lanes = checksum.HashLanes(3)
    try:
        hasher = checksum.TreeHasher(lanes)
        for piece in (data[:7], data[7:1999], data[1999:2000], data[2000:]):  # pieces across chunk ends
            hasher.update(piece)
        assert hasher.hexdigest() == want
        assert checksum.TreeHasher(lanes).hexdigest() == tree_checksum(b"")  # no chunk at all
    finally:
        lanes.close()
    (tmp_path / "f").write_bytes(data)
    assert tree_checksum(tmp_path / "f") == want
    assert tree_checksum(data[1000:2000] + data[:1000] + data[2000:]) != want  # chunk order counts


def test_disk_tree_checksum_spans_many_chunks(tmp_path: Path, monkeypatch) -> None:
    """Small tree chunks and odd read pieces: put and get hash the same chunks, and a flipped
    bit in any chunk is caught."""
    monkeypatch.setattr(checksum, "TREE_CHUNK_BYTES", 4096)
    monkeypatch.setattr(disk_tier, "READ_CHUNK_BYTES", 3000)
    tier = DiskTier(tmp_path, capacity_bytes=1 << 30)
    stored = make_stored("none")
    result = tier.put("a", stored)
    raw = Path(result.location).read_bytes()
    assert len(raw) > 20 * 4096 and result.checksum == tree_checksum(raw, workers=1)
    assert same(tier.get("a")[0], stored)
    broken = bytearray(raw)
    broken[9 * 4096 + 17] ^= 0x40
    Path(result.location).write_bytes(broken)
    with pytest.raises(CorruptDataError, match="sha256-tree checksum"):
        tier.get("a")
    tier.close()


def test_disk_files_with_a_plain_sha256_still_verify(tmp_path: Path) -> None:
    """Files written before the tree checksum carry a plain sha256: get and adopt accept it."""
    tier = DiskTier(tmp_path, capacity_bytes=1 << 30)
    stored = make_stored("int4")
    location = tier.put("a", stored).location
    plain = hashlib.sha256(Path(location).read_bytes()).hexdigest()
    restarted = DiskTier(tmp_path, capacity_bytes=1 << 30)
    assert restarted.adopt("a", location, plain) == stored.nbytes
    assert restarted.held("a").checksum == plain
    assert same(restarted.get("a")[0], stored)
    with pytest.raises(CorruptDataError, match="sha256 checksum"):
        restarted.adopt("b", location, "f" * 64)
    raw = bytearray(Path(location).read_bytes())
    raw[-3] ^= 0x01
    Path(location).write_bytes(raw)
    with pytest.raises(CorruptDataError, match="sha256 checksum"):
        restarted.get("a")


def test_held_reports_what_a_tier_holds(tmp_path: Path) -> None:
    cpu = CpuTier(capacity_bytes=1 << 30)
    stored = make_stored()
    cpu.put("a", stored)
    assert cpu.held("a") == HeldEntry(stored.nbytes, None, None)
    with pytest.raises(KeyError):
        cpu.held("nope")


def test_disk_missing_or_truncated_file(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, capacity_bytes=1 << 30)
    path = Path(tier.put("a", make_stored()).location)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CorruptDataError):
        tier.get("a")
    path.unlink()
    with pytest.raises(CorruptDataError, match="missing"):
        tier.get("a")


def test_disk_never_leaves_temp_files(tmp_path: Path, monkeypatch) -> None:
    tier = DiskTier(tmp_path, capacity_bytes=1 << 30)
    old = make_stored("int8")
    tier.put("a", old)
    for i in range(3):
        tier.put(f"b{i}", make_stored("int4", seed=i))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "b0.safetensors", "b1.safetensors", "b2.safetensors"]

    def failing_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(disk_tier.os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        tier.put("a", make_stored("none", seed=9))
    monkeypatch.undo()
    assert not list(tmp_path.glob(".*.tmp")) and not list(tmp_path.glob("*.tmp"))
    got, _ = tier.get("a")  # the old copy is intact and still served
    assert same(got, old)


def test_disk_removes_stale_temps_of_dead_writers(tmp_path: Path) -> None:
    dead = 2**22 + 12345
    while psutil.pid_exists(dead):
        dead += 1
    stale = tmp_path / f".a.safetensors.{dead}.deadbeef.tmp"
    stale.write_bytes(b"partial")
    live = tmp_path / f".b.safetensors.{os.getppid()}.cafebabe.tmp"  # a live process's write
    live.write_bytes(b"in flight")
    DiskTier(tmp_path, capacity_bytes=1)
    assert not stale.exists() and live.exists()


def test_disk_adopt_after_restart(tmp_path: Path) -> None:
    first = DiskTier(tmp_path, capacity_bytes=1 << 30)
    stored = make_stored("knorm@0.5+int8")
    result = first.put("a", stored)
    first.put("orphan", make_stored("int4"))
    restarted = DiskTier(tmp_path, capacity_bytes=1 << 30)
    assert restarted.used_bytes == 0 and len(restarted.files()) == 2
    assert restarted.adopt("a", result.location, result.checksum) == stored.nbytes
    assert restarted.contains("a") and restarted.used_bytes == stored.nbytes
    assert same(restarted.get("a")[0], stored)
    orphans = [p for p in restarted.files() if str(p) != result.location]
    assert [p.name for p in orphans] == ["orphan.safetensors"]
    assert restarted.adopt("b", result.location, None, verify=False) == stored.nbytes


def test_disk_adopt_refuses_bad_files(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path / "kv", capacity_bytes=1 << 30)
    result = tier.put("a", make_stored())
    other = DiskTier(tmp_path / "kv", capacity_bytes=1 << 30)
    with pytest.raises(CorruptDataError, match="checksum"):
        other.adopt("a", result.location, "0" * 64)
    assert not other.contains("a")
    with pytest.raises(CorruptDataError, match="missing"):
        other.adopt("x", str(tier.path / "nope.safetensors"), None)
    outside = tmp_path / "elsewhere.safetensors"
    shutil.copy(result.location, outside)
    with pytest.raises(CorruptDataError, match="directory"):
        other.adopt("a", str(outside), result.checksum)


@pytest.mark.parametrize("context_id", ["../escape", "a/b", "sp ace", ".hidden", "ü" * 5, "x" * 300])
def test_disk_odd_ids_stay_inside_the_directory(tmp_path: Path, context_id: str) -> None:
    tier = DiskTier(tmp_path / "kv", capacity_bytes=1 << 30)
    path = Path(tier.put(context_id, make_stored()).location)
    assert path.parent == tier.path and len(path.name) < 120
    assert same(tier.get(context_id)[0], make_stored())
    assert list((tmp_path).iterdir()) == [tier.path]


def test_disk_delete_removes_the_file(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, capacity_bytes=1 << 30)
    path = Path(tier.put("a", make_stored()).location)
    tier.delete("a")
    assert not path.exists() and tier.files() == []


# ---------------------------------------------------------------- redis


def test_redis_shared_between_engines_and_checksummed(redis_url: str) -> None:
    prefix = f"shared{time.monotonic_ns()}:"
    writer = RedisTier(redis_url, capacity_bytes=1 << 30, prefix=prefix)
    reader = RedisTier(redis_url, capacity_bytes=1 << 30, prefix=prefix)  # another host's tier
    stored = make_stored("int4")
    result = writer.put("a", stored)
    assert result.location == prefix + "a" and len(result.checksum) == 64
    assert reader.contains("a") and reader.used_bytes == 0
    assert same(reader.get("a")[0], stored)
    assert reader.adopt("a", result.location, result.checksum) == stored.nbytes
    data = bytearray(writer.client.hget(result.location, "data"))
    data[len(data) // 2] ^= 0x10
    writer.client.hset(result.location, "data", bytes(data))
    with pytest.raises(CorruptDataError, match="checksum"):
        writer.get("a")
    with pytest.raises(CorruptDataError, match="checksum"):
        reader.get("a")
    writer.client.delete(result.location)
    with pytest.raises(CorruptDataError, match="gone"):
        writer.get("a")
    with pytest.raises(KeyError):
        RedisTier(redis_url, capacity_bytes=1, prefix=prefix).get("a")


def test_make_tier_redis(redis_url: str) -> None:
    tier = make_tier(TierConfig("redis", capacity_fraction=0.5, url=redis_url), rank=3)
    assert isinstance(tier, RedisTier) and tier.rank == 3 and tier.capacity_bytes > 0
    tier.put("mk", make_stored())
    assert tier.get("mk")[0].codec == "int8"
    tier.delete("mk")


# ---------------------------------------------------------------- make_tier


def test_make_tier_cpu_and_disk(tmp_path: Path) -> None:
    cpu = make_tier(TierConfig("cpu", capacity_bytes=123), rank=0)
    assert isinstance(cpu, CpuTier) and (cpu.name, cpu.backend, cpu.rank, cpu.capacity_bytes) == ("cpu", "cpu", 0, 123)
    frac = make_tier(TierConfig("cpu", capacity_fraction=0.25), rank=0)
    available = psutil.virtual_memory().available
    assert 0.2 * available < frac.capacity_bytes < 0.3 * available
    disk = make_tier(TierConfig("disk", capacity_fraction=0.5, path=tmp_path / "d"), rank=1)
    free = shutil.disk_usage(tmp_path).free
    assert isinstance(disk, DiskTier) and disk.path == (tmp_path / "d").resolve()
    assert 0.45 * free < disk.capacity_bytes < 0.55 * free
    default = make_tier(TierConfig("disk", capacity_bytes=1 << 20), rank=1, cache_dir=tmp_path / "cache")
    assert default.path == (tmp_path / "cache" / "disk").resolve() and default.path.is_dir()


def test_no_backend_module_imports_the_redis_client(tmp_path: Path) -> None:
    """The redis client loads only when a redis tier is built (make_tier), never on import."""
    code = (
        "import sys\n"
        "import evicctl.manager.tiers.build, evicctl.manager.tiers.remote, evicctl.manager.tiers.disk\n"
        "from evicctl.manager.tiers.remote import RedisTier\nfrom evicctl.manager.tiers.disk import DiskTier\n"
        "assert RedisTier.backend == 'redis' and DiskTier.backend == 'disk'\n"
        "assert 'redis' not in sys.modules, 'importing the tiers loaded the redis client'\n"
    )
    proc = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_make_tier_rejects_bad_configs() -> None:
    with pytest.raises(UnknownNameError, match="disk"):
        make_tier(TierConfig("tape", capacity_bytes=1), rank=0)
    with pytest.raises(UsageError):
        make_tier(TierConfig("cpu", capacity_fraction=1.5), rank=0)
    with pytest.raises(UsageError):
        CpuTier(capacity_bytes=-1)
