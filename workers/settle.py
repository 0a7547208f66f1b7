"""What a computed batch becomes: a stored result for each sure request, one escalation
bundle per next model and lane for the unsure, and the hop each request took.

Per batch: confidences (one numpy call per measure), output bytes (one copy), the
escalations' input rows (one take per source entry). Per request only what differs:
its hop, its decision and its result's few fields, encoded in C.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cascadeq import bundle, outputs, wire
from cascadeq.bundle import Header
from cascadeq.catalog import Catalog, ModelSpec
from cascadeq.commit import Commit
from cascadeq.keys import Keys
from cascadeq.log import get_logger
from cascadeq.messages import OK, error_result, now_ms
from cascadeq.observed import LoadBoard
from cascadeq.tasks import TaskSpec
from cascadeq.window import Tally
from workers import outcome
from workers.batcher import Item

log = get_logger("cascadeq.worker")

TRACES_MAXLEN = 50_000  # per task: enough to train on, small enough to forget


@dataclass
class BatchWork:
    """One batch's effects and figures: made per batch, sent once, then dropped."""

    commit: Commit
    tally: Tally
    counts: Counter[str] = field(default_factory=Counter)  # routing-count hash increments
    channels: dict[str, str] = field(default_factory=dict)  # reply_to -> channel name
    hop: dict[str, Any] = field(default_factory=dict)  # the current entry's shared hop figures
    answered: list[float] = field(default_factory=list)  # total_ms of each ok result
    now: float = 0.0  # epoch ms when the batch's results were written


@dataclass(frozen=True)
class Ran:
    """What one model call did for a batch: its items (with their entry numbers) in the
    order their rows were stacked, and the output rows."""

    items: list[tuple[Item, int]]
    out: np.ndarray
    launched_at: float  # epoch ms
    compute_ms: float
    samples: int
    info: dict[str, Any]  # the batch's extra result info (padding overhead)


@dataclass
class _Escalation:
    stream: str
    parts: list[tuple[Item, np.ndarray]] = field(default_factory=list)  # item, request mask
    headers: list[Header] = field(default_factory=list)
    entries: set[int] = field(default_factory=set)


class Settler:
    """Turns a computed batch into effects; holds only the worker's fixed configuration."""

    def __init__(
        self, catalog: Catalog, spec: ModelSpec, keys: Keys, board: LoadBoard, ttl_s: int
    ) -> None:
        self.catalog, self.spec, self.keys, self.board = catalog, spec, keys, board
        self.ttl_s = ttl_s
        self.rng = random.Random()

    def settle(self, work: BatchWork, ran: Ran) -> None:
        confs = _Confidences(self.spec, ran)
        slicer = outputs.RowSlicer(ran.out)
        work.now = now_ms()
        escalations: dict[str, _Escalation] = {}
        for item, entry, first in _request_offsets(ran):
            try:
                self._settle_item(work, ran, item, entry, first, confs, slicer, escalations)
            except Exception as exc:  # noqa: BLE001 - one entry's surprise stays its own
                log.warning("entry_failed", model=self.spec.name, error=repr(exc))
                work.commit.fail(entry)  # delivered again, then retried alone
        for esc in escalations.values():
            self._escalate(work, esc)
        work.tally.answer_many(OK, work.answered)
        work.answered.clear()

    def _settle_item(
        self,
        work: BatchWork,
        ran: Ran,
        item: Item,
        entry: int,
        first: int,
        confs: _Confidences,
        slicer: outputs.RowSlicer,
        escalations: dict[str, _Escalation],
    ) -> None:
        queue_ms = round(max(0.0, item.read_at - item.enqueued_at), 3)
        wait_ms = round(max(0.0, ran.launched_at - item.read_at), 3)
        work.hop = {
            "queue_ms": queue_ms,
            "batch_wait_ms": wait_ms,
            "compute_ms": round(ran.compute_ms, 3),
            "batch_size": ran.samples,
        }
        kept = np.flatnonzero(item.keep)
        rows = item.bundle.rows[kept].tolist()
        work.tally.queue_ms += [queue_ms] * len(kept)
        work.tally.batch_wait_ms += [wait_ms] * len(kept)
        req = first
        start = confs.row_start(first)
        for j, n in zip(kept.tolist(), rows, strict=True):
            header = item.headers[j]
            try:
                target = self._decide(work, item, j, entry, confs.of, req)
                if target is None:
                    self._answer(work, ran, header, slicer.ext(start, start + n), entry)
                else:
                    stream = self.keys.model_stream(
                        target, self.catalog.models[target].lane_for(header.priority)
                    )
                    esc = escalations.get(stream) or escalations.setdefault(
                        stream, _Escalation(stream)
                    )
                    _take(esc, item, j, header, entry, target)
            except Exception as exc:  # noqa: BLE001 - one request's surprise stays its own
                self._internal(work, header, entry, exc)
            req += 1
            start += n

    def _decide(
        self, work: BatchWork, item: Item, index: int, entry: int, conf_of: Any, req: int
    ) -> str | None:
        """Record the hop; the next model if the answer is not sure enough, else None."""
        header = item.headers[index]
        task = outcome.task_of(self.catalog, header)
        conf = conf_of(req, task.confidence if task else "top")
        outcome.record_hop(header, self.spec.name, conf, work.hop)
        target = self._target(work, task, header, conf)
        if task is not None:
            self._log_trace(work, task, item, index, entry, kept=target is None)
        return target

    def _internal(self, work: BatchWork, header: Header, entry: int, exc: Exception) -> None:
        """A request whose handling raised: an error result of its own, or, if even that
        fails, its entry left pending to be delivered again."""
        log.warning(
            "request_failed",
            model=self.spec.name,
            request_id=header.id,
            code="internal",
            error=repr(exc),
        )
        try:
            failed = error_result(header.id, "internal", f"model {self.spec.name}: {exc}")
            work.commit.result(
                self.keys.result(header.id), failed.dumps(), self.channel(work, header), entry
            )
            work.tally.answer(failed.status, 0.0)
        except Exception:  # noqa: BLE001
            work.commit.fail(entry)

    def _target(
        self, work: BatchWork, task: TaskSpec | None, header: Header, conf: float | None
    ) -> str | None:
        target = outcome.next_model(task, header, self.spec.name, conf)
        if task is None or target is None:
            return target
        why = outcome.skip_reason(task, header, target, self.board, now_ms())
        if why is None:
            return target
        header.trace[-1]["skipped"] = why
        work.counts[f"skip:{why}"] += 1
        work.tally.skipped[why] += 1
        return None

    def _answer(self, work: BatchWork, ran: Ran, header: Header, rows: Any, entry: int) -> None:
        info = dict(ran.info)
        skipped = header.trace[-1].get("skipped") if header.trace else None
        if skipped is not None:
            info["escalation_skipped"] = skipped
        times = outcome.timings(header, work.now)
        record = outputs.ResultRecord(
            id=header.id,
            status=OK,
            outputs={self.spec.output: rows},
            model=self.spec.name,
            path=header.trace,
            error=None,
            timings=times,
            batch_size=ran.samples,
            info=info,
        )
        work.commit.result(
            self.keys.result(header.id), outputs.encode(record), self.channel(work, header), entry
        )
        work.answered.append(times["total_ms"])

    def channel(self, work: BatchWork, header: Header) -> str | None:
        if header.reply_to is None:
            return None
        name = work.channels.get(header.reply_to)
        if name is None:
            name = work.channels[header.reply_to] = self.keys.reply_channel(header.reply_to)
        return name

    def _escalate(self, work: BatchWork, esc: _Escalation) -> None:
        """One entry per next model and lane, its rows taken from each source entry."""
        counter = self.keys.backlog(esc.stream)
        for fields, requests in _escalation_fields(esc):
            work.commit.add(esc.stream, fields, sorted(esc.entries), counted=(counter, requests))
        n = len(esc.headers)
        work.counts[f"escalate:{self.spec.name}"] += n
        target = esc.headers[0].trace[-1]["model"]
        work.tally.escalated += n
        work.tally.escalated_to[str(target)] += n

    def _log_trace(
        self, work: BatchWork, task: TaskSpec, item: Item, index: int, entry: int, *, kept: bool
    ) -> None:
        """Sampled (inputs, kept?) pairs from the first stage: the learned router's data."""
        if task.trace_sample <= 0 or len(task.cascade) < 2:
            return
        header = item.headers[index]
        if header.stage != 0 or task.cascade[0].model != self.spec.name:
            return
        if self.rng.random() >= task.trace_sample:
            return
        mask = np.zeros(item.bundle.size, dtype=bool)
        mask[index] = True
        x = wire.dumps_inputs(bundle.take_rows(item.bundle.inputs, item.bundle.rows, mask))
        work.commit.add(
            self.keys.traces(task.name),
            {bundle.INPUTS: x, b"k": b"1" if kept else b"0"},
            [entry],
            maxlen=TRACES_MAXLEN,
        )


def _take(esc: _Escalation, item: Item, index: int, header: Header, entry: int, to: str) -> None:
    header.stage += 1
    header.attempt += 1
    header.trace.append({"model": to, "rule": "escalate"})
    if not esc.parts or esc.parts[-1][0] is not item:
        esc.parts.append((item, np.zeros(item.bundle.size, dtype=bool)))
    esc.parts[-1][1][index] = True
    esc.headers.append(header)
    esc.entries.add(entry)


def _escalation_fields(esc: _Escalation) -> Iterator[tuple[dict[bytes, bytes], int]]:
    """Bundle fields for an escalation; parts whose inputs cannot stack go separately."""
    if len(esc.parts) == 1 and esc.parts[0][1].all():
        item = esc.parts[0][0]  # the whole entry goes up: its inputs bytes as they came
        fields = bundle.bundle_fields(esc.headers, item.bundle.raw_inputs, item.bundle.rows)
        yield fields, len(esc.headers)
        return
    groups: dict[tuple[Any, ...], list[tuple[Item, np.ndarray]]] = {}
    for item, mask in esc.parts:
        sig = tuple((k, v.dtype.str, v.shape[1:]) for k, v in sorted(item.bundle.inputs.items()))
        groups.setdefault(sig, []).append((item, mask))
    at = 0
    for parts in groups.values():
        taken = [bundle.take_rows(i.bundle.inputs, i.bundle.rows, m) for i, m in parts]
        stacked = {name: np.concatenate([t[name] for t in taken]) for name in taken[0]}
        rows = np.concatenate([i.bundle.rows[m] for i, m in parts])
        count = sum(int(m.sum()) for _, m in parts)
        headers = esc.headers[at : at + count] if len(groups) == 1 else _headers_of(esc, parts)
        at += count
        yield bundle.bundle_fields(headers, wire.dumps_inputs(stacked), rows), len(headers)


def _headers_of(esc: _Escalation, parts: list[tuple[Item, np.ndarray]]) -> list[Header]:
    wanted = {id(i.headers[j]) for i, m in parts for j in np.flatnonzero(m)}
    return [h for h in esc.headers if id(h) in wanted]


def _request_offsets(ran: Ran) -> Iterator[tuple[Item, int, int]]:
    """Each item with its entry number and the index of its first request in the batch."""
    first = 0
    for item, entry in ran.items:
        yield item, entry, first
        first += int(item.keep.sum())


class _Confidences:
    """Per-request confidence over the whole batch, one numpy pass per measure: a
    request's is its least sure row's."""

    def __init__(self, spec: ModelSpec, ran: Ran) -> None:
        self.batch = outcome.BatchConfidence(spec, ran.out)
        rows = np.concatenate([i.bundle.rows[i.keep] for i, _ in ran.items])
        self.starts = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(rows, out=self.starts[1:])
        self.single_rows = bool((rows == 1).all())
        self.per_request: dict[str, list[float] | None] = {}

    def row_start(self, request: int) -> int:
        return int(self.starts[request])

    def of(self, request: int, measure: str) -> float | None:
        values = self.per_request.get(measure, ...)
        if values is ...:
            values = self.per_request[measure] = self._compute(measure)
        return None if values is None else values[request]

    def _compute(self, measure: str) -> list[float] | None:
        rows = self.batch.all_rows(measure)
        if rows is None:
            return None
        if self.single_rows:
            out: list[float] = rows.tolist()
            return out
        reduced: list[float] = np.minimum.reduceat(rows, self.starts[:-1]).tolist()
        return reduced
