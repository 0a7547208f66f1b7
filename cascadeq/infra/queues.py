"""Each model stream's backlog as Redis reports it: depth, lag, pending, consumers.

Read in one pipeline by `cascadeq stats` and by the /metrics collector at scrape time,
never per request. Lag is None where the server reports none: Redis 6.2's XINFO GROUPS
has no lag field (7.0 added it, with entries-added), and XLEN minus pending would count
acknowledged entries not yet trimmed as unread, so no figure beats a wrong one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import redis

from cascadeq.protocol.keys import DEFAULT_LANE, WORKER_GROUP, Keys

LANES: tuple[str, ...] = (DEFAULT_LANE,)


@dataclass(frozen=True)
class Lane:
    """One model stream; zeros for a stream that does not exist yet."""

    depth: int = 0  # XLEN: entries not yet trimmed (acknowledged ones included until trimmed)
    lag: int | None = 0  # entries no worker has read yet; None: not reported (Redis < 7)
    pending: int = 0  # entries read by a worker, not yet acknowledged
    consumers: int = 0
    requests: int = 0  # requests not yet acknowledged: an entry may be a bundle of many

    def as_dict(self) -> dict[str, int | None]:
        return {
            "requests": self.requests,
            "depth": self.depth,
            "lag": self.lag,
            "pending": self.pending,
            "consumers": self.consumers,
        }


def read_lanes(
    r: redis.Redis, keys: Keys, models: Iterable[str], lanes: Iterable[str] = LANES
) -> dict[tuple[str, str], Lane]:
    """Every (model, lane) in one pipeline: XINFO GROUPS and XLEN per stream."""
    pairs = [(m, lane) for m in sorted(models) for lane in lanes]
    pipe = r.pipeline(transaction=False)
    for model, lane in pairs:
        stream = keys.model_stream(model, lane)
        pipe.xinfo_groups(stream)
        pipe.xlen(stream)
        pipe.get(keys.backlog(stream))
    replies = iter(pipe.execute(raise_on_error=False))
    out: dict[tuple[str, str], Lane] = {}
    for pair in pairs:
        groups, length, counted = next(replies), next(replies), next(replies)
        state = lane_of(groups, length)
        if counted is not None and not isinstance(counted, Exception):
            state = replace(state, requests=max(0, int(counted)))
        out[pair] = state
    return out


def lane_of(groups: Any, length: Any) -> Lane:
    """Lag from the workers' group; None where the server reports none (Redis 6.x)."""
    if isinstance(groups, Exception) or isinstance(length, Exception):
        return Lane()  # the stream does not exist yet: nothing waits
    depth = int(length)
    mine = [g for g in groups if _text(g.get("name")) == WORKER_GROUP]
    if not mine:
        return Lane(depth=depth, lag=depth)
    pending = int(mine[0].get("pending") or 0)
    lag = mine[0].get("lag")
    return Lane(
        depth=depth,
        lag=int(lag) if lag is not None else None,
        pending=pending,
        consumers=int(mine[0].get("consumers") or 0),
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
