"""Redis connections from a URL (redis://, rediss://, unix://, user:password@ for ACL)."""

from __future__ import annotations

import redis
import redis.asyncio
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

_RETRY_ON = (redis.ConnectionError, redis.TimeoutError)


def connect(
    url: str, *, max_connections: int | None = None, name: str | None = None
) -> redis.Redis:
    """A client that reconnects with backoff; bytes in, bytes out; named in CLIENT LIST."""
    return redis.Redis.from_url(
        url,
        client_name=name,
        decode_responses=False,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), 5),
        retry_on_error=list(_RETRY_ON),
        socket_keepalive=True,
        health_check_interval=30,
        max_connections=max_connections,
    )


def connect_async(
    url: str, *, max_connections: int | None = None, name: str | None = None
) -> redis.asyncio.Redis:
    return redis.asyncio.Redis.from_url(
        url,
        client_name=name,
        decode_responses=False,
        retry=redis.asyncio.retry.Retry(ExponentialBackoff(cap=2.0, base=0.05), 5),
        retry_on_error=list(_RETRY_ON),
        socket_keepalive=True,
        health_check_interval=30,
        max_connections=max_connections,
    )
