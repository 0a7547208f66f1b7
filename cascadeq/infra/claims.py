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
    One round trip, whatever the batch's size."""
    plan = msgpack.packb(list(parts), use_bin_type=False)
    args = [keys.result(""), plan]
    skipped = CLAIM(r, [parts[0][0] or keys.ingress], args)
    return [int(p) - 1 for p in skipped or ()]
