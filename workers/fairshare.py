"""Weighted fair share across tenants inside one priority lane.

A lane whose catalog declares tenants is several streams: the base stream (default and
every undeclared tenant) and one sub-stream per declared tenant. Each read of the lane
splits what the batch has room for between them by weight, water-filling: a stream
that recently had less waiting than its share is asked only for about what it had (twice
that, so it can grow back), and the rest of its share goes to the others
(work-conserving). All the lane's reads go out in one pipeline (one round trip), and the
entries are returned in weighted-fair order (the k-th entry of a stream of weight w
ranks at k / w), so a batch cut short carries the right tenants' work over.

Shares count requests: an entry may be a bundle, and the number of its requests is read
from the msgpack array header of its headers field, with no decoding.
"""

from __future__ import annotations

import math
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


class FairLane:
    """One lane's streams and weights, and what each had waiting at its last read."""

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

    def read(self, count: int) -> Read:
        """One pipelined XREADGROUP per stream (none blocks), merged in fair order."""
        asks = self.asks(count)
        pipe = self.r.pipeline(transaction=False)
        for stream, ask in zip(self.streams, asks, strict=True):
            pipe.xreadgroup(WORKER_GROUP, self.consumer, {stream: ">"}, count=ask)
        replies = self._execute(pipe)
        ranked: list[tuple[float, int, str, streams.Entry]] = []
        for i, reply in enumerate(replies):
            got = _entries(reply)
            self._learn(i, asks[i], got)
            step, at = 1.0 / self.weights[i], 0.0
            for entry in got:
                at += step * requests_in(entry[1])
                ranked.append((at, i, self.streams[i], entry))
        ranked.sort(key=lambda t: (t[0], t[1]))
        return [(stream, entry) for _, _, stream, entry in ranked]

    def read_light(self) -> Read:
        """What the streams that last had less than their share (a light tenant) hold
        now, without blocking: the worker takes it at batch formation, ahead of what the
        reader fetched while the last batch ran, so a light tenant's request does not wait
        a batch more behind a busy tenant's read-ahead. Nothing when every stream is busy."""
        demand = list(self.demand)  # the reader thread updates it meanwhile: one snapshot
        light = [i for i, d in enumerate(demand) if d != math.inf]
        if not light or len(light) == len(self.streams):
            return []
        pipe = self.r.pipeline(transaction=False)
        for i in light:
            ask = max(1, math.ceil(demand[i] / max(1.0, self.per_entry[i])))
            pipe.xreadgroup(WORKER_GROUP, self.consumer, {self.streams[i]: ">"}, count=ask)
        out: Read = []
        for i, reply in zip(light, self._execute(pipe), strict=True):
            out += [(self.streams[i], entry) for entry in _entries(reply)]
        return out

    def _learn(self, i: int, asked: int, got: list[streams.Entry]) -> None:
        """A stream that filled its ask may have more (inf); one that did not had what
        it returned, and is asked for about twice that next time."""
        if not got:
            self.demand[i] = 1.0
            return
        requests = sum(requests_in(fields) for _, fields in got)
        self.per_entry[i] = 0.8 * self.per_entry[i] + 0.2 * requests / len(got)
        self.demand[i] = math.inf if len(got) >= asked else 2.0 * requests


def _entries(reply: Any) -> list[streams.Entry]:
    out: list[streams.Entry] = []
    for _, entries in reply or []:
        out.extend((eid, fields) for eid, fields in entries if fields is not None)
    return out
