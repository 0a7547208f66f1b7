"""Continuous batching: fetch and decode the next batch while the current one computes.

A reader thread keeps up to max_batch samples read and decoded in a buffer (XREADGROUP
plus msgpack decoding and input checks), while the worker thread computes; ONNX Runtime
and socket reads release the GIL, so the two overlap. When the session is free the
worker takes whatever has arrived, without waiting for more.

Overlap fraction = samples the reader fetched while the worker held a batch (from
collect returning it to the next collect) / all samples the reader fetched: near 1 the
reads hide behind compute, near 0 the worker was idle waiting for input anyway.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import redis

from cascadeq.catalog import ModelSpec
from cascadeq.log import get_logger
from workers.batcher import Bad, Batcher, Item, Reader

log = get_logger("cascadeq.worker")


@dataclass
class ContinuousBatcher(Batcher):
    """A Batcher whose reads happen in a background thread; the worker thread only takes."""

    block_ms: int = 1000  # the reader's blocking read: bounds how long close() takes
    buffer: list[Item | Bad] = field(default_factory=list)
    buffered: int = 0  # samples in buffer
    fetched: int = 0
    overlapped: int = 0
    busy: bool = False  # the worker holds a batch

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
        """Whatever has arrived (up to max_batch samples), waiting up to block_ms for one."""
        self._start()
        with self.cond:
            self.busy = False
            if self.error is not None:
                error, self.error = self.error, None
                raise error
            if block_ms is not None and not self.carry:
                self.cond.wait_for(lambda: bool(self.buffer), timeout=block_ms / 1000.0)
            items, self.buffer, self.buffered = self.carry + self.buffer, [], 0
            self.carry = []
            self.cond.notify_all()
        if not items and block_ms is None:  # a caller draining without blocking reads itself
            items, _ = self.fetch(self.spec.batching.max_batch, None)
        batch = self._fit(items)
        with self.cond:
            self.busy = bool(batch)
        return batch

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
        log.info("continuous_batching", model=self.spec.name, overlap=round(self.overlap, 3))

    def _start(self) -> None:
        if self.thread is None and not self.stopping.is_set():
            self.thread = threading.Thread(target=self._loop, name="cq-prefetch", daemon=True)
            self.thread.start()

    def _loop(self) -> None:
        max_batch, backoff = self.spec.batching.max_batch, 0.1
        while not self.stopping.is_set():
            with self.cond:
                self.cond.wait_for(
                    lambda: self.buffered < max_batch or self.stopping.is_set(), timeout=1.0
                )
                room = max_batch - self.buffered
            if self.stopping.is_set() or room < 1:
                continue
            try:
                items, samples = self.fetch(room, self.block_ms)
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
            self.buffer += items
            self.buffered += samples
            self.fetched += samples
            if self.busy:
                self.overlapped += samples
            self.cond.notify_all()


def batcher_for(spec: ModelSpec, read: Reader, max_bytes: int, block_ms: int) -> Batcher:
    """The Batcher a model's batching mode asks for."""
    if spec.batching.mode == "continuous":
        return ContinuousBatcher(spec, read, max_bytes, block_ms=block_ms)
    return Batcher(spec, read, max_bytes)
