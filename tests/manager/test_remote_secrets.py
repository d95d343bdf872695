"""A remote tier's password never shows: not in errors, logs, `evicctl tiers`, the manager's
description in the store, nor the fleet view's messages. Against a real redis-server that
requires a password."""

from __future__ import annotations

import json
import logging
import sqlite3

import pytest
from manager_helpers import make_kv
from redis_server import redis_server

from evicctl.config import ManagerConfig, TierConfig
from evicctl.manager.manager import Manager
from evicctl.redact import redact_url

SECRET = "s3cret-Pa55"


def test_redact_url_hides_only_the_password():
    assert redact_url(f"redis://alice:{SECRET}@db.example:6380/2") == "redis://alice:***@db.example:6380/2"
    assert redact_url(f"rediss://:{SECRET}@[::1]:6379") == "rediss://:***@[::1]:6379"
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert SECRET not in redact_url(f"redis://u:{SECRET}@h:99999999")  # unparsable port: still hidden


@pytest.fixture
def private_redis(tmp_path):
    import redis

    with redis_server(tmp_path, password=SECRET) as url:
        client = redis.Redis.from_url(url)
        yield url, client
        client.close()


def test_the_password_shows_nowhere(tmp_path, private_redis, run_cli, caplog):
    url, client = private_redis
    config = ManagerConfig(db_path=tmp_path / "e.db", cache_dir=tmp_path / "cache", codecs=("none",), tick_s=0.02,
                           tiers=(TierConfig("redis", capacity_bytes=64 << 20, url=url, shared=False),))  # fmt: skip
    caplog.set_level(logging.DEBUG)
    with Manager(config, probe=False) as m:
        m.store("doc", make_kv(0), prefill_s=1.8)
        tier = m.tier_named("redis")
        assert SECRET not in tier.url and "***" in tier.url
        assert m.placement("doc").tier == "redis"
        client.flushall()  # the copy vanishes behind the manager's back: a lost copy, an event
        assert m.lookup("doc", device="cpu") is None
        out = run_cli("tiers", "--db", str(config.db_path), "-o", "json")
    assert out.exit_code == 0, out.stderr
    assert SECRET not in out.stdout + out.stderr
    with sqlite3.connect(config.db_path) as db:
        dump = "\n".join(db.iterdump())
    assert SECRET not in dump, "the password reached the store"
    assert SECRET not in caplog.text
    assert json.loads(out.stdout)  # a real answer, not an empty one
    assert "lost" in dump or "gone" in dump  # the loss was recorded (without the password)
