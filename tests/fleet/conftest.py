"""Real Redis for the fleet tests: a 3-node cluster from scripts/redis-cluster.sh (one per
session; tests isolate themselves by key namespace) and a standalone server."""

from __future__ import annotations

import shutil
import socket
import subprocess
import uuid
from pathlib import Path

import pytest
from needs import missing
from redis_server import redis_server

from evicctl.entry import CHECKOUT_ROOT

SCRIPT = CHECKOUT_ROOT / "scripts" / "redis-cluster.sh"


def free_base_port(count: int) -> int:
    """A base port with `count` free ports and their cluster bus ports (+10000)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + count + 10000 >= 65535:
            continue
        if all(_free(p) and _free(p + 10000) for p in range(base, base + count)):
            return base
    raise RuntimeError("no free ports for a redis cluster")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def need_redis() -> None:
    if not (shutil.which("redis-server") and shutil.which("redis-cli")):
        missing("redis-server / redis-cli are not on PATH (apt-get install redis-server)")


class Cluster:
    """A running cluster: its url, its nodes' ports, and a way to kill one."""

    def __init__(self, workdir: Path, base: int, nodes: int) -> None:
        self.workdir, self.base, self.nodes = workdir, base, nodes
        out = subprocess.run([str(SCRIPT), "start", str(workdir), str(base), str(nodes)],
                             capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
        self.url = out.stdout.strip().splitlines()[-1]

    @property
    def ports(self) -> list[int]:
        return list(range(self.base, self.base + self.nodes))

    def pid(self, port: int) -> int:
        return int((self.workdir / str(port) / "redis.pid").read_text())

    def stop(self) -> None:
        subprocess.run([str(SCRIPT), "stop", str(self.workdir)], timeout=30, check=False)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    need_redis()
    c = Cluster(tmp_path_factory.mktemp("cluster"), free_base_port(3), 3)
    yield c
    c.stop()


@pytest.fixture()
def own_cluster(tmp_path):
    """A cluster of this test's own, for tests that kill a node."""
    need_redis()
    c = Cluster(tmp_path / "cluster", free_base_port(3), 3)
    yield c
    c.stop()


@pytest.fixture(scope="session")
def standalone_url(tmp_path_factory):
    need_redis()
    with redis_server(tmp_path_factory.mktemp("standalone")) as url:
        yield url


@pytest.fixture()
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:10]}"
