"""Reading streams as requests, whether an entry holds one request or a bundle."""

from __future__ import annotations

import redis

from cascadeq.protocol import bundle


def headers_in(r: redis.Redis, stream: str) -> list[bundle.Header]:
    """Every request header in a stream, in order."""
    out: list[bundle.Header] = []
    for eid, fields in r.xrange(stream):
        out += bundle.decode(stream, eid, fields, 1 << 30).headers
    return out


def count(r: redis.Redis, stream: str) -> int:
    return len(headers_in(r, stream))
