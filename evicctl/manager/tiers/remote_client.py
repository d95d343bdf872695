"""Connecting to the shared tier's Redis (a cluster or one standalone server) and the two
errors its failures become. The redis client is imported here, on use, never at import."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from evicctl.errors import CorruptDataError, RefusedError

# A dead node must cost a reader a bounded wait, not the client's defaults (no timeout).
SOCKET_TIMEOUT_S = 1.0
CONNECT_TIMEOUT_S = 0.5


class RemoteRefusedError(RefusedError):
    """The shared tier refused a write: cluster capacity, a tenant's quota, or unreachable.
    The refusal is recorded (the cluster's refusals stream, the manager's events)."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason  # capacity | quota | unreachable
        super().__init__(message)


class RemoteUnavailableError(CorruptDataError):
    """A stored copy could not be read from the shared tier (node down, object evicted). Like a
    failed checksum it is never served: the manager records the copy as lost and recomputes."""


def redis_errors() -> tuple[type[BaseException], ...]:
    """The client's errors that mean "the server (or one node) is not answering"."""
    from redis.exceptions import ConnectionError, RedisClusterException, RedisError, TimeoutError

    return (ConnectionError, TimeoutError, RedisClusterException, RedisError)


def connect(url: str):
    """A client for `url`: RedisCluster when the server says it is in cluster mode, else Redis."""
    import redis
    from redis.backoff import NoBackoff
    from redis.cluster import RedisCluster
    from redis.retry import Retry

    options = dict(socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=CONNECT_TIMEOUT_S)
    plain = redis.Redis.from_url(url, **options)
    try:
        clustered = plain.info("cluster").get("cluster_enabled") == 1
    finally:
        plain.close()
    if not clustered:
        return redis.Redis.from_url(url, **options)
    # a cluster has only database 0: drop a "/0" path; user, password and rediss:// (TLS) stay
    bare = urlunsplit(urlsplit(url)._replace(path="", query=""))
    return RedisCluster.from_url(bare, retry=Retry(NoBackoff(), 1), **options)


def is_cluster(client) -> bool:
    from redis.cluster import RedisCluster

    return isinstance(client, RedisCluster)
