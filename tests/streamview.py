"""Reading streams as requests, whether an entry holds one request or a bundle."""

from __future__ import annotations

import redis

from cascadeq.protocol import bundle, deadletter
from cascadeq.protocol.keys import Keys


def headers_in(r: redis.Redis, stream: str) -> list[bundle.Header]:
    """Every request header in a stream, in order."""
    out: list[bundle.Header] = []
    for eid, fields in r.xrange(stream):
        out += bundle.decode(stream, eid, fields, 1 << 30).headers
    return out


def count(r: redis.Redis, stream: str) -> int:
    return len(headers_in(r, stream))


def dead_letters(r: redis.Redis, keys: Keys) -> list[deadletter.DeadLetter]:
    """Every dead-letter record, oldest first, as the operator tools read them."""
    return [deadletter.parse(eid, fields) for eid, fields in r.xrange(keys.dead_letter)]
