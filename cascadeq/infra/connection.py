"""Redis connections from a URL (redis://, rediss://, unix://, user:password@ for ACL).

Every client reconnects with backoff and has a socket timeout, so a Redis that hangs
cannot wedge a loop past its shutdown. A client with ``max_connections`` makes callers
beyond it wait for a free connection instead of failing.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

_RETRY_ON = [redis.ConnectionError, redis.TimeoutError]
POOL_TIMEOUT_S = 30.0  # longest wait for a free pooled connection
CONNECT_TIMEOUT_S = 5.0


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


def connect(
    url: str,
    *,
    max_connections: int | None = None,
    name: str | None = None,
    socket_timeout: float | None = 30.0,
) -> redis.Redis:
    """A client that reconnects with backoff; bytes in, bytes out; named in CLIENT LIST."""
    options = _options(name, socket_timeout, asynchronous=False)
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
    if max_connections is None:
        return redis.asyncio.Redis.from_url(url, **options)
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=POOL_TIMEOUT_S, **options
    )
    return redis.asyncio.Redis(connection_pool=pool)
