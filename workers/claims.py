"""Taking a batch's requests before computing them: one claim call per batch.

A request cancelled before its batch formed is skipped here (its result is already
stored) and never computed; the rest are marked claimed in the same call, so a cancel
that arrives while they compute reports them running (protocol/lua/cancel.lua).
"""

from __future__ import annotations

import numpy as np
import redis

from cascadeq.infra import claims
from cascadeq.protocol.keys import Keys
from cascadeq.workers.batcher import Item


def claim(r: redis.Redis, keys: Keys, items: list[Item]) -> int:
    """Claim the kept requests of ``items``; drop from each the ones already answered
    (cancelled) and return how many were dropped."""
    kept = [np.flatnonzero(item.keep) for item in items]
    parts = [
        (item.stream, item.entry_id, [item.headers[j].id for j in index.tolist()])
        for item, index in zip(items, kept, strict=True)
    ]
    skipped = claims.answered(r, keys, parts, mark=True)
    if not skipped:
        return 0
    starts = np.cumsum([0] + [len(k) for k in kept])
    for pos in skipped:
        at = int(np.searchsorted(starts, pos, side="right")) - 1
        items[at].keep[int(kept[at][pos - starts[at]])] = False
    for item in items:
        item.samples = int(item.bundle.rows[item.keep].sum())
    return len(skipped)
