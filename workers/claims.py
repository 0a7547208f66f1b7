"""Before computing a batch: drop the requests cancelled before it was read.

Only while cancels exist (the reader reads the cancel counter in the round trip of its
XREADGROUP, so the answer is never older than the entries): then one call per batch finds
the requests whose result is already stored (cancelled) and they are never computed. A
cancel that arrives after the read finds the entry pending in the worker group and
reports the request running (protocol/lua/cancel.lua), so nothing is written per request.
"""

from __future__ import annotations

import numpy as np
import redis

from cascadeq.infra import claims
from cascadeq.protocol.keys import Keys
from cascadeq.workers.batcher import Item


def claim(r: redis.Redis, keys: Keys, items: list[Item]) -> int:
    """Drop from each of ``items`` the kept requests already answered (cancelled) and
    return how many were dropped."""
    kept = [np.flatnonzero(item.keep) for item in items]
    parts = [
        (item.stream, item.entry_id, [item.headers[j].id for j in index.tolist()])
        for item, index in zip(items, kept, strict=True)
    ]
    skipped = claims.answered(r, keys, parts)
    if not skipped:
        return 0
    starts = np.cumsum([0] + [len(k) for k in kept])
    for pos in skipped:
        at = int(np.searchsorted(starts, pos, side="right")) - 1
        items[at].keep[int(kept[at][pos - starts[at]])] = False
    for item in items:
        item.samples = int(item.bundle.rows[item.keep].sum())
    return len(skipped)
