"""The batch window: block for the first entry, then fill until the strategy launches.

Batch size counts samples: a request whose inputs have k rows counts k. An entry
that would overflow the batch is carried to the next one, never dropped. When to stop
filling is the strategy's call (workers/strategies.py), not a flag here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from cascadeq import wire
from cascadeq.catalog import ModelSpec
from cascadeq.keys import InvalidName
from cascadeq.messages import (
    HEADER_FIELD,
    INPUTS_FIELD,
    Header,
    kept_for_dead_letter,
    now_ms,
    oversize,
)
from cascadeq.streams import Entry, Fields
from workers import strategies

#: read(count, block_ms) -> [(stream, entry)]; block_ms None means "do not block".
Reader = Callable[[int, int | None], list[tuple[str, Entry]]]
#: run(inputs, samples) -> outputs: what the strategy times to learn compute costs.
RunFn = Callable[[Mapping[str, np.ndarray], int], np.ndarray]


@dataclass
class Item:
    """A decoded, validated request, ready to join a batch."""

    stream: str
    entry_id: bytes
    header: Header
    inputs: dict[str, np.ndarray]
    raw_inputs: bytes  # passed on untouched when the request escalates
    samples: int
    read_at: float  # epoch ms

    @cached_property  # read three times per request (queue wait, hop times, tally)
    def enqueued_at(self) -> float:
        return float(self.entry_id.split(b"-", 1)[0])


@dataclass
class Bad:
    """An entry that cannot run; it gets an error result and never joins a batch."""

    stream: str
    entry_id: bytes
    fields: Fields
    code: str
    message: str
    header: Header | None = None


def decode(
    stream: str, entry: Entry, spec: ModelSpec, read_at: float, max_bytes: int
) -> Item | Bad:
    """An Item, or a Bad saying why not; never raises (it runs in the reader thread too)."""
    try:
        return _decode(stream, entry, spec, read_at, max_bytes)
    except Exception as exc:  # noqa: BLE001 - a surprise no check foresaw is still bad input
        eid, fields = entry
        return Bad(stream, eid, dict(fields or {}), "bad_payload", f"entry is unusable: {exc!r}")


def _decode(
    stream: str, entry: Entry, spec: ModelSpec, read_at: float, max_bytes: int
) -> Item | Bad:
    eid, fields = entry
    raw_header, raw_inputs = fields.get(HEADER_FIELD), fields.get(INPUTS_FIELD)
    if raw_header is None or raw_inputs is None:
        return Bad(stream, eid, fields, "bad_payload", "entry lacks the h or x field")
    problem = oversize(raw_header, raw_inputs, max_bytes)
    if problem:
        return Bad(stream, eid, kept_for_dead_letter(raw_header), "too_large", problem)
    try:
        header = Header.loads(raw_header)
    except (wire.WireError, InvalidName) as exc:
        return Bad(stream, eid, fields, "bad_payload", f"header is unusable: {exc}")
    try:
        inputs = wire.loads_inputs(raw_inputs)
        samples = spec.check_inputs(inputs)
    except (ValueError, TypeError) as exc:  # WireError and InputError are ValueErrors
        return Bad(stream, eid, fields, "bad_input", str(exc), header)
    return Item(stream, eid, header, inputs, raw_inputs, samples, read_at)


@dataclass
class Batcher:
    """Collects one batch per call from a blocking reader, as its strategy decides."""

    spec: ModelSpec
    read: Reader
    max_bytes: int = 8 * 1024 * 1024
    carry: list[Item | Bad] = field(default_factory=list)
    clock: Callable[[], float] = time.monotonic  # seconds; tests inject a fake
    strategy: strategies.Strategy | None = None  # None: the catalog's mode

    def __post_init__(self) -> None:
        self.rule = self.strategy or strategies.for_batching(self.spec.batching)

    def collect(self, block_ms: int | None) -> list[Item | Bad]:
        max_batch = self.spec.batching.max_batch
        items, samples = self._take_carry()
        if not items:
            items, samples = self.fetch(max_batch, block_ms)
            if not items:
                return []
        opened = self.clock()  # the window opens when the first entry is in hand
        while samples < max_batch and not self.carry:
            waited_ms = (self.clock() - opened) * 1000.0
            if self.rule.launch_now(samples, waited_ms):
                break
            block = int(self.rule.wait_budget_ms(samples, waited_ms))
            if block < 1:  # XREADGROUP blocks in whole ms, and BLOCK 0 means forever
                break
            more, more_samples = self.fetch(max_batch - samples, block)
            if not more:
                break
            items += more
            samples += more_samples
        return self._fit(items)

    def timed(self, run: RunFn) -> RunFn:
        """Wrap the model call so the strategy learns what each batch size costs."""

        def observed(inputs: Mapping[str, np.ndarray], samples: int) -> np.ndarray:
            started = self.clock()
            out = run(inputs, samples)
            self.rule.observe(samples, (self.clock() - started) * 1000.0)
            return out

        return observed

    def close(self) -> None:
        """Nothing runs in the background here; see PrefetchBatcher."""

    def drain(self) -> list[Item | Bad]:
        """The next batch from what was read but not yet run (shutdown, reclaim)."""
        items, _ = self._take_carry()
        return self._fit(items)

    def fetch(self, count: int, block_ms: int | None) -> tuple[list[Item | Bad], int]:
        """Read and decode up to count entries; returns them and their samples."""
        got = self.read(count, block_ms)
        read_at = now_ms()
        items = [decode(stream, entry, self.spec, read_at, self.max_bytes) for stream, entry in got]
        return items, sum(i.samples for i in items if isinstance(i, Item))

    def _take_carry(self) -> tuple[list[Item | Bad], int]:
        items, self.carry = self.carry, []
        return items, sum(i.samples for i in items if isinstance(i, Item))

    def _fit(self, items: list[Item | Bad]) -> list[Item | Bad]:
        """Keep the batch within max_batch samples; the first item always runs."""
        limit, total = self.spec.batching.max_batch, 0
        for index, item in enumerate(items):
            size = item.samples if isinstance(item, Item) else 0
            if total + size > limit and total > 0:
                self.carry = items[index:] + self.carry
                return items[:index]
            total += size
        return items
