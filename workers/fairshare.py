"""Weighted fair share across tenants inside one priority lane.

A lane whose catalog declares tenants is several streams: the base stream (default and
every undeclared tenant) and one sub-stream per declared tenant. Each read of the lane
splits what the batch has room for between them by weight, water-filling: a stream
that recently had less waiting than its share is asked only for about what it had (twice
that, so it can grow back), and the rest of its share goes to the others
(work-conserving). All the lane's reads go out in one pipeline (one round trip), and the
entries are returned in weighted-fair order (the k-th entry of a stream of weight w
ranks at k / w).

A stream is light while it was served less than its fair fraction of the lane lately
(its weight over the weights of the streams not idle: requests read, counted over the
last few batches' worth), and some stream has more waiting than it was asked for. A
light stream's entries are read again at batch formation (``read_light``, up to its
fraction of a batch) and go into a batch ahead of everything else held (the Batcher
orders by ``LaneReader.first``: ahead of what the reader fetched while the last batch
ran and of what that batch left over), so a light tenant waits for the batch that is
running, not behind a busy tenant's read-ahead. Going first cannot take more from the
busy streams than about what fair share gives the light one: past its fraction it
is not light.

Shares count requests: an entry may be a bundle, and the number of its requests is read
from the msgpack array header of its headers field, with no decoding.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import redis

from cascadeq.infra import streams
from cascadeq.protocol.bundle import HEADERS
from cascadeq.protocol.keys import WORKER_GROUP
from cascadeq.workers.gate import CancelGate

Read = list[tuple[str, streams.Entry]]


def allocate(budget: float, weights: list[float], demands: list[float]) -> list[float]:
    """Weighted max-min fair split of ``budget``: no stream gets more than its demand,
    and what one does not need goes to the others by weight."""
    alloc = [0.0] * len(weights)
    active = [i for i, d in enumerate(demands) if d > 0]
    left = float(budget)
    while left > 1e-9 and active:
        total = sum(weights[i] for i in active)
        capped = [i for i in active if alloc[i] + left * weights[i] / total >= demands[i]]
        if not capped:
            for i in active:
                alloc[i] += left * weights[i] / total
            break
        for i in capped:
            left -= demands[i] - alloc[i]
            alloc[i] = demands[i]
        active = [i for i in active if i not in capped]
    return alloc


def requests_in(fields: dict[bytes, bytes]) -> int:
    """Requests in an entry: 1, or the length of a bundle's header array (msgpack)."""
    raw = fields.get(HEADERS)
    if not raw:
        return 1
    first = raw[0]
    if 0x90 <= first <= 0x9F:
        return max(1, first & 0x0F)
    if first == 0xDC and len(raw) >= 3:
        return max(1, int.from_bytes(raw[1:3], "big"))
    if first == 0xDD and len(raw) >= 5:
        return max(1, int.from_bytes(raw[1:5], "big"))
    return 1


#: what a stream was served is forgotten per request read from the lane, over about this
#: many batches' worth (the largest read so far stands for a batch)
MEMORY_BATCHES = 8
#: a stream served less than this fraction of the lane's recent requests is idle: it does
#: not count against the others' fair fractions
IDLE = 0.02


class FairLane:
    """One lane's streams and weights, what each had waiting at its last read, and what
    each was served lately."""

    def __init__(
        self,
        r: redis.Redis,
        shares: list[tuple[str, float]],
        consumer: str,
        gate: CancelGate | None = None,
    ) -> None:
        self.r, self.consumer, self.gate = r, consumer, gate
        self.streams = [s for s, _ in shares]
        self.weights = [w for _, w in shares]
        self.per_entry = [1.0] * len(shares)  # requests per entry, a moving average
        self.demand = [math.inf] * len(shares)  # requests a stream had, inf: more than asked
        self.served = [0.0] * len(shares)  # requests read, decayed per request read
        self.batch = 1.0  # requests in the largest read asked for so far: a batch's worth
        self.lock = threading.Lock()  # the reader thread and batch formation both read

    def _execute(self, pipe: Any) -> list[Any]:
        """The reads' replies; the cancel counter rides last in the same round trip."""
        if self.gate is None:
            return list(pipe.execute())
        for key in self.gate.keys:
            pipe.get(key)
        got = list(pipe.execute())
        n = len(self.gate.keys)
        replies, counters = got[:-n], got[-n:]
        self.gate.saw(counters)
        return replies

    def asks(self, count: int) -> list[int]:
        """Entries to ask each stream for, out of room for ``count`` entries' requests."""
        per = sum(self.per_entry) / len(self.per_entry)
        alloc = allocate(count * per, self.weights, self.demand)
        return [max(1, math.ceil(a / self.per_entry[i])) for i, a in enumerate(alloc)]

    def fair(self) -> list[float]:
        """Each stream's fair fraction of the lane: its weight over its own and the
        weights of the streams not idle lately (what fair share gives it if it is busy)."""
        with self.lock:
            served = list(self.served)
        total = sum(served) or 1.0
        on = [s / total > IDLE or d == math.inf for s, d in zip(served, self.demand, strict=True)]
        busy = sum(w for w, o in zip(self.weights, on, strict=True) if o)
        return [w / (w + busy - (w if o else 0.0)) for w, o in zip(self.weights, on, strict=True)]

    def light(self) -> list[int]:
        """The streams served less than their fair fraction lately (a light tenant):
        their entries go first into batches, and are read at batch formation. None while
        no stream has more waiting than it was last asked for (the reader keeps up)."""
        if math.inf not in self.demand:
            return []
        fair = self.fair()
        with self.lock:
            served = list(self.served)
        total = sum(served) or 1.0
        light = [i for i, f in enumerate(fair) if served[i] / total < f]
        return light if len(light) < len(self.streams) else []

    def read(self, count: int) -> Read:
        """One pipelined XREADGROUP per stream (none blocks), merged in fair order."""
        self.batch = max(self.batch, count * sum(self.per_entry) / len(self.per_entry))
        asks = self.asks(count)
        pipe = self.r.pipeline(transaction=False)
        for stream, ask in zip(self.streams, asks, strict=True):
            pipe.xreadgroup(WORKER_GROUP, self.consumer, {stream: ">"}, count=ask)
        replies = self._execute(pipe)
        ranked: list[tuple[float, int, str, streams.Entry]] = []
        taken = [0] * len(self.streams)
        for i, reply in enumerate(replies):
            got = _entries(reply)
            taken[i] = self._learn(i, asks[i], got)
            step, at = 1.0 / self.weights[i], 0.0
            for entry in got:
                at += step * requests_in(entry[1])
                ranked.append((at, i, self.streams[i], entry))
        self._served(taken)
        ranked.sort(key=lambda t: (t[0], t[1]))
        return [(stream, entry) for _, _, stream, entry in ranked]

    def read_light(self) -> Read:
        """What the light streams hold now, up to their fair fraction of a batch, without
        blocking: the worker takes it at batch formation, ahead of what the reader
        fetched while the last batch ran, so a light tenant's request does not wait a
        batch more behind a busy tenant's read-ahead. Nothing when no stream is light."""
        light = self.light()
        if not light:
            return []
        fair = self.fair()
        pipe = self.r.pipeline(transaction=False)
        asks = []
        for i in light:
            ask = max(1, math.ceil(self.batch * fair[i] / max(1.0, self.per_entry[i])))
            pipe.xreadgroup(WORKER_GROUP, self.consumer, {self.streams[i]: ">"}, count=ask)
            asks.append(ask)
        out: Read = []
        taken = [0] * len(self.streams)
        for i, ask, reply in zip(light, asks, self._execute(pipe), strict=True):
            got = _entries(reply)
            if got:  # an empty light read says nothing new of what waits
                taken[i] = self._learn(i, ask, got)
            out += [(self.streams[i], entry) for entry in got]
        self._served(taken)
        return out

    def _learn(self, i: int, asked: int, got: list[streams.Entry]) -> int:
        """A stream that filled its ask may have more (inf); one that did not had what
        it returned, and is asked for about twice that next time. Returns its requests."""
        if not got:
            self.demand[i] = 1.0
            return 0
        requests = sum(requests_in(fields) for _, fields in got)
        self.per_entry[i] = 0.8 * self.per_entry[i] + 0.2 * requests / len(got)
        self.demand[i] = math.inf if len(got) >= asked else 2.0 * requests
        return requests

    def _served(self, taken: list[int]) -> None:
        """Count a read's requests per stream; what was served before fades per request."""
        total = sum(taken)
        if not total:
            return
        keep = (1.0 - 1.0 / (MEMORY_BATCHES * self.batch)) ** total
        with self.lock:
            self.served = [s * keep + t for s, t in zip(self.served, taken, strict=True)]


def _entries(reply: Any) -> list[streams.Entry]:
    out: list[streams.Entry] = []
    for _, entries in reply or []:
        out.extend((eid, fields) for eid, fields in entries if fields is not None)
    return out
