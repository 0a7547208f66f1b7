"""Each model stream's backlog as Redis reports it: requests, depth, lag, pending, consumers.

``BacklogRead`` is the one reader: `cascadeq stats` and the /metrics collector (at scrape
time), the load board of routers and workers (at most every 0.25 s) and a held router's
backpressure check all read through it, in one pipeline each, never per request.

Lag is None where the server reports none: Redis 6.2's XINFO GROUPS has no lag field
(7.0 added it, with entries-added), and XLEN minus pending would count acknowledged
entries not yet trimmed as unread, so no figure beats a wrong one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
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


@dataclass(frozen=True)
class BacklogRead:
    """The one way to read streams' backlog: per stream, XINFO GROUPS (the workers'
    pending, lag and consumers), XLEN if asked, and GET of its request counter
    (``Keys.backlog``: an entry may be a bundle of many requests). ``queue`` adds the
    reads to a pipeline that may carry others, ``lanes`` reads their replies in order;
    ``read`` is both, in one round trip."""

    keys: Keys
    streams: tuple[str, ...]
    groups: bool = True
    length: bool = False

    def queue(self, pipe: Any) -> None:
        for stream in self.streams:
            if self.groups:
                pipe.xinfo_groups(stream)
            if self.length:
                pipe.xlen(stream)
            pipe.get(self.keys.backlog(stream))

    def lanes(self, replies: Iterator[Any]) -> list[Lane]:
        """One Lane per stream, from the replies of ``queue``'s commands (errors as values)."""
        out: list[Lane] = []
        for _ in self.streams:
            groups = next(replies) if self.groups else None
            length = next(replies) if self.length else None
            out.append(lane_of(groups, length, next(replies)))
        return out

    def read(self, r: redis.Redis) -> list[Lane]:
        pipe = r.pipeline(transaction=False)
        self.queue(pipe)
        return self.lanes(iter(pipe.execute(raise_on_error=False)))


def read_lanes(
    r: redis.Redis, keys: Keys, models: Iterable[str], lanes: Iterable[str] = LANES
) -> dict[tuple[str, str], Lane]:
    """Every (model, lane) in one pipeline, lengths included (`cascadeq stats`, /metrics)."""
    pairs = [(m, lane) for m in sorted(models) for lane in lanes]
    n = keys.shards  # with ingress shards, a (model, lane) is the sum over its shards
    streams = tuple(keys.model_stream(m, lane, shard=s) for m, lane in pairs for s in range(n))
    got = BacklogRead(keys, streams, length=True).read(r)
    return {pair: _summed(got[i * n : (i + 1) * n]) for i, pair in enumerate(pairs)}


def _summed(lanes: list[Lane]) -> Lane:
    if len(lanes) == 1:
        return lanes[0]
    lags = [lane.lag for lane in lanes]
    return Lane(
        depth=sum(lane.depth for lane in lanes),
        lag=None if None in lags else sum(lag or 0 for lag in lags),
        pending=sum(lane.pending for lane in lanes),
        consumers=max(lane.consumers for lane in lanes),
        requests=sum(lane.requests for lane in lanes),
    )


def lane_of(groups: Any, length: Any, counted: Any = None) -> Lane:
    """One stream from its replies (None: not asked for). Lag from the workers' group;
    None where the server reports none (Redis 6.x) or what would say was not asked for."""
    requests = 0
    if counted is not None and not isinstance(counted, Exception):
        requests = max(0, int(counted))
    if isinstance(groups, Exception) or isinstance(length, Exception):
        return Lane(requests=requests)  # the stream does not exist yet: nothing waits
    depth = 0 if length is None else int(length)
    mine = [g for g in groups or () if _text(g.get("name")) == WORKER_GROUP]
    if not mine:
        lag = depth if groups is not None and length is not None else None
        return Lane(depth=depth, lag=lag, requests=requests)
    pending = int(mine[0].get("pending") or 0)
    lag = mine[0].get("lag")
    return Lane(
        depth=depth,
        lag=int(lag) if lag is not None else None,
        pending=pending,
        consumers=int(mine[0].get("consumers") or 0),
        requests=requests,
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
