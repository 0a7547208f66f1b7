"""Building the router's output: one bundle entry per model stream, at most max_batch samples.

A stream's requests arrive as parts (a source entry and the indices of its requests that
go there). A source entry that goes whole to one stream and fits keeps its inputs bytes
untouched; otherwise rows are taken, stacked across entries with the same input
signature, and encoded once per output entry.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from cascadeq.protocol import bundle, wire
from cascadeq.protocol.bundle import Bundle

#: A source entry's requests bound for one stream: (bundle, entry number, indices).
Part = tuple[Bundle, int, list[int]]


def entries(
    parts: list[Part], max_batch: int
) -> Iterator[tuple[dict[bytes, bytes], int, list[int]]]:
    """(fields, requests, source entry numbers) of each entry to add to one stream."""
    for chunk in _chunks(parts, max_batch):
        if len(chunk) == 1 and len(chunk[0][2]) == chunk[0][0].size:
            b, n, _ = chunk[0]  # the whole entry goes on: its inputs bytes as they came
            yield bundle.bundle_fields(b.headers, b.raw_inputs, b.rows), b.size, [n]
            continue
        yield from _stacked(chunk)


def _chunks(parts: list[Part], max_batch: int) -> Iterator[list[Part]]:
    """Parts cut so that no chunk holds more than ``max_batch`` samples (a request larger
    than that travels alone)."""
    if all(b.unit for b, _, _ in parts):
        yield from _unit_chunks(parts, max_batch)
        return
    total = sum(int(b.rows.sum() if len(i) == b.size else b.rows[i].sum()) for b, _, i in parts)
    if total <= max_batch:
        yield parts
        return
    chunk: list[Part] = []
    samples = 0
    for b, n, indices in parts:
        rows = b.rows.tolist()
        taken: list[int] = []
        for i in indices:
            if samples + rows[i] > max_batch and samples:
                if taken:
                    chunk.append((b, n, taken))
                    taken = []
                yield chunk
                chunk, samples = [], 0
            taken.append(i)
            samples += rows[i]
        if taken:
            chunk.append((b, n, taken))
    if chunk:
        yield chunk


def _unit_chunks(parts: list[Part], max_batch: int) -> Iterator[list[Part]]:
    """_chunks where every request is one sample: slices of the index lists."""
    room = max_batch = max(1, max_batch)
    chunk: list[Part] = []
    for b, n, indices in parts:
        start = 0
        while start < len(indices):
            taken = indices[start : start + room] if start or len(indices) > room else indices
            chunk.append((b, n, taken))
            start += len(taken)
            room -= len(taken)
            if room == 0:
                yield chunk
                chunk, room = [], max_batch
    if chunk:
        yield chunk


def _signature(b: Bundle) -> tuple[Any, ...]:
    return tuple((k, v.dtype.str, v.shape[1:]) for k, v in b.inputs.items())


def _stacked(chunk: list[Part]) -> Iterator[tuple[dict[bytes, bytes], int, list[int]]]:
    """One entry per input signature among the chunk's parts, rows stacked and encoded once."""
    by_sig: dict[tuple[Any, ...], list[Part]] = {}
    for part in chunk:
        by_sig.setdefault(_signature(part[0]), []).append(part)
    for parts in by_sig.values():
        headers: list[bundle.Header] = []
        taken: list[dict[str, np.ndarray]] = []
        rows: list[np.ndarray] = []
        for b, _, indices in parts:
            if len(indices) == b.size:
                headers += b.headers
                taken.append(b.inputs)
                rows.append(b.rows)
                continue
            headers += [b.headers[i] for i in indices]
            taken.append(_rows_of(b, indices))
            rows.append(b.rows[indices])
        if len(taken) == 1:
            stacked = taken[0]
        else:
            stacked = {name: np.concatenate([t[name] for t in taken]) for name in taken[0]}
        fields = bundle.bundle_fields(headers, wire.dumps_inputs(stacked), np.concatenate(rows))
        yield fields, len(headers), sorted({n for _, n, _ in parts})


def _rows_of(b: Bundle, indices: list[int]) -> dict[str, np.ndarray]:
    """The rows of some of an entry's requests: a slice when they are consecutive."""
    first, last = indices[0], indices[-1]
    if last - first + 1 == len(indices):
        off = b.offsets()
        lo, hi = int(off[first]), int(off[last + 1])
        return {name: arr[lo:hi] for name, arr in b.inputs.items()}
    keep = np.zeros(b.size, dtype=bool)
    keep[indices] = True
    return bundle.take_rows(b.inputs, b.rows, keep)


def single_fields(b: Bundle, index: int, raw_header: bytes | None = None) -> dict[bytes, bytes]:
    """One request of an entry in the single form (h, x): what a dead letter keeps, so
    ``cascadeq dlq replay`` can send it again."""
    header = raw_header if raw_header is not None else bundle.dumps_header(b.headers[index])
    fields = {bundle.HEADER: header}
    if b.single:
        fields[bundle.INPUTS] = b.raw_inputs
    elif b.inputs:
        fields[bundle.INPUTS] = wire.dumps_inputs(_rows_of(b, [index]))
    else:  # the stacked inputs are unusable: keep them as they came, for an operator
        fields[bundle.STACKED] = b.raw_inputs
    return fields
