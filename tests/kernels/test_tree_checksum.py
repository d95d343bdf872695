"""The sha256-tree checksum (CPU only): deterministic, chunk-order sensitive, any thread count."""

from __future__ import annotations

import hashlib

from evicctl.manager.tiers.gpu import TREE_CHUNK_BYTES, TREE_PREFIX, tree_checksum


def test_tree_checksum_is_the_digest_of_chunk_digests(tmp_path):
    data = bytes(range(256)) * ((2 * TREE_CHUNK_BYTES + 12345) // 256)
    chunks = [data[i : i + TREE_CHUNK_BYTES] for i in range(0, len(data), TREE_CHUNK_BYTES)]
    want = TREE_PREFIX + hashlib.sha256(b"".join(hashlib.sha256(c).digest() for c in chunks)).hexdigest()
    assert tree_checksum(data, workers=1) == want
    assert tree_checksum(data, workers=4) == want
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert tree_checksum(path) == want


def test_tree_checksum_sees_a_swap_of_chunks():
    a, b = b"a" * TREE_CHUNK_BYTES, b"b" * TREE_CHUNK_BYTES
    assert tree_checksum(a + b) != tree_checksum(b + a)
    assert tree_checksum(b"") == TREE_PREFIX + hashlib.sha256(b"").hexdigest()
