"""The claim script's call (protocol/lua/claim.lua): which of a batch's requests already
hold a final result (a cancel). Made only while cancels exist."""

from __future__ import annotations

from collections.abc import Sequence

import msgpack
import redis

from cascadeq.protocol import lua
from cascadeq.protocol.keys import Keys

CLAIM = lua.load("claim")

#: One entry's part of a claim: its stream, its entry id, the request ids taken from it.
Part = tuple[str, bytes, list[str]]


def answered(r: redis.Redis, keys: Keys, parts: Sequence[Part]) -> list[int]:
    """0-based positions, across the parts' ids in order, of requests already answered.
    One call per ingress shard the parts come from (one, unless ``ingress_shards`` > 1):
    a shard's result keys share its slot, and the script builds them from its prefix."""
    if keys.shards == 1:
        return _answered(r, keys, parts, 0)
    by_shard: dict[int, list[tuple[list[int], Part]]] = {}  # each part's positions, in all
    at = 0
    for part in parts:
        positions = list(range(at, at + len(part[2])))
        by_shard.setdefault(keys.shard_of_stream(part[0]), []).append((positions, part))
        at += len(part[2])
    out: list[int] = []
    for shard, held in by_shard.items():
        flat = [p for positions, _ in held for p in positions]
        out += [flat[p] for p in _answered(r, keys, [part for _, part in held], shard)]
    return sorted(out)


def _answered(r: redis.Redis, keys: Keys, parts: Sequence[Part], shard: int) -> list[int]:
    plan = msgpack.packb(list(parts), use_bin_type=False)
    args = [keys.result_prefix(shard), plan]
    skipped = CLAIM(r, [parts[0][0] or keys.ingress_of(shard)], args)
    return [int(p) - 1 for p in skipped or ()]
