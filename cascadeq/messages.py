"""The two messages that cross process boundaries: a request header and a result.

A stream entry carries two fields: ``h`` (the small header, re-encoded at each hop)
and ``x`` (the tensors, encoded once by the producer and passed through untouched).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from cascadeq import wire
from cascadeq.keys import DEFAULT_LANE, InvalidName, check_id, check_name

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
class Header:
    """Routing metadata of one request; ``stage`` is its position in the cascade."""

    id: str
    task: str | None = None
    model: str | None = None
    tier: str = "standard"
    priority: str = DEFAULT_LANE
    deadline: float | None = None  # epoch ms
    submitted_at: float = 0.0  # epoch ms
    reply_to: str | None = None
    trace: list[dict[str, Any]] = field(default_factory=list)
    attempt: int = 0
    stage: int = 0
    routed_at: float | None = None

    def dumps(self) -> bytes:
        # Not dataclasses.asdict: it deep-copies the trace, and this runs once per hop.
        return wire.dumps({name: getattr(self, name) for name in _HEADER_FIELDS})

    @classmethod
    def loads(cls, data: bytes) -> Header:
        raw = wire.loads_map(data, "header")
        try:
            header = cls(**raw)
        except TypeError as exc:
            raise wire.WireError(f"header fields are wrong: {exc}") from exc
        check_id(header.id)
        _check_types(header)
        return header


_HEADER_FIELDS = tuple(f.name for f in fields(Header))

_HEADER_TYPES: dict[str, tuple[type, ...]] = {
    "task": (str, type(None)),
    "model": (str, type(None)),
    "tier": (str,),
    "priority": (str,),
    "deadline": (int, float, type(None)),
    "submitted_at": (int, float),
    "reply_to": (str, type(None)),
    "trace": (list,),
    "attempt": (int,),
    "stage": (int,),
    "routed_at": (int, float, type(None)),
}


MAX_HOPS = 16
_HOP_TEXT = frozenset({"model", "rule", "tier", "skipped"})
_HOP_OPTIONAL = frozenset({"confidence"})  # None: the model's output has no confidence

#: Epoch-ms fields (submitted_at, deadline, routed_at) must lie in [0, MAX_EPOCH_MS]
#: (1e14 ms is the year 5138): finite, and far from where ``now - t`` could overflow.
MAX_EPOCH_MS = 1e14
#: Numbers in trace hops (timings, confidence, batch size, rule facts) stay within
#: +-MAX_HOP_NUMBER, so summing the hops of a path stays finite and fits msgpack.
MAX_HOP_NUMBER = 1e15
_EPOCH_FIELDS = ("submitted_at", "deadline", "routed_at")


def _check_types(header: Header) -> None:
    for name, types in _HEADER_TYPES.items():
        value = getattr(header, name)
        if not isinstance(value, types) or isinstance(value, bool):
            raise wire.WireError(f"header field {name!r} has type {type(value).__name__}")
    for name in _EPOCH_FIELDS:
        value = getattr(header, name)
        if value is not None and not 0 <= value <= MAX_EPOCH_MS:  # False for NaN too
            raise wire.WireError(
                f"header field {name!r} is {value!r}: it must be a finite epoch-ms time "
                f"within 0..{MAX_EPOCH_MS:.0e}"
            )
    if header.task is None and header.model is None:
        raise wire.WireError("header names neither a task nor a model")
    if header.reply_to is not None:
        check_id(header.reply_to)
    for kind in ("tier", "priority"):
        check_name(kind, getattr(header, kind))
    if not (0 <= header.attempt <= MAX_HOPS and 0 <= header.stage <= MAX_HOPS):
        raise wire.WireError(f"header attempt/stage must be within 0..{MAX_HOPS}")
    _check_trace(header.trace)


def _check_trace(trace: list[Any]) -> None:
    """Hops are written by routers and workers; a client's forgery must not crash them."""
    if len(trace) > MAX_HOPS:
        raise wire.WireError(f"header trace has {len(trace)} hops, more than {MAX_HOPS}")
    for hop in trace:
        if not isinstance(hop, dict):
            raise wire.WireError("header trace hops must be maps")
        for key, value in hop.items():
            if not isinstance(key, str):
                raise wire.WireError(f"header trace hop field {key!r} has a wrong type")
            problem = _hop_value_problem(key, value)
            if problem:
                raise wire.WireError(f"header trace hop field {key!r} {problem}")


def _hop_value_problem(key: str, value: Any) -> str | None:
    """Why a hop's value is unusable, or None: text fields are str, the rest numbers."""
    if key in _HOP_TEXT:
        return None if isinstance(value, str) else f"must be a string, not {_kind(value)}"
    if value is None and key in _HOP_OPTIONAL:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        return f"must be a number, not {_kind(value)}"
    if not (math.isfinite(value) and abs(value) <= MAX_HOP_NUMBER):
        return f"is {value!r}: it must be a finite number within +-{MAX_HOP_NUMBER:.0e}"
    return None


def _kind(value: Any) -> str:
    return "None" if value is None else type(value).__name__


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
