"""Redis connections from a URL (redis://, rediss://, unix://, user:password@ for ACL).

Every client reconnects with backoff and has a socket timeout, so a Redis that hangs
cannot wedge a loop past its shutdown. A client with ``max_connections`` makes callers
beyond it wait for a free connection instead of failing.

A Redis Cluster is named by ``redis+cluster://host:port`` (``rediss+cluster://`` with
TLS), any one node of it; ``CASCADEQ_CLUSTER=1`` turns a plain ``redis://`` URL into that
(``Settings.require_redis_url``). Those URLs give redis-py's ``RedisCluster``, which
finds the other nodes, routes each command by its key's slot and follows a failover.
"""

from __future__ import annotations

import contextlib
from typing import Any, cast

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from cascadeq.config.settings import CLUSTER_SCHEMES, is_cluster_url

_RETRY_ON = [redis.ConnectionError, redis.TimeoutError]
POOL_TIMEOUT_S = 30.0  # longest wait for a free pooled connection
CONNECT_TIMEOUT_S = 5.0


def is_cluster(client: object) -> bool:
    """True for a ``RedisCluster`` client (sync or asyncio)."""
    return isinstance(client, redis.cluster.RedisCluster | redis.asyncio.cluster.RedisCluster)


def _as_is(message: Any) -> Any:
    return message


async def _as_is_async(message: Any) -> Any:
    return message


def pubsub(client: Any, **kwargs: Any) -> Any:
    """``client.pubsub()`` (sync or asyncio, cluster or not) that takes each message as is.

    redis-py 8's hiredis parser hands every pub/sub message to a default push handler
    that builds a debug line with ``str(message)`` before the logger can drop it
    (redis/redis-py#4230): ~550 µs of CPU for a batch's 90 kB of results. Any handler
    of our own replaces it; versions before 8 never call it with hiredis. The asyncio
    parsers await theirs.
    """
    asynchronous = isinstance(client, redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster)
    return client.pubsub(push_handler_func=_as_is_async if asynchronous else _as_is, **kwargs)


def node_of(client: redis.Redis, key: str) -> redis.Redis:
    """A plain client of the node that serves ``key`` (the client itself on one Redis):
    what a WAIT after a write to that key must be sent through, on the same connection."""
    if not is_cluster(client):
        return client
    node: Any = cast(Any, client).get_node_from_key(key)
    return cast(redis.Redis, node.redis_connection)


def refresh(client: redis.Redis) -> None:
    """Re-read a cluster's slot map (after a node failed under a direct call)."""
    if is_cluster(client):
        with contextlib.suppress(redis.RedisError):  # the next call tries again
            cast(Any, client).nodes_manager.initialize()


def node_url(url: str) -> str:
    """The plain URL of the node a cluster URL names (redis-py's ``from_url`` reads it);
    a cluster has only database 0, so a ``/0`` path is dropped."""
    scheme, _, rest = url.partition("://")
    rest = rest.removesuffix("/0")
    return f"{CLUSTER_SCHEMES.get(scheme, scheme)}://{rest}"


def _options(name: str | None, socket_timeout: float | None, asynchronous: bool) -> dict[str, Any]:
    retry_cls = redis.asyncio.retry.Retry if asynchronous else Retry
    return {
        "retry": retry_cls(ExponentialBackoff(cap=2.0, base=0.05), 5),
        "retry_on_error": list(_RETRY_ON),
        "socket_keepalive": True,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "health_check_interval": 30,
        "client_name": name,
    }


def _cluster(url: str, max_connections: int | None, options: dict[str, Any]) -> redis.Redis:
    """A sync ``RedisCluster``; ``max_connections`` bounds each node's blocking pool."""
    options.pop("retry_on_error")  # the cluster client retries on moves and failovers itself
    extra: dict[str, Any] = {}
    if max_connections is not None:
        extra = {
            "max_connections": max_connections,
            "connection_pool_class": redis.BlockingConnectionPool,
            "timeout": POOL_TIMEOUT_S,
        }
    client = redis.cluster.RedisCluster.from_url(node_url(url), **options, **extra)
    return cast(redis.Redis, client)  # typed as redis.Redis: the roles' commands exist on both


def connect(
    url: str,
    *,
    max_connections: int | None = None,
    name: str | None = None,
    socket_timeout: float | None = 30.0,
) -> redis.Redis:
    """A client that reconnects with backoff; bytes in, bytes out; named in CLIENT LIST."""
    options = _options(name, socket_timeout, asynchronous=False)
    if is_cluster_url(url):
        return _cluster(url, max_connections, options)
    if max_connections is None:
        return redis.Redis.from_url(url, **options)
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=POOL_TIMEOUT_S, **options
    )
    return redis.Redis(connection_pool=pool)


def connect_async(
    url: str,
    *,
    max_connections: int | None = None,
    name: str | None = None,
    socket_timeout: float | None = 30.0,
) -> redis.asyncio.Redis:
    options = _options(name, socket_timeout, asynchronous=True)
    if is_cluster_url(url):
        options.pop("retry_on_error")
        options.pop("health_check_interval")
        limit = {} if max_connections is None else {"max_connections": max_connections}
        client = redis.asyncio.cluster.RedisCluster.from_url(node_url(url), **options, **limit)
        return cast(redis.asyncio.Redis, client)  # typed as redis.asyncio.Redis, as above
    if max_connections is None:
        return redis.asyncio.Redis.from_url(url, **options)
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=POOL_TIMEOUT_S, **options
    )
    return redis.asyncio.Redis(connection_pool=pool)
