"""A batch's commit on Redis Cluster: the one call of ``lua/commit.lua`` split by slot.

A script's keys must share a slot. The key layout (``protocol/keys.py``) puts everything a
request touches (its shard's streams, counters, result key, dead letters) in its shard's
slot, so a batch read from one shard commits in one call there, plus one figures-only call
per slot of the bookkeeping keys (``obs:``, ``counts:``), all in one pipeline: one round
trip, as on one Redis. Only an effect on a slot other than its entry's ack (a batch whose
entries came from several shards, escalated or dead-lettered across them) costs a first
round trip: effects-only calls that report what failed, then the acking calls, which
leave those entries pending. At-least-once delivery is what allows the split.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack
from redis.crc import key_slot

from cascadeq.protocol.lua import Script

#: Every effect in an early call, even on its entry's own slot: the split design, kept
#: as a switch so scripts/cluster_cost.py can measure it against co-location.
FORCE_SPLIT = False

#: a ``cascadeq.infra.commit.Commit`` (named loosely: commit.py imports this module)
Commit = Any


class _Call:
    """The part of a batch's plan that runs on one slot, its keys and values renumbered."""

    def __init__(self, ttl_s: int) -> None:
        self.ttl_s = ttl_s
        self.keys: list[str] = []
        self._key: dict[str, int] = {}
        self.args: list[bytes] = []
        self.results: list[int] = []
        self.channels: list[str] = []
        self._channel: dict[str, int] = {}
        self.adds: list[list[Any]] = []
        self.runs: list[list[Any]] = []
        self.starts: list[int] = []
        self.depths: list[int] = []
        self.depth_at: list[int] = []  # positions in the batch's depth list
        self.figures: list[list[Any]] = []

    def key(self, name: str) -> int:
        if name not in self._key:
            self.keys.append(name)
            self._key[name] = len(self.keys)
        return self._key[name]

    def arg(self, value: bytes) -> int:
        self.args.append(value)
        return len(self.args)

    def channel(self, name: str | None) -> int:
        if not name:
            return 0
        if name not in self._channel:
            self.channels.append(name)
            self._channel[name] = len(self.channels)
        return self._channel[name]

    def payload(self, failed: list[int], report: bool) -> list[Any]:
        plan = [
            self.ttl_s, self.results, self.channels, self.adds, self.runs, self.depths, failed,
            [len(a) for a in self.args], self.figures, [], self.starts, int(report),
        ]  # fmt: skip
        return [msgpack.packb(plan, use_bin_type=False), b"".join(self.args)]


class SlotPlan:
    """A Commit regrouped by slot: the acking calls, and the effects that must land first."""

    def __init__(self, commit: Commit) -> None:
        self.commit = commit
        self.slot = [key_slot(k.encode()) for k in commit.keys]
        self.calls: dict[int, _Call] = {}  # slot -> its call (acks, local effects, figures)
        self.early: dict[int, _Call] = {}  # slot -> effects-only call, sent first
        self.entry_slot: list[int] = []  # entry number - 1 -> the slot it is acked on
        self._runs()
        self._results()
        self._adds()
        self._rest()

    def _call(self, table: dict[int, _Call], slot: int) -> _Call:
        if slot not in table:
            table[slot] = _Call(self.commit.ttl_s)
        return table[slot]

    def _runs(self) -> None:
        """Each slot's ack lists: runs of consecutive entries of one stream, numbered as in
        the whole batch (``starts``), so every call reads the batch's entry numbers."""
        c = self.commit
        tail: dict[int, tuple[int, str, int, int]] = {}  # slot -> last run's stream and entry
        for n, (key, group, counter, entry_id, requests) in enumerate(c._read, start=1):
            slot = self.slot[key - 1]
            self.entry_slot.append(slot)
            call = self._call(self.calls, slot)
            if tail.get(slot) != (key, group, counter, n - 1):
                cnt = call.key(c.keys[counter - 1]) if counter else 0
                call.runs.append([call.key(c.keys[key - 1]), group, cnt])
                call.starts.append(n)
            tail[slot] = (key, group, counter, n)
            call.runs[-1] += (entry_id, requests)

    def _home(self, slot: int, entries: list[int]) -> _Call:
        """The acking call if every entry is acked on this slot, else an early call."""
        if not FORCE_SPLIT and entries and all(self.entry_slot[e - 1] == slot for e in entries):
            return self._call(self.calls, slot)
        return self._call(self.early, slot)

    def _results(self) -> None:
        c = self.commit
        quads = c.results
        for i in range(0, len(quads), 4):
            key, value, ch, entry = quads[i : i + 4]
            call = self._home(self.slot[key - 1], [entry])
            name = c.channels[ch - 1] if ch else None
            call.results += (call.key(c.keys[key - 1]), call.arg(c.args[value - 1]))
            call.results += (call.channel(name), entry)

    def _adds(self) -> None:
        c = self.commit
        for key, maxlen, entries, counter, requests, *fields in c.adds:
            call = self._home(self.slot[key - 1], list(entries))
            cnt = call.key(c.keys[counter - 1]) if counter else 0
            add: list[Any] = [call.key(c.keys[key - 1]), maxlen, entries, cnt, requests]
            for j in range(0, len(fields), 2):
                add += (fields[j], call.arg(c.args[fields[j + 1] - 1]))
            call.adds.append(add)

    def _rest(self) -> None:
        c = self.commit
        for figure in c.figures:
            call = self._call(self.calls, self.slot[figure[1] - 1])
            call.figures.append([figure[0], call.key(c.keys[figure[1] - 1]), *figure[2:]])
        for at, index in enumerate(c.depths):
            call = self._call(self.calls, self.slot[index - 1])
            call.depths.append(call.key(c.keys[index - 1]))
            call.depth_at.append(at)


def send(
    commit: Commit, r: Any, also: Callable[[Any], None] | None, script: Script
) -> tuple[int, int, list[int], list[Any]]:
    """The batch's commit on a cluster: early effects (if any), then the acking calls and
    the figures in one pipeline with whatever ``also`` queues. Returns (stored, acked,
    depths, ``also``'s replies)."""
    plan = SlotPlan(commit)
    failed = list(commit._failed)
    stored = 0
    if plan.early:
        for reply in _run(r, script, list(plan.early.values()), [], True, None)[0]:
            stored += int(reply[0])
            failed += [int(e) for e in reply[2:]]
    calls = list(plan.calls.values())
    replies, extra = _run(r, script, calls, failed, False, also)
    acked, depths = 0, [0] * len(commit.depths)
    for call, reply in zip(calls, replies, strict=True):
        stored, acked = stored + int(reply[0]), acked + int(reply[1])
        for at, value in zip(call.depth_at, reply[2:], strict=False):
            depths[at] = int(value)
    return stored, acked, depths, extra


def _run(
    r: Any,
    script: Script,
    calls: list[_Call],
    failed: list[int],
    report: bool,
    also: Callable[[Any], None] | None,
) -> tuple[list[Any], list[Any]]:
    """The calls (and ``also``'s commands) in one cluster pipeline; a NOSCRIPT reply is sent
    again with the script's text."""
    pipe = r.pipeline(transaction=False)
    args = [call.payload(failed, report) for call in calls]
    for call, a in zip(calls, args, strict=True):
        script.queue(pipe, call.keys, a)
    if also is not None:
        also(pipe)
    replies = pipe.execute(raise_on_error=False)
    out = []
    for call, a, reply in zip(calls, args, replies, strict=False):
        got = script.retry_missing(r, reply, call.keys, a)
        if isinstance(got, Exception):
            raise got
        out.append(got)
    return out, replies[len(calls) :]
