"""The two messages that cross process boundaries: a request header and a result.

A stream entry carries two fields: ``h`` (the small header, re-encoded at each hop)
and ``x`` (the tensors, encoded once by the producer and passed through untouched).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cascadeq import wire
from cascadeq.bundle import Header as Header  # noqa: PLC0414 - re-exported from the codec
from cascadeq.keys import InvalidName, check_id

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
        raw = wire.loads_map(data, "result")
        try:
            result = cls(**raw)
        except TypeError as exc:
            raise wire.WireError(f"result fields are wrong: {exc}") from exc
        _check_result(result)
        return result


def _check_result(result: Result) -> None:
    """Results arrive over pub/sub too; a forged one must not break a client."""
    if not _valid_id(result.id) or result.status not in STATUSES:
        raise wire.WireError("result has an invalid id or status")
    if not isinstance(result.outputs, dict) or not all(
        isinstance(k, str) and isinstance(v, np.ndarray) for k, v in result.outputs.items()
    ):
        raise wire.WireError("result outputs must map names to arrays")
    if result.error is not None and not (
        isinstance(result.error, dict)
        and all(isinstance(result.error.get(k), str) for k in ("code", "message"))
    ):
        raise wire.WireError("result error must hold a code and a message")
    for name in ("path", "timings", "info"):
        if not isinstance(getattr(result, name), list if name == "path" else dict):
            raise wire.WireError(f"result {name} has the wrong type")
    if not isinstance(result.model, str | None) or not isinstance(result.batch_size, int):
        raise wire.WireError("result model or batch_size has the wrong type")


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
