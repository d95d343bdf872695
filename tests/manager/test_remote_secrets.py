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
from evicctl.manager.tiers.remote_client import RemoteConnectError
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


USER = "evk-tier"


@pytest.fixture
def tls_redis(tmp_path):
    """A redis-server that speaks TLS only, with an ACL user: the URL is rediss://user:pass@..."""
    with redis_server(tmp_path / "srv", password=SECRET, user=USER, tls=True) as url:
        yield url


def _tls_config(tmp_path, url: str, **tier) -> ManagerConfig:
    return ManagerConfig(db_path=tmp_path / "e.db", cache_dir=tmp_path / "cache", codecs=("none",), tick_s=0.02,
                         tiers=(TierConfig("redis", capacity_bytes=64 << 20, url=url, **tier),))  # fmt: skip


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "private"])
def test_the_remote_tier_stores_and_loads_over_tls_with_a_user(tmp_path, tls_redis, run_cli, caplog, shared):
    import redis

    url = tls_redis
    assert url.startswith(f"rediss://{USER}:{SECRET}@127.0.0.1:")
    caplog.set_level(logging.DEBUG)
    config = _tls_config(tmp_path, url, shared=shared)
    kv = make_kv(0)
    with Manager(config, probe=False) as m:
        m.store("doc", kv, prefill_s=1.8)
        assert m.placement("doc").tier == "redis"
        hit = m.lookup("doc", device="cpu")
        assert hit is not None and hit.tier == "redis"
        assert all((a == b).all() for a, b in zip(hit.kv.keys, kv.keys, strict=True))
        assert SECRET not in m.tier_named("redis").url
        tiers = run_cli("tiers", "--db", str(config.db_path), "-o", "json")
        top = run_cli("top", "--once", "--db", str(config.db_path))
    for out in (tiers, top):
        assert out.exit_code == 0, out.stderr
        assert SECRET not in out.stdout + out.stderr
    assert "redis" in top.stdout and json.loads(tiers.stdout)
    with sqlite3.connect(config.db_path) as db:
        assert SECRET not in "\n".join(db.iterdump())
    assert SECRET not in caplog.text
    # The copy really went over TLS to that server: a plain connection to its port is refused.
    plain = redis.Redis(host="127.0.0.1", port=int(url.split(":")[-1].split("/")[0]), socket_timeout=1,
                        username=USER, password=SECRET)  # fmt: skip
    with pytest.raises(redis.ConnectionError):
        plain.ping()
    plain.close()


@pytest.mark.parametrize("change", ["no-ca", "wrong-password", "plain-redis"])
def test_a_tls_url_that_cannot_connect_fails_without_the_password(tmp_path, tls_redis, caplog, change):
    """Certificates are verified (an untrusted server is refused, never used); whatever fails,
    the error says why without the password."""
    url = tls_redis
    bad = {
        "no-ca": url.split("?")[0],  # the server's CA is not in the system's trust store
        "wrong-password": url.replace(f":{SECRET}@", ":not-it@"),
        "plain-redis": url.replace("rediss://", "redis://", 1).split("?")[0],
    }[change]
    caplog.set_level(logging.DEBUG)
    with pytest.raises(RemoteConnectError) as failed:  # typed: one line from the CLI, no traceback
        Manager(_tls_config(tmp_path, bad, shared=False), probe=False).close()
    message = str(failed.value)
    assert SECRET not in f"{message} {failed.value.__cause__!r} {caplog.text}" and "not-it" not in message
    assert f"{USER}:***@127.0.0.1" in message
    want = {"no-ca": "certificate verify failed", "wrong-password": "invalid username-password", "plain-redis": "use rediss://"}
    assert want[change] in message
    if change == "no-ca":
        assert "ssl_ca_certs" in message  # what to do about it
