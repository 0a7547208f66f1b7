"""The batch window: block for the first entry, then fill until the strategy launches.

Batch size counts samples: a request whose inputs have k rows counts k. An entry
that would overflow the batch is carried to the next one, never dropped. When to stop
filling is the strategy's call (workers/strategies.py), not a flag here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np

from cascadeq.config.catalog import InputError, ModelSpec
from cascadeq.infra.streams import Entry, Fields
from cascadeq.protocol import bundle, deadletter
from cascadeq.protocol.bundle import BadItem, Bundle, EntryError, Header
from cascadeq.protocol.messages import EXPIRED, Result, error_result, now_ms
from cascadeq.workers import strategies

#: read(count, block_ms) -> [(stream, entry)]; block_ms None means "do not block".
Reader = Callable[[int, int | None], list[tuple[str, Entry]]]
#: run(inputs, samples) -> outputs: what the strategy times to learn compute costs.
RunFn = Callable[[Mapping[str, np.ndarray], int], np.ndarray]


@dataclass
class Item:
    """A decoded entry (one request or a bundle of them) whose good requests may run."""

    bundle: Bundle
    read_at: float  # epoch ms
    keep: np.ndarray  # bool per request: False where the request already failed
    samples: int  # rows of the kept requests
    queued_at: float | None = None  # epoch ms; None: when its entry entered the stream

    @property
    def stream(self) -> str:
        return self.bundle.stream

    @property
    def entry_id(self) -> bytes:
        return self.bundle.entry_id

    @property
    def headers(self) -> list[Header]:
        return self.bundle.headers

    @property
    def bad(self) -> list[BadItem]:
        return self.bundle.bad

    @cached_property
    def enqueued_at(self) -> float:
        if self.queued_at is not None:  # escalated in-process: it never waited in a stream
            return self.queued_at
        return float(self.entry_id.split(b"-", 1)[0])

    def kept_inputs(self) -> dict[str, np.ndarray]:
        """The stacked rows of the requests that may run."""
        if self.keep.all():
            return self.bundle.inputs
        return bundle.take_rows(self.bundle.inputs, self.bundle.rows, self.keep)


@dataclass
class Bad:
    """An entry none of whose requests can run; each salvaged id gets an error result."""

    stream: str
    entry_id: bytes
    fields: Fields
    code: str
    message: str
    salvaged: list[BadItem] = field(default_factory=list)
    samples: int = 0


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
    try:
        got = bundle.decode(stream, eid, fields, max_bytes)
    except EntryError as exc:
        kept = deadletter.kept(fields, exc.code)
        return Bad(stream, eid, kept, exc.code, str(exc), exc.salvaged)
    if len(got.bad) < got.size:
        _check_inputs(got, spec)
    keep = np.ones(got.size, dtype=bool)
    for item in got.bad:
        keep[item.index] = False
    return Item(got, read_at, keep, int(got.rows[keep].sum()))


def _check_inputs(got: Bundle, spec: ModelSpec) -> None:
    """The model's declared inputs, checked once on the stacked rows; a non-finite value
    fails only the requests whose rows hold it."""
    taken = {b.index for b in got.bad}
    try:
        _structure(spec).check_inputs(got.inputs)
    except InputError as exc:
        got.bad += [
            BadItem(i, "bad_input", str(exc), header=h)
            for i, h in enumerate(got.headers)
            if i not in taken
        ]
        return
    if spec.allow_nonfinite:
        return
    for name, arr in got.inputs.items():
        if arr.dtype.kind != "f" or bool(np.isfinite(arr).all()):
            continue
        finite_rows = np.isfinite(arr.reshape(len(arr), -1)).all(axis=1)
        finite = np.logical_and.reduceat(finite_rows, got.offsets()[:-1])
        message = f"input {name!r} of model {spec.name} holds NaN or inf, which it does not allow"
        for i in np.flatnonzero(~finite):
            if int(i) not in taken:
                taken.add(int(i))
                got.bad.append(BadItem(int(i), "bad_input", message, header=got.headers[i]))


_STRUCTURE: dict[int, tuple[ModelSpec, ModelSpec]] = {}


def _structure(spec: ModelSpec) -> ModelSpec:
    """The spec with non-finite values allowed: checked per request afterwards instead."""
    held = _STRUCTURE.get(id(spec))
    if held is None or held[0] is not spec:
        held = _STRUCTURE[id(spec)] = (spec, replace(spec, allow_nonfinite=True))
    return held[1]


@dataclass
class Batcher:
    """Collects one batch per call from a blocking reader, as its strategy decides."""

    spec: ModelSpec
    read: Reader
    max_bytes: int = 8 * 1024 * 1024
    carry: list[Item | Bad] = field(default_factory=list)
    clock: Callable[[], float] = time.monotonic  # seconds; tests inject a fake
    strategy: strategies.Strategy | None = None  # None: the catalog's mode
    per_entry: float = 1.0  # samples per entry read, a moving average
    #: the order a batch takes what is held in: a lane reader's, where tenants' sub-streams
    #: are read by fair share (workers/lanes.py: light tenants first); None: as read
    first: Callable[[list[Item | Bad]], list[Item | Bad]] | None = None

    def __post_init__(self) -> None:
        self.rule = self.strategy or strategies.for_batching(self.spec.batching)
        if self.first is None:
            self.first = getattr(self.read, "first", None)

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
        """Read and decode entries for about ``count`` samples; returns them and their
        samples. An entry may be a bundle, so the count of entries asked for follows the
        samples per entry seen so far."""
        entries = max(1, min(count, math.ceil(count / self.per_entry)))
        got = self.read(entries, block_ms)
        read_at = now_ms()
        items = [decode(stream, entry, self.spec, read_at, self.max_bytes) for stream, entry in got]
        samples = sum(i.samples for i in items)
        if items:
            self.per_entry = max(1.0, 0.8 * self.per_entry + 0.2 * samples / len(items))
        return items, samples

    def held(self, stream: str) -> set[bytes]:
        """Ids of the entries of ``stream`` read and not yet run, which a reclaim must
        leave alone: they sit idle to Redis, but are not lost."""
        ids = {i.entry_id for i in self.carry if i.stream == stream}
        reader_held = getattr(self.read, "held", None)  # a FanIn's replies not taken yet
        return ids | reader_held(stream) if reader_held is not None else ids

    def _take_carry(self) -> tuple[list[Item | Bad], int]:
        items, self.carry = self.carry, []
        return items, sum(i.samples for i in items)

    def _fit(self, items: list[Item | Bad]) -> list[Item | Bad]:
        """Keep the batch within max_batch samples; the first item always runs."""
        limit, total = self.spec.batching.max_batch, 0
        if self.first is not None and len(items) > 1:
            return self._pack(self.first(items), limit)
        for index, item in enumerate(items):
            size = item.samples
            if total + size > limit and total > 0:
                self.carry = items[index:] + self.carry
                return items[:index]
            total += size
        return items

    def _pack(self, items: list[Item | Bad], limit: int) -> list[Item | Bad]:
        """Tenants' lanes: the batch takes items in order while they fit, and past one
        that does not, the later ones that still fit (a busy tenant's small entry fills
        the room a light tenant's entry left), so it is not cut short; the others are
        carried over, in order, ahead of the next read."""
        taken: list[Item | Bad] = []
        left: list[Item | Bad] = []
        total = 0
        for item in items:
            if taken and total + item.samples > limit:
                left.append(item)
                continue
            taken.append(item)
            total += item.samples
        self.carry = left + self.carry
        return taken


def poisoned(stream: str, entry_id: bytes, fields: Fields, deliveries: int) -> Bad:
    """An entry delivered too often: every request in it that has an id is answered."""
    message = f"delivered {deliveries} times; dead-lettered"
    try:
        got = bundle.decode(stream, entry_id, fields, 1 << 62)
    except EntryError as exc:
        return Bad(stream, entry_id, fields, "dead_letter", message, exc.salvaged)
    salvaged = [BadItem(i, "dead_letter", message, header=h) for i, h in enumerate(got.headers)]
    for bad in got.bad:  # placeholders stand where headers were unusable
        salvaged[bad.index] = bad
    return Bad(stream, entry_id, fields, "dead_letter", message, salvaged)


def take_expired(item: Item, now: float) -> list[tuple[Result, str | None]]:
    """Drop from the batch the requests whose deadline has passed and return their
    `expired` answers with each one's reply channel: given before compute, by the worker
    that read them or by a local escalation, so no model time goes to an answer nobody
    waits for. ``now`` is the caller's clock reading (epoch ms)."""
    answers = []
    for j in np.flatnonzero(item.keep).tolist():
        header = item.headers[j]
        if header.deadline is not None and header.deadline <= now:
            item.keep[j] = False
            res = error_result(header, "deadline", "deadline passed before compute", status=EXPIRED)
            answers.append((res, header.reply_to))
    return answers
