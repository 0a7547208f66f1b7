"""Consumer-group chores shared by routers and workers: groups, reclaim, safe trim."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import redis

Fields = dict[bytes, bytes]
Entry = tuple[bytes, Fields]


def ensure_group(r: redis.Redis, stream: str, group: str) -> None:
    """Create the group at the stream's start, so entries added before it are served."""
    try:
        r.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def read_new(
    r: redis.Redis,
    streams: list[str],
    group: str,
    consumer: str,
    count: int,
    block_ms: int | None,
) -> list[tuple[str, Entry]]:
    """XREADGROUP for never-delivered entries; ``block_ms`` None returns at once."""
    reply: Any = r.xreadgroup(
        group, consumer, dict.fromkeys(streams, ">"), count=count, block=block_ms
    )
    return _entries(reply)


def read_new_then_get(
    r: redis.Redis,
    streams: list[str],
    group: str,
    consumer: str,
    count: int,
    block_ms: int | None,
    keys: list[str],
) -> tuple[list[tuple[str, Entry]], list[Any]]:
    """``read_new`` and a GET of each of ``keys`` in one round trip: Redis runs a
    connection's commands in order, so the values are read after the entries were taken
    (never older)."""
    pipe = r.pipeline(transaction=False)
    pipe.xreadgroup(group, consumer, dict.fromkeys(streams, ">"), count=count, block=block_ms)
    for key in keys:  # GETs, not MGET: a cluster pipeline refuses MGET
        pipe.get(key)
    reply, *values = pipe.execute()
    return _entries(reply), values


def _entries(reply: Any) -> list[tuple[str, Entry]]:
    out: list[tuple[str, Entry]] = []
    for stream, entries in reply or []:
        name = stream.decode() if isinstance(stream, bytes) else stream
        out.extend((name, (eid, fields)) for eid, fields in entries if fields is not None)
    return out


@dataclass
class Reclaimed:
    entries: list[Entry]  # to process again
    poison: list[tuple[Entry, int]]  # delivered too often, with their delivery count


def reclaim(
    r: redis.Redis,
    stream: str,
    group: str,
    consumer: str,
    *,
    idle_ms: int,
    max_deliveries: int,
    count: int = 100,
    held: Collection[bytes] = frozenset(),
) -> Reclaimed:
    """Claim entries idle past the visibility timeout from crashed consumers.

    ``held``: entry ids the calling consumer holds, read and not yet run (a read-ahead
    buffer): idle to Redis, but not lost, so they are left alone rather than run twice.
    """
    pending: Any = r.xpending_range(  # the held may be idle too: read past them
        stream, group, min="-", max="+", count=count + len(held), idle=idle_ms
    )
    deliveries = {
        p["message_id"]: int(p["times_delivered"]) for p in pending if p["message_id"] not in held
    }
    if not deliveries:
        return Reclaimed([], [])
    claimed: Any = r.xclaim(
        stream, group, consumer, min_idle_time=idle_ms, message_ids=list(deliveries)
    )
    out = Reclaimed([], [])
    gone: list[bytes] = []
    for eid, fields in claimed:
        if not fields:  # deleted or trimmed under us: nothing left to answer
            gone.append(eid)
        elif deliveries.get(eid, 0) >= max_deliveries:
            out.poison.append(((eid, fields), deliveries[eid]))
        else:
            out.entries.append((eid, fields))
    if gone:
        r.xack(stream, group, *gone)
    return out


def _parse_id(raw: Any) -> tuple[int, int]:
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def trim_acknowledged(r: redis.Redis, stream: str) -> int:
    """Drop entries every group has acknowledged, never one still pending or unread."""
    try:
        groups = r.xinfo_groups(stream)
    except redis.ResponseError:
        return 0  # no such stream yet
    if not groups:
        return 0
    floor: tuple[int, int] | None = None
    for g in groups:
        ms, seq = _parse_id(g["last-delivered-id"])
        candidate = (ms, seq + 1)
        if int(g["pending"]) > 0:
            summary = r.xpending(stream, g["name"])
            if summary["min"] is not None:  # None: acknowledged since XINFO looked
                candidate = min(candidate, _parse_id(summary["min"]))
        floor = candidate if floor is None else min(floor, candidate)
    assert floor is not None
    return int(r.xtrim(stream, minid=f"{floor[0]}-{floor[1]}", approximate=False))


def reclaim_period(visibility_timeout_ms: int) -> float:
    return max(0.1, visibility_timeout_ms / 4000)
