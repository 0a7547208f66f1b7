"""The two messages that cross process boundaries: a request header and a result.

A stream entry carries two fields: ``h`` (the small header, re-encoded at each hop)
and ``x`` (the tensors, encoded once by the producer and passed through untouched).
"""

from __future__ import annotations

import re
import time
from typing import Any

import msgspec
import numpy as np

from cascadeq.protocol import wire
from cascadeq.protocol.bundle import Header as Header  # noqa: PLC0414 - re-exported from the codec
from cascadeq.protocol.keys import InvalidName, check_id

HEADER_FIELD = b"h"
INPUTS_FIELD = b"x"

OK = "ok"
ERROR = "error"
EXPIRED = "expired"
REJECTED = "rejected"
CANCELLED = "cancelled"  # cancelled before any model computed it (producer's cancel)
STATUSES = frozenset({OK, ERROR, EXPIRED, REJECTED, CANCELLED})


MAX_HEADER_BYTES = 64 * 1024  # headers grow a hop per step, so they get a fixed allowance


def oversize(header: bytes, inputs: bytes, max_inputs: int) -> str | None:
    """Why an entry is too large to take, or None."""
    if len(inputs) > max_inputs:
        return f"inputs of {len(inputs)} bytes exceed the limit of {max_inputs} bytes"
    if len(header) > MAX_HEADER_BYTES:
        return f"header of {len(header)} bytes exceeds the limit of {MAX_HEADER_BYTES} bytes"
    return None


def now_ms() -> float:
    return time.time() * 1000.0


class Result(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """The one final answer to a request, stored under its id.

    A msgspec Struct, so a result's bytes decode straight into it in C (arrays through
    the extension hook): no intermediate wire type, no second object per result. Not
    tracked by the cycle collector (gc=False): a client holding 30,000 results otherwise
    pays ~1 us each in collections. It holds plain data; a cycle through one would leak.
    """

    id: str
    status: str
    outputs: dict[str, np.ndarray] = {}
    model: str | None = None
    path: list[dict[str, Any]] = []
    error: dict[str, str] | None = None
    timings: dict[str, float] = {}
    batch_size: int = 0
    info: dict[str, Any] = {}

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def traceparent(self) -> str | None:
        """The request's W3C trace context, carried in ``info`` (absent: not traced), so
        an untraced result's bytes stay what they were."""
        found = self.info.get("traceparent")
        return found if isinstance(found, str) else None

    def dumps(self) -> bytes:
        return _ENCODER.encode(self)

    @classmethod
    def loads(cls, data: bytes) -> Result:
        """Decode and check a stored or published result: typed in C (msgspec), then the
        few checks a type cannot say; a forged one raises WireError, never anything else."""
        if len(data) > wire.MSGPACK.max_bytes:
            raise wire.WireError(f"result of {len(data)} bytes exceeds the limit")
        try:
            result = _RESULT.decode(data)
        except (msgspec.DecodeError, ValueError) as exc:  # WireError is a ValueError
            raise wire.WireError(f"result fields are wrong: {exc}") from exc
        if result.status not in STATUSES or not _ID_RE.fullmatch(result.id):
            raise wire.WireError("result has an invalid id or status")
        error = result.error
        if error is not None and ("code" not in error or "message" not in error):
            raise wire.WireError("result error must hold a code and a message")
        return result


def _output_array(code: int, data: memoryview) -> np.ndarray:
    """An extension inside a result: an array, or WireError."""
    if code != wire.EXT_NDARRAY:
        raise wire.WireError(f"result holds extension type {code}")
    return wire.unpack_array(data)


def _only_arrays(kind: type, obj: Any) -> Any:
    """What the decoder calls for ``np.ndarray`` fields: only an array extension fits."""
    if kind is np.ndarray and obj.__class__ is np.ndarray:
        return obj
    raise TypeError(f"expected an array extension, got {type(obj).__name__}")


def _plain(obj: Any) -> Any:
    """What msgspec cannot encode itself: arrays, as extension type 1, and numpy scalars."""
    if isinstance(obj, np.ndarray):
        return msgspec.msgpack.Ext(wire.EXT_NDARRAY, wire.pack_array(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__}: send numpy arrays or plain data")


_RESULT = msgspec.msgpack.Decoder(Result, ext_hook=_output_array, dec_hook=_only_arrays)
_ENCODER = msgspec.msgpack.Encoder(enc_hook=_plain)
_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")  # keys.check_id's rule, without its exception


def error_result(
    header_or_id: Header | str, code: str, message: str, *, status: str = ERROR
) -> Result:
    """A final result for a request that cannot be answered by a model."""
    info: dict[str, Any] = {}
    if isinstance(header_or_id, Header):
        rid, path = header_or_id.id, list(header_or_id.trace)
        total = now_ms() - header_or_id.submitted_at
        if header_or_id.traceparent is not None:
            info = {"traceparent": header_or_id.traceparent}
    else:
        rid, path, total = header_or_id, [], 0.0
    return Result(
        id=rid,
        status=status,
        path=path,
        error={"code": code, "message": message},
        timings={"total_ms": total},
        info=info,
    )


def salvage_id(raw: bytes | None) -> tuple[str | None, str | None]:
    """The request id (and reply channel) of a broken header, where they are valid."""
    if raw is None:
        return None, None
    try:
        doc = wire.loads_map(raw, "header")
    except wire.WireError:
        return None, None
    rid, reply_to = doc.get("id"), doc.get("reply_to")
    if not _valid_id(rid):
        return None, None
    return rid, reply_to if _valid_id(reply_to) else None


def _valid_id(value: Any) -> bool:
    try:
        check_id(value)
    except InvalidName:
        return False
    return True
