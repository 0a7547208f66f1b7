"""A batch's ok results as stored bytes, a block at a time.

Requests answered by one model call differ in few places: their id, their output rows,
their confidence, their waits and their two end-to-end times. Everything else (the
result's field names, the model, the path before this hop, the compute time, the batch
size) is the same for every request with the same trace, so it is encoded once per
trace (cascadeq/protocol/outputs.py ``Template``), and a group of requests with the same trace,
row count and id length is one numpy block of fixed-width lines, one result each. A
request then costs a few list-comprehension steps and a slice; the bytes are those the
per-request encoding writes (tests/unit/test_answers.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np

from cascadeq.protocol import outputs
from cascadeq.protocol.bundle import Header

_ENCODE = msgspec.msgpack.Encoder().encode

#: confidence(measure): every request's confidence in the batch, None when there is none.
Confidence = Callable[[str], "np.ndarray | None"]


@dataclass
class Sure:
    """One entry's requests to answer, column by column: number in the batch, first
    output row, rows, header and confidence measure of each."""

    requests: list[int] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    headers: list[Header] = field(default_factory=list)
    measures: list[str] = field(default_factory=list)

    def add(self, request: int, start: int, rows: int, header: Header, measure: str) -> None:
        self.requests.append(request)
        self.starts.append(start)
        self.rows.append(rows)
        self.headers.append(header)
        self.measures.append(measure)

    def __len__(self) -> int:
        return len(self.headers)


@dataclass
class Encoded:
    """An entry's results: (key, payload, reply channel number) as columns, the total_ms
    of each, and the positions (in the Sure) left to encode one at a time."""

    keys: list[str] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)
    channels: list[int] = field(default_factory=list)
    totals: list[np.ndarray] = field(default_factory=list)
    left: list[int] = field(default_factory=list)


@dataclass
class OkBatch:
    """The per-batch parts of its ok results: templates by trace, and the figures every
    result of the batch shares."""

    model: str
    output: str
    slicer: outputs.RowSlicer
    compute_ms: float
    batch_size: int
    info: dict[str, Any]
    now: float  # epoch ms the results are written at
    result_prefix: str  # a result's key is this and its id (one shard)
    # with ingress shards, a result's key from its id (its shard), instead of the prefix
    result_key: Callable[[str], str] | None = None
    templates: dict[tuple[bytes, bool], outputs.Template | None] = field(default_factory=dict)

    def template(
        self, trace: list[dict[str, Any]], hop: dict[str, Any], confident: bool, raw: bytes
    ) -> outputs.Template | None:
        """The template of a trace whose encoding, its prior stage's confidence left out,
        is ``raw`` (equal bytes, equal result bytes but for that confidence), or None when
        it cannot be cut: its requests are encoded one at a time."""
        key = (raw, confident)
        if key in self.templates:
            return self.templates[key]
        try:
            made: outputs.Template | None = outputs.Template(
                [dict(h) for h in trace],
                self.model,
                self.output,
                hop,
                self.batch_size,
                self.info,
                confident,
            )
        except outputs.TemplateError:
            made = None
        self.templates[key] = made
        return made

    def encode(
        self,
        sure: Sure,
        hop: dict[str, Any],
        confidence: Confidence,
        channel: Callable[[Header], int],
    ) -> Encoded:
        """One entry's sure requests, a group (same trace, rows and measure) at a time."""
        done = Encoded()
        for tmpl, measure, positions in self._groups(sure, hop, confidence):
            if tmpl is None:
                done.left += positions
            else:
                self._fill(tmpl, measure, sure, positions, hop, confidence, channel, done)
        return done

    def _groups(
        self, sure: Sure, hop: dict[str, Any], confidence: Confidence
    ) -> list[tuple[outputs.Template | None, str, list[int]]]:
        """Positions by (trace bytes, rows, measure); one group without a look at each
        request when the entry's traces, rows and measures are all alike (the rule)."""
        headers, rows, measures = sure.headers, sure.rows, sure.measures
        n = len(headers)
        traces = [h.trace for h in headers]
        first = traces[0]
        if (
            traces.count(first) == n
            and rows.count(rows[0]) == n
            and measures.count(measures[0]) == n
        ):
            raw = outputs.masked_trace(first)
            if n == 1 or _ENCODE(traces) == _ENCODE([first] * n):  # equal, and encoded alike
                confident = confidence(measures[0]) is not None
                tmpl = self.template(first, hop, confident, raw)
                return [(tmpl, measures[0], list(range(n)))]
        groups: dict[tuple[bytes, int, str], list[int]] = {}
        for i, trace in enumerate(traces):  # escalated requests differ in their confidence
            groups.setdefault((outputs.masked_trace(trace), rows[i], measures[i]), []).append(i)
        out = []
        for (raw, _, measure), positions in groups.items():
            confident = confidence(measure) is not None
            tmpl = self.template(traces[positions[0]], hop, confident, raw)
            out.append((tmpl, measure, positions))
        return out

    def _fill(
        self,
        tmpl: outputs.Template,
        measure: str,
        sure: Sure,
        positions: list[int],
        hop: dict[str, Any],
        confidence: Confidence,
        channel: Callable[[Header], int],
        done: Encoded,
    ) -> None:
        """One group's results: its per-request numbers as arrays, then a block per id
        length (ids are checked ASCII, so a length is a byte count)."""
        all_of = len(positions) == len(sure)
        headers = sure.headers if all_of else [sure.headers[p] for p in positions]
        ids = [h.id for h in headers]
        submitted = np.array([h.submitted_at for h in headers], dtype=np.float64)
        routed = np.array(
            [h.submitted_at if h.routed_at is None else h.routed_at for h in headers],
            dtype=np.float64,
        )
        route, total = routed - submitted, self.now - submitted
        queue = np.full(len(headers), hop["queue_ms"], dtype=np.float64)
        wait = np.full(len(headers), hop["batch_wait_ms"], dtype=np.float64)
        numbers = {
            "queue_ms": queue,
            "batch_wait_ms": wait,
            "route_ms": np.where(route > 0.0, route, 0.0),  # max(0.0, x), NaN and -0.0 too
            "total_ms": np.where(total > 0.0, total, 0.0),
            "t_queue_ms": tmpl.prior[0] + queue,
            "t_wait_ms": tmpl.prior[1] + wait,
        }
        if tmpl.prior_hop is not None:
            at = tmpl.prior_hop
            numbers["prior_confidence"] = np.array(
                [h.trace[at]["confidence"] for h in headers], dtype=np.float64
            )
        values = confidence(measure)
        if values is not None:
            requests = sure.requests if all_of else [sure.requests[p] for p in positions]
            numbers["confidence"] = values[requests]
        starts = np.array(sure.starts if all_of else [sure.starts[p] for p in positions])
        replies = [h.reply_to for h in headers]
        if replies.count(replies[0]) == len(replies):
            channels = [channel(headers[0])] * len(headers)
        else:
            channels = [channel(h) for h in headers]
        rows = sure.rows[positions[0]]
        for lines in _by_length(ids):
            self._block(tmpl, rows, starts, numbers, ids, channels, lines, done)
        done.totals.append(numbers["total_ms"])

    def _block(
        self,
        tmpl: outputs.Template,
        rows: int,
        starts: np.ndarray,
        numbers: dict[str, np.ndarray],
        ids: list[str],
        channels: list[int],
        lines: slice | np.ndarray,
        done: Encoded,
    ) -> None:
        """The results of ``lines`` of a group, whose ids have one length."""
        if isinstance(lines, slice):
            chosen, some = ids, numbers
            done.channels += channels
        else:
            picked = lines.tolist()
            chosen, some = [ids[i] for i in picked], {k: v[lines] for k, v in numbers.items()}
            done.channels += [channels[i] for i in picked]
            starts = starts[lines]
        block, width = tmpl.block(self.slicer, rows, starts, some, chosen)
        if self.result_key is None:
            prefix = self.result_prefix
            done.keys += [prefix + rid for rid in chosen]
        else:
            done.keys += [self.result_key(rid) for rid in chosen]
        done.payloads += [block[at : at + width] for at in range(0, len(block), width)]


def _by_length(ids: list[str]) -> list[slice | np.ndarray]:
    """The lines of each id length: all of them when the ids have one length (the rule)."""
    lengths = [len(i) for i in ids]
    if lengths.count(lengths[0]) == len(lengths):
        return [slice(None)]
    by = np.asarray(lengths)
    order = np.argsort(by, kind="stable")
    cuts = np.flatnonzero(np.diff(by[order])) + 1
    return list(np.split(order, cuts))
