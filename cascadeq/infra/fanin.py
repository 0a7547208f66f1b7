"""Blocking reads over streams that sit on several slots of a Redis Cluster.

One XREADGROUP may name many streams only when they share a slot, so a router reading
every ingress shard, or a worker reading its model's streams in every shard, cannot block
on all of them in one command there. ``FanIn`` gives each slot's streams a thread that
blocks on them and hands what it got to the role's loop, which takes whatever arrived
first: no polling, and a shard's entry is read as soon as it is added. A thread reads
again only once the loop took its previous reply, so at most one reply per shard is
held here; entries held when the process dies stay pending and are reclaimed as any
entry of a crashed consumer. On one Redis the roles use one multi-stream read instead.
"""

from __future__ import annotations

import queue
import threading

import redis
from redis.crc import key_slot

from cascadeq.infra import streams

Got = list[tuple[str, streams.Entry]]


class FanIn:
    """read(count, block_ms) over ``groups`` (lists of streams, one slot each)."""

    def __init__(
        self, r: redis.Redis, groups: list[list[str]], group: str, consumer: str, block_ms: int
    ) -> None:
        self.r, self.groups, self.group, self.consumer = r, groups, group, consumer
        self.block_ms = max(1, block_ms)
        self.ready: queue.Queue[tuple[int, Got | BaseException]] = queue.Queue()
        self.turns = [threading.Semaphore(1) for _ in groups]
        self.left: list[tuple[int, Got]] = []  # replies taken in part: (thread, rest)
        self.count = 1
        self.closed = threading.Event()
        self.threads: list[threading.Thread] = []

    def _start(self) -> None:
        for i in range(len(self.groups)):
            t = threading.Thread(target=self._loop, args=(i,), name=f"fanin-{i}", daemon=True)
            t.start()
            self.threads.append(t)

    def _loop(self, i: int) -> None:
        while not self.closed.is_set():
            self.turns[i].acquire()
            if self.closed.is_set():
                return
            try:
                got: Got | BaseException = streams.read_new(
                    self.r, self.groups[i], self.group, self.consumer, self.count, self.block_ms
                )
            except Exception as exc:  # noqa: BLE001 - raised in the loop that reads
                got = exc
                self.closed.wait(0.1)  # the loop backs off; do not spin while it does
            if isinstance(got, list) and not got:
                self.turns[i].release()
                continue
            self.ready.put((i, got))

    def __call__(self, count: int, block_ms: int | None) -> Got:
        """Up to ``count`` entries (more only from one reply's excess, as XREADGROUP over
        several streams does); ``block_ms`` None returns at once."""
        self.count = max(self.count, count)
        if not self.threads:
            self._start()
        out: Got = []
        while self.left and len(out) < count:
            i, rest = self.left.pop(0)
            out += self._take(i, rest, count - len(out))
        timeout = None if out or not block_ms else block_ms / 1000
        while len(out) < count:
            try:
                i, got = self.ready.get(timeout=timeout) if timeout else self.ready.get_nowait()
            except queue.Empty:
                break
            timeout = None
            if isinstance(got, BaseException):
                self.turns[i].release()
                raise got
            out += self._take(i, got, count - len(out))
        return out

    def _take(self, i: int, got: Got, room: int) -> Got:
        if len(got) > room:
            self.left.append((i, got[room:]))
            return got[:room]
        self.turns[i].release()  # that reply is used up: the thread may read again
        return got

    def held(self, stream: str) -> set[bytes]:
        """Ids of ``stream``'s entries read here and not taken yet: a reclaim by this
        consumer must leave them (workers/batcher.py, ``held``)."""
        with self.ready.mutex:
            waiting = [got for _, got in self.ready.queue if isinstance(got, list)]
        replies = [rest for _, rest in list(self.left)] + waiting
        return {entry[0] for got in replies for name, entry in got if name == stream}

    def close(self) -> None:
        """Stop reading ahead; each thread ends after its current block (block_ms)."""
        self.closed.set()
        for turn in self.turns:
            turn.release()
        for t in self.threads:
            t.join(timeout=self.block_ms / 1000 + 5)
        self.threads = []


def slot_groups(names: list[str]) -> list[list[str]]:
    """The streams grouped by slot, in order of first appearance."""
    groups: dict[int, list[str]] = {}
    for name in names:
        groups.setdefault(key_slot(name.encode()), []).append(name)
    return list(groups.values())
