"""The two messages that cross process boundaries: a request header and a result.

A stream entry carries two fields: ``h`` (the small header, re-encoded at each hop)
and ``x`` (the tensors, encoded once by the producer and passed through untouched).
"""

from __future__ import annotations

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
_HOP_TEXT = frozenset({"model", "rule"})


def _check_types(header: Header) -> None:
    for name, types in _HEADER_TYPES.items():
        value = getattr(header, name)
        if not isinstance(value, types) or isinstance(value, bool):
            raise wire.WireError(f"header field {name!r} has type {type(value).__name__}")
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
            ok = (
                isinstance(value, str | None)
                if key in _HOP_TEXT
                else isinstance(value, int | float | None) and not isinstance(value, bool)
            )
            if not isinstance(key, str) or not ok:
                raise wire.WireError(f"header trace hop field {key!r} has a wrong type")


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
            return cls(**raw)
        except TypeError as exc:
            raise wire.WireError(f"result fields are wrong: {exc}") from exc


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
