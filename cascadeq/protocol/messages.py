"""The two messages that cross process boundaries: a request header and a result.

A stream entry carries two fields: ``h`` (the small header, re-encoded at each hop)
and ``x`` (the tensors, encoded once by the producer and passed through untouched).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
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
STATUSES = frozenset({OK, ERROR, EXPIRED, REJECTED})


MAX_HEADER_BYTES = 64 * 1024  # headers grow a hop per step, so they get a fixed allowance


def oversize(header: bytes, inputs: bytes, max_inputs: int) -> str | None:
    """Why an entry is too large to take, or None."""
    if len(inputs) > max_inputs:
        return f"inputs of {len(inputs)} bytes exceed the limit of {max_inputs} bytes"
    if len(header) > MAX_HEADER_BYTES:
        return f"header of {len(header)} bytes exceeds the limit of {MAX_HEADER_BYTES} bytes"
    return None


def kept_for_dead_letter(header: bytes) -> dict[bytes, bytes]:
    """What of an oversized entry is worth keeping: its header, if that is not the problem."""
    return {HEADER_FIELD: header} if len(header) <= MAX_HEADER_BYTES else {}


def now_ms() -> float:
    return time.time() * 1000.0


@dataclass
class Result:
    """The one final answer to a request, stored under its id."""

    id: str
    status: str
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    model: str | None = None
    path: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, str] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    batch_size: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == OK

    def dumps(self) -> bytes:
        return wire.dumps(
            {
                "id": self.id,
                "status": self.status,
                "outputs": self.outputs,
                "model": self.model,
                "path": self.path,
                "error": self.error,
                "timings": self.timings,
                "batch_size": self.batch_size,
                "info": self.info,
            }
        )

    @classmethod
    def loads(cls, data: bytes) -> Result:
        """Decode and check a stored or published result: typed in C (msgspec), then the
        few checks a type cannot say; a forged one raises WireError, never anything else."""
        if len(data) > wire.MSGPACK.max_bytes:
            raise wire.WireError(f"result of {len(data)} bytes exceeds the limit")
        try:
            got = _RESULT.decode(data)
        except (msgspec.DecodeError, ValueError) as exc:
            raise wire.WireError(f"result fields are wrong: {exc}") from exc
        outputs = {}
        for name, ext in got.outputs.items():
            if ext.code != wire.EXT_NDARRAY:
                raise wire.WireError(f"result output {name!r} is extension type {ext.code}")
            outputs[name] = wire.unpack_array(bytes(ext.data))
        result = cls(
            got.id,
            got.status,
            outputs,
            got.model,
            got.path,
            got.error,
            got.timings,
            got.batch_size,
            got.info,
        )
        if not _valid_id(result.id) or result.status not in STATUSES:
            raise wire.WireError("result has an invalid id or status")
        if result.error is not None and not all(k in result.error for k in ("code", "message")):
            raise wire.WireError("result error must hold a code and a message")
        return result


class _ResultWire(msgspec.Struct, forbid_unknown_fields=True):
    """What a result's bytes must hold (the map ``Result.dumps`` writes)."""

    id: str
    status: str
    outputs: dict[str, msgspec.msgpack.Ext] = {}
    model: str | None = None
    path: list[dict[str, Any]] = []
    error: dict[str, str] | None = None
    timings: dict[str, float] = {}
    batch_size: int = 0
    info: dict[str, Any] = {}


_RESULT = msgspec.msgpack.Decoder(_ResultWire)


def error_result(
    header_or_id: Header | str, code: str, message: str, *, status: str = ERROR
) -> Result:
    """A final result for a request that cannot be answered by a model."""
    if isinstance(header_or_id, Header):
        rid, path = header_or_id.id, list(header_or_id.trace)
        total = now_ms() - header_or_id.submitted_at
    else:
        rid, path, total = header_or_id, [], 0.0
    return Result(
        id=rid,
        status=status,
        path=path,
        error={"code": code, "message": message},
        timings={"total_ms": total},
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
