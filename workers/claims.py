"""Taking a batch's requests before computing them: one claim call per batch.

A request cancelled before its batch formed is skipped here (its result is already
stored) and never computed; the rest are marked claimed in the same call, so a cancel
that arrives while they compute reports them running (protocol/lua/cancel.lua).
"""

from __future__ import annotations

import msgpack
import numpy as np
import redis

from cascadeq.protocol import lua
from cascadeq.protocol.keys import Keys
from cascadeq.workers.batcher import Item

CLAIM = lua.load("claim")


def claim(r: redis.Redis, keys: Keys, items: list[Item]) -> int:
    """Claim the kept requests of ``items``; drop from each the ones already answered
    (cancelled) and return how many were dropped. One round trip, whatever the size."""
    plan = []
    kept: list[np.ndarray] = []
    for item in items:
        index = np.flatnonzero(item.keep)
        kept.append(index)
        headers = item.headers
        plan.append((item.stream, item.entry_id, [headers[j].id for j in index.tolist()]))
    args = [keys.result(""), msgpack.packb(plan, use_bin_type=False)]
    skipped = CLAIM(r, [items[0].stream], args)
    if not skipped:
        return 0
    return _drop(items, kept, [int(p) - 1 for p in skipped])


def _drop(items: list[Item], kept: list[np.ndarray], positions: list[int]) -> int:
    """Unmark the skipped requests (0-based positions across the items' kept requests)."""
    starts = np.cumsum([0] + [len(k) for k in kept])
    for pos in positions:
        at = int(np.searchsorted(starts, pos, side="right")) - 1
        j = int(kept[at][pos - starts[at]])
        items[at].keep[j] = False
    for item in items:
        item.samples = int(item.bundle.rows[item.keep].sum())
    return len(positions)
