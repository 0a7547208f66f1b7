"""Priority lanes: a model's requests wait in one stream per lane, highest first.

The rule: a worker fills a batch from its highest lane first and takes lower lanes only
for what is left, except on every Nth read (`lane_turn_every`, default 4), which serves
the lanes lowest first. So while the interactive lane alone keeps a worker busy, the
batch lane still gets at least one read in N; an idle worker blocks on all lanes at
once and wakes on whichever gets work. A one-lane model reads exactly as before: one
XREADGROUP, no extra round trip.
"""

from __future__ import annotations

import redis

from cascadeq.infra import streams
from cascadeq.infra.connection import is_cluster
from cascadeq.infra.fanin import FanIn, slot_groups
from cascadeq.protocol.keys import WORKER_GROUP


def lane_reader(
    r: redis.Redis, lanes: list[str], consumer: str, turn_every: int, block_ms: int
) -> LaneReader | FanIn:
    """A reader over the lanes: on a cluster with lanes on several slots (ingress shards),
    a thread per slot blocks on that slot's lanes (cascadeq/infra/fanin.py)."""
    groups = slot_groups(lanes)
    if len(groups) > 1 and is_cluster(r):
        return FanIn(r, groups, WORKER_GROUP, consumer, block_ms)
    return LaneReader(r, lanes, consumer, turn_every)


class LaneReader:
    """A Batcher's reader over several lanes; callable as read(count, block_ms)."""

    def __init__(self, r: redis.Redis, lanes: list[str], consumer: str, turn_every: int) -> None:
        self.r, self.lanes, self.consumer = r, lanes, consumer
        self.turn_every = max(1, turn_every)
        self.reads = 0

    def order(self) -> list[str]:
        """Lane order for the next read: highest first, lowest first on every Nth."""
        self.reads += 1
        return self.lanes[::-1] if self.reads % self.turn_every == 0 else self.lanes

    def __call__(self, count: int, block_ms: int | None) -> list[tuple[str, streams.Entry]]:
        if len(self.lanes) == 1:
            return self._read(self.lanes, count, block_ms)
        got: list[tuple[str, streams.Entry]] = []
        for lane in self.order():
            if len(got) >= count:
                break
            got += self._read([lane], count - len(got), None)
        if got or not block_ms:
            return got
        # Nothing anywhere: wait on every lane at once. Redis applies COUNT per stream, so
        # this may return more than count; the Batcher carries the excess to the next batch.
        return self._read(self.lanes, count, block_ms)

    def _read(
        self, lanes: list[str], count: int, block_ms: int | None
    ) -> list[tuple[str, streams.Entry]]:
        return streams.read_new(self.r, lanes, WORKER_GROUP, self.consumer, count, block_ms)
