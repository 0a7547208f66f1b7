"""The serving batcher: a reader thread fetches and decodes ahead; the batch window runs
on the local buffer.

A reader thread keeps up to max_batch samples read and decoded in a buffer (XREADGROUP
plus msgpack decoding and input checks), while the worker thread computes; ONNX Runtime
and socket reads release the GIL, so the two overlap. The window (block for the first
entry, then fill until the strategy launches) waits on a local condition, not on a
Redis BLOCK timeout: Redis checks those timeouts only every 1000/hz ms (100 ms at the
default hz 10; measured: a BLOCK 2 returned after 101 ms median), which made a 2 ms
window 40-100 ms long under light traffic. Redis wakes a blocked reader the moment an
entry arrives, so the reader thread itself stays precise.

Continuous mode is this batcher with a strategy that never waits: when the session is
free the worker takes whatever has arrived.

Overlap fraction = samples the reader fetched while the worker held a batch (from
collect returning it to the next collect) / all samples the reader fetched: near 1 the
reads hide behind compute, near 0 the worker was idle waiting for input anyway.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from cascadeq.config.catalog import ModelSpec
from cascadeq.infra.log import get_logger
from cascadeq.infra.streams import Entry
from cascadeq.protocol.messages import now_ms
from cascadeq.workers.batcher import Bad, Batcher, Item, Reader, decode

log = get_logger("cascadeq.worker")


@dataclass
class PrefetchBatcher(Batcher):
    """A Batcher whose reads happen in a background thread; the worker thread only takes."""

    block_ms: int = 1000  # the reader's blocking read: bounds how long close() takes
    buffer: list[Item | Bad] = field(default_factory=list)
    buffered: int = 0  # samples in buffer
    fetched: int = 0
    overlapped: int = 0
    busy: bool = False  # the worker holds a batch
    first_at: float = 0.0  # clock() when the oldest buffered entry arrived
    read_cpu_s: float = 0.0  # the reader thread's CPU so far (the worker's CpuMeter reads it)
    #: light tenants' waiting entries, read at batch formation (None: no tenant lanes)
    light: Callable[[], list[tuple[str, Entry]]] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.cond = threading.Condition()
        self.stopping = threading.Event()
        self.error: redis.RedisError | None = None
        self.thread: threading.Thread | None = None

    @property
    def overlap(self) -> float:
        return self.overlapped / self.fetched if self.fetched else 0.0

    def collect(self, block_ms: int | None) -> list[Item | Bad]:
        """Wait up to block_ms for a first entry, then fill as the strategy says."""
        if block_ms is None and self.thread is None:
            return super().collect(None)  # a caller draining without blocking reads itself
        self._start()
        ahead = self._light() if self.light is not None and self.buffer else []
        with self.cond:
            self.busy = False
            if ahead:  # ahead of the read-ahead, as if read first (the fair order)
                self.buffer[:0] = ahead
                self.buffered += sum(i.samples for i in ahead)
            if self.error is not None:
                error, self.error = self.error, None
                raise error
            if not self.carry and block_ms:
                self.cond.wait_for(lambda: bool(self.buffer), timeout=block_ms / 1000.0)
            if self.carry or self.buffer:
                self._fill()
            items, self.buffer, self.buffered = self.carry + self.buffer, [], 0
            self.carry = []
            batch = self._fit(items)  # under the lock: the reader counts the carry
            self.busy = bool(batch)
            self.cond.notify_all()
        return batch

    def _light(self) -> list[Item | Bad]:
        """Light tenants' entries, decoded; a failure leaves them to the reader thread."""
        assert self.light is not None
        try:
            got = self.light()
        except Exception as exc:  # noqa: BLE001 - the reader thread still reads them
            log.warning("light_read_failed", model=self.spec.name, error=repr(exc))
            return []
        read_at = now_ms()
        return [decode(stream, entry, self.spec, read_at, self.max_bytes) for stream, entry in got]

    def _fill(self) -> None:
        """The batch window on the buffer (the condition is held); returns at launch."""
        max_batch = self.spec.batching.max_batch
        opened = self.first_at if self.buffer and not self.carry else self.clock()
        while True:
            samples = self.buffered + sum(i.samples for i in self.carry if isinstance(i, Item))
            waited_ms = (self.clock() - opened) * 1000.0
            if samples >= max_batch or self.rule.launch_now(samples, waited_ms):
                return
            budget_ms = self.rule.wait_budget_ms(samples, waited_ms)
            if budget_ms <= 0:
                return
            self._wait_for_more(self.fetched, budget_ms)

    def held(self, stream: str) -> set[bytes]:
        with self.cond:
            return super().held(stream) | {i.entry_id for i in self.buffer if i.stream == stream}

    def _held(self) -> int:
        """Samples read but not yet run: the buffer plus what the last batch left over.

        Reading ahead stops at one batch's worth, so nothing waits here long: another
        replica's reclaim would deliver it again (this worker's own leaves it: ``held``).
        """
        return self.buffered + sum(i.samples for i in self.carry if isinstance(i, Item))

    def _wait_for_more(self, seen: int, budget_ms: float) -> None:
        self.cond.wait_for(lambda: self.fetched > seen, timeout=budget_ms / 1000.0)

    def close(self) -> None:
        """Stop the reader; what it read but nobody took is carried, to run before leaving."""
        self.stopping.set()
        with self.cond:
            self.cond.notify_all()
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        self.carry += self.buffer
        self.buffer, self.buffered = [], 0
        log.info("prefetch_overlap", model=self.spec.name, overlap=round(self.overlap, 3))

    def _start(self) -> None:
        if self.thread is None and not self.stopping.is_set():
            self.thread = threading.Thread(target=self._loop, name="cq-prefetch", daemon=True)
            self.thread.start()

    def _loop(self) -> None:
        max_batch, backoff = self.spec.batching.max_batch, 0.1
        while not self.stopping.is_set():
            with self.cond:
                self.cond.wait_for(
                    lambda: self._held() < max_batch or self.stopping.is_set(), timeout=1.0
                )
                room = max_batch - self._held()
            if self.stopping.is_set() or room < 1:
                continue
            try:
                items, samples = self.fetch(room, self.block_ms)
                self.read_cpu_s = time.thread_time()
            except redis.RedisError as exc:  # the worker thread raises it; serve() backs off
                with self.cond:
                    self.error = exc
                    self.cond.notify_all()
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            if items:
                self._add(items, samples)

    def _add(self, items: list[Item | Bad], samples: int) -> None:
        with self.cond:
            if not self.buffer:
                self.first_at = self.clock()  # the window of the next batch opens here
            self.buffer += items
            self.buffered += samples
            self.fetched += samples
            if self.busy:
                self.overlapped += samples
            self.cond.notify_all()


def batcher_for(
    spec: ModelSpec,
    read: Reader,
    max_bytes: int,
    block_ms: int,
    light: Callable[[], list[tuple[str, Entry]]] | None = None,
) -> Batcher:
    """Every mode serves through the prefetching batcher; the strategy makes the mode.
    ``light``: a lane reader's light tenants (only when the catalog declares tenants)."""
    return PrefetchBatcher(spec, read, max_bytes, block_ms=block_ms, light=light)
