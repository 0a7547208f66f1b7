"""The result-key protocol: the "not ready" placeholder, first write wins, the published
message format and what a stored value means (the dead-letter record: deadletter.py).

Its one owner: submit.lua writes the placeholder, commit.lua stores over it and publishes in
the format ``split_published`` reads, and clients read result keys through the helpers
here, so "not ready" (the placeholder) and "unknown" (no key) mean the same everywhere.

Routers and workers store results through the batch commit script (cascadeq/protocol/lua/commit.lua:
store if absent or placeholder, publish what was stored, one message per waiter). The
one-result script here does the same for a single result (tools and tests), so a request
processed twice after a crash can never be answered with two different values.
"""

from __future__ import annotations

from typing import Any

import msgpack

from cascadeq.protocol import lua
from cascadeq.protocol.keys import Keys
from cascadeq.protocol.messages import Result

#: What submit stores under a result key until the real result lands: "submitted, not
#: answered yet". 0xc1 is the one byte msgpack never uses, so no Result can equal it.
PENDING = b"\xc1"


_ARRAY_MARKERS = frozenset({*range(0x90, 0xA0), 0xDC, 0xDD})  # msgpack array headers


class Unknown(LookupError):
    """No result key: the request was never submitted, or its result (or placeholder) expired."""


def is_pending(raw: object) -> bool:
    """True for the placeholder submit leaves, or a worker's claim over it (lua/claim.lua:
    the same first byte): the request exists but has no result yet."""
    return isinstance(raw, bytes) and raw[:1] == PENDING


def read_stored(raw: Any) -> Result | None:
    """What a GET of a result key means: the result, None while not ready; raises Unknown."""
    if raw is None:
        raise Unknown
    return None if is_pending(raw) else Result.loads(raw)


MGET_CHUNK = 1000  # result keys per MGET


def mget_commands(keys: Keys, ids: list[str]) -> list[tuple[str, ...]]:
    """The MGETs that read these ids' result keys, MGET_CHUNK keys each (to be pipelined):
    one concatenation per id, not a method call and an f-string."""
    if keys.shards == 1:
        prefix = keys.result_prefix()
        return [
            ("MGET", *[prefix + rid for rid in ids[start : start + MGET_CHUNK]])
            for start in range(0, len(ids), MGET_CHUNK)
        ]
    out: list[tuple[str, ...]] = []  # ids in shard order (by_shard): one slot per MGET
    start = 0
    while start < len(ids):
        shard = keys.shard_of(ids[start])
        prefix, chunk = keys.result_prefix(shard), list[str]()
        while start < len(ids) and len(chunk) < MGET_CHUNK and keys.shard_of(ids[start]) == shard:
            chunk.append(prefix + ids[start])
            start += 1
        out.append(("MGET", *chunk))
    return out


def by_shard(keys: Keys, ids: list[str]) -> list[str]:
    """The ids ordered by their shard, as ``mget_commands`` wants them with shards > 1."""
    return ids if keys.shards == 1 else sorted(ids, key=keys.shard_of)


def answered(ids: list[str], raws: list[Any]) -> list[tuple[str, bytes]]:
    """The (id, stored result) pairs among what an MGET of these ids' keys found: neither
    absent (unknown, or not stored yet) nor the placeholder (not ready)."""
    return [
        (rid, raw)
        for rid, raw in zip(ids, raws, strict=True)
        if raw is not None and raw[:1] != PENDING
    ]


def queue_result(pipe: Any, keys: Keys, result: Result, reply_to: str | None, ttl_s: int) -> None:
    """Add the store-and-notify step for one result to a pipeline (lua/store_once.lua)."""
    channel = keys.reply_channel(reply_to) if reply_to else ""
    pipe.eval(
        lua.load("store_once").text, 1, keys.result(result.id), result.dumps(), ttl_s, channel
    )


def join_published(payloads: list[bytes]) -> bytes:
    """One reply-channel message for these results, as commit.lua publishes them: a lone
    result as stored, several as a msgpack array of them (a result itself is a map)."""
    return payloads[0] if len(payloads) == 1 else msgpack.packb(payloads, use_bin_type=True)


def split_published(data: bytes) -> list[bytes]:
    """The result payloads in one reply-channel message: one result, or an array of them."""
    if not data or data[0] not in _ARRAY_MARKERS:
        return [data]
    try:
        items = msgpack.unpackb(data, raw=True)
    except (ValueError, msgpack.UnpackException):
        return []
    if not isinstance(items, list):
        return []
    return [item for item in items if isinstance(item, bytes)]
