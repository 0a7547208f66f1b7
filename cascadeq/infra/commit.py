"""A batch's effects and acknowledgements, sent as one call of ``lua/commit.lua``.

Build one per batch (it is batch state, kept in the caller's locals), register each entry
read, add the effects that belong to entries, then ``send``. The script stores, publishes,
adds and acknowledges in Redis; an effect that fails leaves only its own entries pending.

On Redis Cluster the call is split by slot (``cascadeq/infra/slots.py``).

What the client pays per batch is packing the command, per argument: so the values travel
as one concatenated argument, and the batch's bookkeeping writes (``figures``) ride in the
script's plan rather than as a command each in a pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import redis

from cascadeq.infra import slots
from cascadeq.infra.connection import is_cluster
from cascadeq.protocol import deadletter, lua

COMMIT = lua.load("commit")


def _encode(value: Any) -> bytes:
    """An argument as redis-py would send it, so a figure written here reads back the same."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise redis.DataError(f"cannot send {type(value).__name__} as a Redis argument")
    return (value if isinstance(value, str) else repr(value)).encode()


@dataclass
class Committed:
    stored: int  # results written (a result already there is not written again)
    acked: int  # entries acknowledged
    depths: list[int]  # each counter asked for with ``depth``, after the writes
    extra: list[Any]  # replies of the commands ``send`` was given to run alongside


@dataclass
class Commit:
    ttl_s: int
    keys: list[str] = field(default_factory=list)
    args: list[bytes] = field(default_factory=list)  # values, sent concatenated as ARGV[2]
    results: list[int] = field(default_factory=list)
    channels: list[str] = field(default_factory=list)
    adds: list[list[Any]] = field(default_factory=list)
    depths: list[int] = field(default_factory=list)
    figures: list[list[Any]] = field(default_factory=list)  # command, key index, args...
    _key_index: dict[str, int] = field(default_factory=dict)
    _channel_index: dict[str, int] = field(default_factory=dict)
    # stream key, group, counter key (0: none), id, requests
    _read: list[tuple[int, str, int, bytes, int]] = field(default_factory=list)
    _failed: list[int] = field(default_factory=list)  # entries left pending on purpose
    _owners: list[int] = field(default_factory=list)  # entry, in-flight counter key: pairs

    def key(self, name: str) -> int:
        index = self._key_index.get(name)
        if index is None:
            self.keys.append(name)
            index = self._key_index[name] = len(self.keys)
        return index

    def arg(self, value: bytes) -> int:
        self.args.append(value)
        return len(self.args)

    def entry(
        self,
        stream: str,
        group: str,
        entry_id: bytes,
        requests: int = 1,
        counter: str | None = None,
        in_flight: str | None = None,
    ) -> int:
        """Register an entry read from ``stream``; it is acknowledged unless an effect fails,
        and then its ``requests`` leave the stream's request ``counter``. ``in_flight``:
        its tenant's in-flight counter, which each result of it stored decrements."""
        index = self.key(counter) if counter else 0
        self._read.append((self.key(stream), group, index, entry_id, requests))
        if in_flight is not None:
            self._owners += (len(self._read), self.key(in_flight))
        return len(self._read)

    def fail(self, entry: int) -> None:
        """Leave an entry unacknowledged, whatever its effects: it is delivered again."""
        self._failed.append(entry)

    def result(self, key: str, payload: bytes, channel: str | None, entry: int) -> None:
        """Store-if-absent a result, and publish it to ``channel`` if it was stored."""
        self.results += (self.key(key), self.arg(payload), self.channel(channel), entry)

    def channel(self, channel: str | None) -> int:
        """The number a result names its reply channel by (0: none)."""
        if not channel:
            return 0
        ch = self._channel_index.get(channel, 0)
        if not ch:
            self.channels.append(channel)
            ch = self._channel_index[channel] = len(self.channels)
        return ch

    def results_of(self, entry: int, stored: list[tuple[str, bytes, int]]) -> None:
        """Many results of one entry: (key, payload, channel number) each. Result keys
        are distinct, so they are not looked up for reuse (a repeat is harmless: the
        script stores the first and skips the second)."""
        keys, args, results = self.keys, self.args, self.results
        for key, payload, ch in stored:
            keys.append(key)
            args.append(payload)
            results += (len(keys), len(args), ch, entry)

    def results_many(
        self, entry: int, keys: list[str], payloads: list[bytes], channels: list[int]
    ) -> None:
        """``results_of`` as columns, with no Python step per result."""
        n = len(keys)
        if not n:
            return
        quads = np.empty((n, 4), dtype=np.int64)
        quads[:, 0] = np.arange(len(self.keys) + 1, len(self.keys) + n + 1)
        quads[:, 1] = np.arange(len(self.args) + 1, len(self.args) + n + 1)
        quads[:, 2] = channels
        quads[:, 3] = entry
        self.keys += keys
        self.args += payloads
        self.results += quads.ravel().tolist()

    def add(
        self,
        stream: str,
        fields: dict[bytes, bytes],
        entries: Iterable[int],
        maxlen: int = 0,
        counted: tuple[str, int] | None = None,
    ) -> None:
        """XADD one stream entry, an effect of every one of ``entries``; ``counted`` is the
        stream's request counter and the requests the entry holds."""
        counter, requests = (self.key(counted[0]), counted[1]) if counted else (0, 0)
        add: list[Any] = [self.key(stream), maxlen, list(entries), counter, requests]
        for name, value in fields.items():
            add += (name, self.arg(value))
        self.adds.append(add)

    def dead_letter(
        self,
        key: str,
        fields: dict[bytes, bytes],
        *,
        stream: str,
        entry_id: bytes,
        code: str,
        reason: str,
        entry: int,
    ) -> None:
        """Keep a refused entry (or one request of it) on the capped dead-letter stream."""
        record = deadletter.record(
            fields, stream=stream, entry_id=entry_id, code=code, reason=reason
        )
        self.add(key, record, [entry], maxlen=deadletter.MAXLEN)

    def depth(self, counter: str) -> None:
        """Return this request counter's value after the writes."""
        self.depths.append(self.key(counter))

    def command(self, name: str, key: str, *args: Any) -> None:
        """A bookkeeping write run by the script after the effects (HINCRBY, HSET, EXPIRE):
        its failure fails no entry, as when it went in a pipeline beside the call."""
        self.figures.append([name, self.key(key), *[_encode(a) for a in args]])

    @property
    def pipe(self) -> Figures:
        """A pipeline look-alike whose writes become ``command``s of this call."""
        return Figures(self)

    def plan(self) -> bytes:
        """The acks as runs of consecutive entries from one stream: the script numbers
        entries across its ack lists in order, so the runs keep registration order."""
        runs: list[list[Any]] = []
        for key, group, counter, entry_id, requests in self._read:
            if not runs or runs[-1][0] != key or runs[-1][1] != group or runs[-1][2] != counter:
                runs.append([key, group, counter])
            runs[-1] += (entry_id, requests)
        sizes = [len(a) for a in self.args]
        plan = [
            self.ttl_s, self.results, self.channels, self.adds, runs, self.depths, self._failed,
            sizes, self.figures, self._owners,
        ]  # fmt: skip
        packed: bytes = msgpack.packb(plan, use_bin_type=False)
        return packed

    def send(self, r: redis.Redis, also: Callable[[Any], None] | None = None) -> Committed:
        """One round trip: the script, plus whatever per-batch commands ``also`` queues
        (their replies are ``extra``), in one pipeline; without ``also``, the call alone."""
        if not self._read and not self.results and not self.adds and not self.figures:
            return Committed(0, 0, [], [])
        if is_cluster(r):
            return Committed(*slots.send(self, r, also, COMMIT))
        args: list[Any] = [self.plan(), b"".join(self.args)]
        if also is None:
            reply = COMMIT(r, self.keys, args)
            return Committed(int(reply[0]), int(reply[1]), [int(d) for d in reply[2:]], [])
        pipe = r.pipeline(transaction=False)
        COMMIT.queue(pipe, self.keys, args)
        if also is not None:
            also(pipe)
        replies = pipe.execute(raise_on_error=False)
        reply = COMMIT.retry_missing(r, replies[0], self.keys, args)
        if isinstance(reply, Exception):
            raise reply
        return Committed(int(reply[0]), int(reply[1]), [int(d) for d in reply[2:]], replies[1:])


class Figures:
    """The ``hincrby`` / ``hset`` / ``expire`` of a pipeline, queued into a Commit's plan, so
    code that writes its figures to a pipeline writes them into the script call instead."""

    def __init__(self, commit: Commit) -> None:
        self.commit = commit

    def hincrby(self, name: str, key: str, amount: int = 1) -> None:
        self.commit.command("HINCRBY", name, key, amount)

    def expire(self, name: str, seconds: int) -> None:
        self.commit.command("EXPIRE", name, seconds)

    def hset(self, name: str, mapping: dict[str, Any]) -> None:
        pairs: list[Any] = [x for kv in mapping.items() for x in kv]
        self.commit.command("HSET", name, *pairs)
