"""A batch's results as stored bytes, built per batch rather than per request.

The bytes are those ``messages.Result.dumps`` writes (a msgpack map; arrays as extension
type 1 holding ``[dtype, shape, raw bytes]``), so clients read them as before. What is
per batch here: the output array is copied to bytes once, and the extension prefix of a
k-row slice is packed once per distinct k; a request then costs a byte slice and one
struct encode in C.
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
