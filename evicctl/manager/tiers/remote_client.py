"""Connecting to the shared tier's Redis (a cluster or one standalone server) and the two
errors its failures become. The redis client is imported here, on use, never at import."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from evicctl.errors import CorruptDataError, EvicctlError, RefusedError
from evicctl.redact import redact_url

# A dead node must cost a reader a bounded wait, not the client's defaults (no timeout).
SOCKET_TIMEOUT_S = 1.0
CONNECT_TIMEOUT_S = 0.5


class RemoteRefusedError(RefusedError):
    """The shared tier refused a write: cluster capacity, a tenant's quota, or unreachable.
    The refusal is recorded (the cluster's refusals stream, the manager's events)."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason  # capacity | quota | unreachable
        super().__init__(message)


class RemoteConnectError(EvicctlError):
    """The remote tier's server could not be reached or refused us at start (address, TLS,
    credentials). The message names the URL without its password, and why."""

    def __init__(self, url: str, exc: BaseException) -> None:
        reason = str(exc) or type(exc).__name__
        hint = ""
        if "CERTIFICATE_VERIFY_FAILED" in reason:
            hint = "; the server's certificate is not trusted here: add ?ssl_ca_certs=/path/to/ca.pem to the URL"
        elif url.startswith("redis://") and "reset by peer" in reason:
            hint = "; a server that speaks only TLS resets plain connections: use rediss://"
        super().__init__(f"remote tier {redact_url(url)}: cannot connect: {reason}{hint}")


class RemoteUnavailableError(CorruptDataError):
    """A stored copy could not be read from the shared tier (node down, object evicted). Like a
    failed checksum it is never served: the manager records the copy as lost and recomputes."""


def redis_errors() -> tuple[type[BaseException], ...]:
    """The client's errors that mean "the server (or one node) is not answering"."""
    from redis.exceptions import ConnectionError, RedisClusterException, RedisError, TimeoutError

    return (ConnectionError, TimeoutError, RedisClusterException, RedisError)


def connect(url: str):
    """A client for `url`: RedisCluster when the server says it is in cluster mode, else Redis.

    `rediss://user:password@host:port/0` connects with TLS and verifies the server's
    certificate (against the system's CAs, or `?ssl_ca_certs=/path/ca.pem`; a client
    certificate goes in `ssl_certfile` and `ssl_keyfile`: the client's URL parameters).
    Raises RemoteConnectError, without the password, when the server cannot be used."""
    import redis
    from redis.backoff import NoBackoff
    from redis.cluster import RedisCluster
    from redis.retry import Retry

    options = dict(socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=CONNECT_TIMEOUT_S)
    try:
        plain = redis.Redis.from_url(url, **options)
        try:
            clustered = plain.info("cluster").get("cluster_enabled") == 1
        finally:
            plain.close()
        if not clustered:
            return redis.Redis.from_url(url, **options)
        # a cluster has only database 0: drop a "/0" path (and a db= parameter); user,
        # password, rediss:// (TLS) and the TLS parameters stay
        parts = urlsplit(url)
        query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "db"])
        bare = urlunsplit(parts._replace(path="", query=query))
        return RedisCluster.from_url(bare, retry=Retry(NoBackoff(), 1), **options)
    except (ValueError, *redis_errors()) as exc:  # ValueError: a URL the client cannot parse
        raise RemoteConnectError(url, exc) from exc


def is_cluster(client) -> bool:
    from redis.cluster import RedisCluster

    return isinstance(client, RedisCluster)
