"""Priority lanes: a model's requests wait in one stream per lane, highest first.

The rule: a worker fills a batch from its highest lane first and takes lower lanes only
for what is left, except on every Nth read (`lane_turn_every`, default 4), which serves
the lanes lowest first. So while the interactive lane alone keeps a worker busy, the
batch lane still gets at least one read in N; an idle worker blocks on all lanes at
once and wakes on whichever gets work. A one-lane model reads exactly as before: one
XREADGROUP, no extra round trip.

A lane the catalog's tenants split into sub-streams (config/tenants.py) is read with
weighted fair share across them (workers/fairshare.py); a lane without is read as above.
There, a batch takes light tenants' entries first (``first``: the Batcher orders what
it holds by it, before it cuts the batch), and nothing changes where no lane has them.

Every read also GETs the cancel counter in its round trip (after the XREADGROUP, so
never older than the entries): once it has been seen, the worker looks for cancelled
requests in each batch for as long as a request can wait (workers/claims.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

import redis

from cascadeq.infra import streams
from cascadeq.infra.connection import is_cluster
from cascadeq.infra.fanin import FanIn, slot_groups
from cascadeq.protocol.keys import WORKER_GROUP
from cascadeq.workers.fairshare import FairLane
from cascadeq.workers.gate import CancelGate


class Read(Protocol):
    """What the Batcher holds of an entry it read (an Item or a Bad): where it came from."""

    @property
    def stream(self) -> str: ...


R = TypeVar("R", bound=Read)


def lane_reader(
    r: redis.Redis,
    lanes: list[str],
    consumer: str,
    turn_every: int,
    block_ms: int,
    shares: dict[str, list[tuple[str, float]]] | None = None,
    gate: CancelGate | None = None,
) -> LaneReader | FanIn:
    """A reader over the lanes: on a cluster with lanes on several slots (ingress shards),
    a thread per slot blocks on that slot's lanes (cascadeq/infra/fanin.py); there, for
    now, tenants' sub-streams are read in turn rather than by weight, and every batch is
    looked at for cancelled requests (no gate)."""
    groups = slot_groups(lanes)
    if len(groups) > 1 and is_cluster(r):
        every = [s for lane in lanes for s, _ in (shares or {}).get(lane, [(lane, 1.0)])]
        groups = slot_groups(every)
        return FanIn(r, groups, WORKER_GROUP, consumer, block_ms)
    return LaneReader(r, lanes, consumer, turn_every, shares, gate)


class LaneReader:
    """A Batcher's reader over several lanes; callable as read(count, block_ms)."""

    def __init__(
        self,
        r: redis.Redis,
        lanes: list[str],
        consumer: str,
        turn_every: int,
        shares: dict[str, list[tuple[str, float]]] | None = None,
        gate: CancelGate | None = None,
    ) -> None:
        """``shares``: lane stream -> (stream, weight) of each of its tenant streams, for
        lanes that have tenant sub-streams (the lane's own stream among them)."""
        self.r, self.lanes, self.consumer = r, lanes, consumer
        self.turn_every = max(1, turn_every)
        self.reads = 0
        self.gate = gate
        self.fair = {lane: FairLane(r, s, consumer, gate) for lane, s in (shares or {}).items()}
        #: every stream a blocking read waits on
        self.every = [s for lane in lanes for s in self._streams_of(lane)]
        #: the order a batch takes what was read in (None: as read, no lane has tenants)
        self.first = self._light_first if self.fair else None

    def _streams_of(self, lane: str) -> list[str]:
        fair = self.fair.get(lane)
        return fair.streams if fair is not None else [lane]

    def order(self) -> list[str]:
        """Lane order for the next read: highest first, lowest first on every Nth."""
        self.reads += 1
        return self.lanes[::-1] if self.reads % self.turn_every == 0 else self.lanes

    def __call__(self, count: int, block_ms: int | None) -> list[tuple[str, streams.Entry]]:
        if len(self.lanes) == 1 and not self.fair:
            return self._read(self.lanes, count, block_ms)
        got: list[tuple[str, streams.Entry]] = []
        for lane in self.order():
            if len(got) >= count:
                break
            fair = self.fair.get(lane)
            if fair is None:
                got += self._read([lane], count - len(got), None)
            else:
                got += fair.read(count - len(got))
        if got or not block_ms:
            return got
        # Nothing anywhere: wait on every lane at once. Redis applies COUNT per stream, so
        # this may return more than count; the Batcher carries the excess to the next batch.
        return self._read(self.every, count, block_ms)

    def light(self) -> list[tuple[str, streams.Entry]]:
        """Light tenants' waiting entries, lanes in order (see FairLane.read_light); only
        lanes with tenant sub-streams have any, so a plain lane costs nothing here."""
        got: list[tuple[str, streams.Entry]] = []
        for lane in self.lanes:
            fair = self.fair.get(lane)
            if fair is not None:
                got += fair.read_light()
        return got

    def _light_first(self, held: Sequence[R]) -> list[R]:
        """``held`` with each tenant lane's light entries ahead of its other entries, in
        the places that lane's entries held (fair share is inside a lane: no entry moves
        past another lane's), each part in its own order. What a light tenant has waiting
        is less than its share of a batch, so it goes ahead of the busy tenants'
        read-ahead and of what the last batch left over."""
        out = list(held)
        for fair in self.fair.values():
            light = {fair.streams[i] for i in fair.light()}
            if not light:
                continue
            mine = set(fair.streams)
            places = [k for k, item in enumerate(held) if item.stream in mine]
            ahead = [held[k] for k in places if held[k].stream in light]
            if not ahead or len(ahead) == len(places):
                continue
            rest = [held[k] for k in places if held[k].stream not in light]
            for k, item in zip(places, ahead + rest, strict=True):
                out[k] = item
        return out

    @property
    def cancels_exist(self) -> bool:
        return self.gate is not None and self.gate.open

    def _read(
        self, lanes: list[str], count: int, block_ms: int | None
    ) -> list[tuple[str, streams.Entry]]:
        if self.gate is None:
            return streams.read_new(self.r, lanes, WORKER_GROUP, self.consumer, count, block_ms)
        got, counters = streams.read_new_then_get(
            self.r, lanes, WORKER_GROUP, self.consumer, count, block_ms, self.gate.keys
        )
        self.gate.saw(counters)  # before the entries reach a batch
        return got
