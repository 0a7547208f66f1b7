"""A batch's results as stored bytes, built per batch rather than per request.

The bytes are those ``messages.Result.dumps`` writes (a msgpack map; arrays as extension
type 1 holding ``[dtype, shape, raw bytes]``), so clients read them as before. What is
per batch here: the output array is copied to bytes once, and the extension prefix of a
k-row slice is packed once per distinct k; a request then costs a byte slice and one
struct encode in C. ``Template`` goes further for requests that share a trace: their
results are fixed-width lines of one numpy block (workers/answers.py).
"""

from __future__ import annotations

from typing import Any

import msgpack
import msgspec
import numpy as np

from cascadeq.protocol.wire import EXT_NDARRAY


class ResultRecord(msgspec.Struct, array_like=False):
    """Field for field ``messages.Result``: the same map on the wire."""

    id: str
    status: str
    outputs: dict[str, msgspec.msgpack.Ext]
    model: str | None
    path: list[dict[str, Any]]
    error: dict[str, str] | None
    timings: dict[str, float]
    batch_size: int
    info: dict[str, Any]


_ENCODER = msgspec.msgpack.Encoder()


def encode(record: ResultRecord) -> bytes:
    return _ENCODER.encode(record)


class RowSlicer:
    """Slices of one output array, ready to embed as array extensions."""

    def __init__(self, out: np.ndarray) -> None:
        arr = np.ascontiguousarray(out)
        dtype = arr.dtype if arr.dtype.byteorder != ">" else arr.dtype.newbyteorder("<")
        self.buf = arr.astype(dtype, copy=False).tobytes()
        self.dtype = dtype.str
        self.tail = list(arr.shape[1:])
        self.row_bytes = int(dtype.itemsize * int(np.prod(self.tail, dtype=np.int64)))
        self._prefixes: dict[int, bytes] = {}
        self._heads: dict[int, bytes] = {}

    def _prefix(self, rows: int) -> bytes:
        """``[dtype, shape,`` and the bin header of ``rows`` rows, packed once per size."""
        prefix = self._prefixes.get(rows)
        if prefix is None:
            size = rows * self.row_bytes
            packed = msgpack.packb([self.dtype, [rows, *self.tail], b"\0" * size])
            prefix = self._prefixes[rows] = packed[: len(packed) - size]
        return prefix

    def ext(self, start: int, stop: int) -> msgspec.msgpack.Ext:
        data = self.buf[start * self.row_bytes : stop * self.row_bytes]
        return msgspec.msgpack.Ext(EXT_NDARRAY, self._prefix(stop - start) + data)

    def ext_head(self, rows: int) -> bytes:
        """The encoded extension of ``rows`` rows up to their raw bytes: its msgpack
        header, then ``[dtype, shape,`` and the bin header."""
        head = self._heads.get(rows)
        if head is None:
            prefix = self._prefix(rows)
            size = len(prefix) + rows * self.row_bytes
            packed = _ENCODER.encode(msgspec.msgpack.Ext(EXT_NDARRAY, bytes(size)))
            head = self._heads[rows] = packed[: len(packed) - size] + prefix
        return head

    def rows_bytes(self, starts: np.ndarray, rows: int) -> np.ndarray:
        """The raw bytes of ``rows`` rows from each start, one request per line."""
        view = np.frombuffer(self.buf, np.uint8).reshape(-1, self.row_bytes)
        if rows == 1:
            one: np.ndarray = view[starts]
            return one
        taken: np.ndarray = view[starts[:, None] + np.arange(rows)]
        return taken.reshape(len(starts), rows * self.row_bytes)


# Sentinels a template is encoded with, then found and cut out: values no real result
# holds at that place (a template where one shows up twice is not used).
_ID = "\x00cq-id\x00"
_EXT_MARK = b"\xc1cq-output\xc1"
_SLOTS = (
    "confidence", "queue_ms", "batch_wait_ms", "route_ms", "t_queue_ms", "t_wait_ms", "total_ms",
    "prior_confidence",
)  # fmt: skip
_SENTINELS = {name: float.fromhex(f"0x1.c0ffee{i:x}7ea5e1p-999") for i, name in enumerate(_SLOTS)}


class Template:
    """One trace's ok result, as bytes with holes: everything but the id, the output rows
    and the per-request numbers is the same for every request whose trace (before this
    model's hop) equals ``trace``.

    The hop this model adds, the path and the timings are laid out by encoding a real
    ``ResultRecord`` built the way the per-request code builds it, with sentinels where
    the per-request values go; the holes are where the sentinels landed. So the bytes
    are those ``encode`` gives, field order and number formats included.
    """

    def __init__(
        self,
        trace: list[dict[str, Any]],
        model: str,
        output: str,
        hop: dict[str, Any],
        batch_size: int,
        info: dict[str, Any],
        confident: bool,
    ) -> None:
        self.trace = trace
        path = [dict(h) for h in trace]
        # the confidence an escalated request left at its last stage differs per request:
        # a hole too, so requests escalated from one batch share a template
        self.prior_hop = prior_confidence_hop(trace)
        if self.prior_hop is not None:
            path[self.prior_hop]["confidence"] = _SENTINELS["prior_confidence"]
        last = path[-1] if path else None
        if last is None or last.get("model") != model or "confidence" in last:
            last = {"model": model, "rule": "direct"}
            path.append(last)
        last["confidence"] = _SENTINELS["confidence"] if confident else None
        waits = {"queue_ms": _SENTINELS["queue_ms"], "batch_wait_ms": _SENTINELS["batch_wait_ms"]}
        last.update({**hop, **waits})
        self.prior = _sums(path[:-1])
        compute = self.prior[2] + (last.get("compute_ms") or 0.0)
        times = {
            "route_ms": _SENTINELS["route_ms"],
            "queue_ms": _SENTINELS["t_queue_ms"],
            "batch_wait_ms": _SENTINELS["t_wait_ms"],
            "compute_ms": compute,
            "total_ms": _SENTINELS["total_ms"],
        }
        ext = msgspec.msgpack.Ext(EXT_NDARRAY, _EXT_MARK)
        record = ResultRecord(_ID, "ok", {output: ext}, model, path, None, times, batch_size, info)
        raw = _ENCODER.encode(record)
        self.head, body, self.slots = _holes(raw, confident, self.prior_hop is not None)

        end = body.find(_EXT_MARK) + len(_EXT_MARK)
        if min(self.slots.values()) < end:
            raise TemplateError("the result's fields are not in the order expected")
        self.before_ext = body[: end - len(_ENCODER.encode(ext))]
        self.after_ext = body[end:]
        self.slots = {k: v - end for k, v in self.slots.items()}
        self._layouts: dict[tuple[bytes, int, int], tuple[np.ndarray, dict[str, int]]] = {}

    def block(
        self,
        slicer: RowSlicer,
        rows: int,
        starts: np.ndarray,
        numbers: dict[str, np.ndarray],
        ids: list[str],
    ) -> tuple[bytes, int]:
        """The results of requests of ``rows`` output rows each, from ``starts``, with
        ``numbers`` (per slot, per request) and ``ids`` (one length, ASCII): one block of
        fixed-width lines, and that width."""
        id_len = len(ids[0])
        row, at = self._layout(slicer.ext_head(rows), rows * slicer.row_bytes, id_len)
        block = np.empty((len(starts), len(row)), np.uint8)
        block[:] = row
        if id_len:
            joined = np.frombuffer("".join(ids).encode("ascii"), np.uint8)
            block[:, at["id"] : at["id"] + id_len] = joined.reshape(len(ids), id_len)
        if slicer.row_bytes:
            data = at["data"]
            block[:, data : data + rows * slicer.row_bytes] = slicer.rows_bytes(starts, rows)
        for name in self.slots:
            values = np.asarray(numbers[name], dtype=">f8")
            block[:, at[name] : at[name] + 8] = values.view(np.uint8).reshape(len(starts), 8)
        return block.tobytes(), len(row)

    def _layout(
        self, ext_head: bytes, data_bytes: int, id_len: int
    ) -> tuple[np.ndarray, dict[str, int]]:
        """The constant bytes of a line, and where the id, the output data and each
        number's 8 bytes (after its float marker) go."""
        key = (ext_head, data_bytes, id_len)
        got = self._layouts.get(key)
        if got is None:
            id_head = _ENCODER.encode("x" * id_len)[: -id_len or None]
            fixed = self.head + id_head + bytes(id_len) + self.before_ext + ext_head
            row = np.frombuffer(fixed + bytes(data_bytes) + self.after_ext, np.uint8)
            shift = len(fixed) + data_bytes + 1
            at = {k: v + shift for k, v in self.slots.items()}
            at["id"] = len(self.head) + len(id_head)
            at["data"] = len(fixed)
            got = self._layouts[key] = (row, at)
        return got


def _sums(hops: list[dict[str, Any]]) -> tuple[float, float, float]:
    """Queue, wait and compute summed over hops, in order, as ``outcome.timings`` does."""
    queue = wait = compute = 0.0
    for h in hops:
        queue += h.get("queue_ms") or 0.0
        wait += h.get("batch_wait_ms") or 0.0
        compute += h.get("compute_ms") or 0.0
    return queue, wait, compute


class TemplateError(ValueError):
    """A trace whose template cannot be cut (a sentinel showed up in it): encode per request."""


def prior_confidence_hop(trace: list[dict[str, Any]]) -> int | None:
    """The last hop of ``trace`` holding a float confidence (the stage a request was
    escalated from), or None."""
    for at in range(len(trace) - 1, -1, -1):
        if trace[at].get("confidence").__class__ is float:
            return at
    return None


def masked_trace(trace: list[dict[str, Any]]) -> bytes:
    """A trace's encoding with its prior stage's confidence left out, led by that hop's
    place: equal for requests whose results one template writes."""
    at = prior_confidence_hop(trace)
    if at is None:
        return b"-:" + _ENCODER.encode(trace)
    masked = [*trace[:at], {**trace[at], "confidence": None}, *trace[at + 1 :]]
    return b"%d:" % at + _ENCODER.encode(masked)


def _holes(raw: bytes, confident: bool, prior: bool) -> tuple[bytes, bytes, dict[str, int]]:
    """The bytes before the id, those after it, and each number's offset after the id."""
    id_bytes = _ENCODER.encode(_ID)
    at = raw.find(id_bytes)
    if at < 0 or raw.count(id_bytes) != 1 or raw.count(_EXT_MARK) != 1:
        raise TemplateError("a sentinel shows up in the trace")
    head, body = raw[:at], raw[at + len(id_bytes) :]
    slots: dict[str, int] = {}
    for name in _SLOTS:
        if (name == "confidence" and not confident) or (name == "prior_confidence" and not prior):
            continue
        sentinel = _ENCODER.encode(_SENTINELS[name])  # 0xCB and 8 bytes: msgspec's only float
        if body.count(sentinel) != 1:
            raise TemplateError("a sentinel shows up in the trace")
        slots[name] = body.find(sentinel)
    return head, body, slots
